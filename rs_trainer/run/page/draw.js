// The run browser's drawing helpers, placed before page.js in index.html's script (rs_trainer/run/browser.py):
// elements built from text nodes only (el, svg; nothing assigns innerHTML), number formats, and the SVG line chart.

// ---------------------------------------------------------------- DOM helpers (text only)

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "on") for (const [ev, fn] of Object.entries(v)) node.addEventListener(ev, fn);
    else if (k === "class") node.className = v;
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function svg(tag, attrs, ...children) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
  for (const c of children.flat()) if (c !== null && c !== undefined) node.append(c instanceof Node ? c : String(c));
  return node;
}

function fmt(x, digits = 3) {
  if (x === null || x === undefined) return "–";
  if (typeof x !== "number") return String(x);
  if (Number.isInteger(x)) return x.toLocaleString("en");
  const text = x.toFixed(digits);
  return Number(text) === 0 ? text.replace("-", "") : text; // a KL of -1e-9 reads 0.000, not -0.000
}

const pct = (x) => (x === null || x === undefined ? "–" : (100 * x).toFixed(1) + "%");

const COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf", "#7f7f7f"];

function chart(title, series, opts = {}) {
  const W = 320, H = 180, L = 40, R = 10, T = 24, B = 28;
  const pts = series.flatMap((s) => s.pts.filter(([, y]) => y !== null && y !== undefined && Number.isFinite(y)));
  const box = el("figure", { class: "chart" });
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": title });
  root.append(svg("text", { x: 4, y: 14, class: "title" }, title));
  box.append(root);
  if (!pts.length) {
    root.append(svg("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "muted" }, "not measured"));
    return box;
  }
  const xs = pts.map((p) => p[0]), ys = pts.map((p) => p[1]);
  let [x0, x1] = [Math.min(...xs), Math.max(...xs)];
  let y0 = opts.ymin ?? Math.min(0, ...ys), y1 = opts.ymax ?? Math.max(...ys);
  if (x0 === x1) [x0, x1] = [x0 - 1, x1 + 1];
  if (y0 === y1) y1 = y0 + 1;
  const X = (x) => L + ((x - x0) / (x1 - x0)) * (W - L - R);
  const Y = (y) => H - B - ((y - y0) / (y1 - y0)) * (H - T - B);
  root.append(svg("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, class: "axis" }), svg("line", { x1: L, y1: T, x2: L, y2: H - B, class: "axis" }));
  for (const y of [y0, (y0 + y1) / 2, y1]) root.append(svg("text", { x: L - 4, y: Y(y) + 3, "text-anchor": "end", class: "tick" }, fmt(y, 2)));
  const ticks = [...new Set(xs)].sort((a, b) => a - b);
  const every = Math.ceil(ticks.length / 8);
  ticks.forEach((x, i) => i % every === 0 && root.append(svg("text", { x: X(x), y: H - B + 12, "text-anchor": "middle", class: "tick" }, x)));
  if (opts.xlabel) root.append(svg("text", { x: W - R, y: H - 2, "text-anchor": "end", class: "tick" }, opts.xlabel));
  series.forEach((s, i) => {
    const c = COLORS[i % COLORS.length];
    const good = s.pts.filter(([, y]) => y !== null && y !== undefined && Number.isFinite(y));
    if (!good.length) return;
    root.append(svg("polyline", { points: good.map(([x, y]) => `${X(x)},${Y(y)}`).join(" "), fill: "none", stroke: c, "stroke-width": 1.8 }));
    for (const [x, y] of good) root.append(svg("circle", { cx: X(x), cy: Y(y), r: 2.6, fill: c }, svg("title", {}, `${s.name}: ${fmt(y)} at ${x}`)));
  });
  if (series.length > 1) box.append(el("figcaption", {}, series.map((s, i) => el("span", { style: `color:${COLORS[i % COLORS.length]}` }, "● " + s.name + " "))));
  return box;
}
