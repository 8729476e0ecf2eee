// The run browser (rs_trainer/run/browser.py writes it into index.html). No library, no request: the data
// arrives through rsRun(...) and rsRound(...) calls, inlined or from round_<r>/page.js. Model text is only ever
// placed with text nodes (el() in draw.js); nothing here assigns innerHTML.
"use strict";

const RS = { run: null, rounds: {}, loading: {}, started: false };
const PAGE_SIZE = 100; // prompts per page of the round view
const view = { q: "", nopass: false, selected: false, generator: "", page: 0 };

function rsRun(data) {
  RS.run = data;
}

function rsRound(data) {
  const f = {};
  data.fields.forEach((name, i) => (f[name] = i));
  const prompts = data.prompts.map(([id, text], i) => ({ id, text, index: i, samples: [], lower: null }));
  for (const row of data.samples) {
    const s = {
      prompt: prompts[row[f.prompt]],
      index: row[f.sample_index],
      completion: row[f.completion],
      reward: row[f.reward],
      rewards: row[f.rewards],
      generator: data.generators[row[f.generator]],
      tokens: row[f.tokens],
      finished: row[f.finished],
      filteredBy: row[f.filtered_by],
      selected: row[f.selected],
      passed: row[f.passed],
      gold: row[f.gold],
    };
    s.prompt.samples.push(s);
  }
  for (const p of prompts) {
    p.passing = p.samples.filter((s) => s.passed).length;
    p.best = p.samples.reduce((m, s) => (s.reward !== null && (m === null || s.reward > m) ? s.reward : m), null);
  }
  RS.rounds[data.key] = { ...data, prompts, byId: new Map(prompts.map((p) => [p.id, p])) };
  delete RS.loading[data.key];
  if (RS.started) route();
}

// ---------------------------------------------------------------- routing

function roundKeys() {
  return RS.run.rounds.map((r) => r.key);
}

function ensureRound(key) {
  if (RS.rounds[key]) return true;
  const entry = RS.run.rounds.find((r) => r.key === key);
  if (entry && RS.run.lazy && !RS.loading[key]) {
    RS.loading[key] = true;
    const tag = el("script", { src: entry.src });
    tag.addEventListener("error", () => {
      RS.loading[key] = "failed";
      route();
    });
    document.body.append(tag);
  }
  return false;
}

function parseHash() {
  const h = decodeURIComponent(location.hash.slice(1));
  if (h.startsWith("prompt=")) return { kind: "prompt", id: h.slice(7) };
  if (h.startsWith("round=")) return { kind: "round", key: h.slice(6) };
  const keys = roundKeys();
  return { kind: "round", key: keys[keys.length - 1] };
}

function route() {
  const app = document.getElementById("app");
  const where = parseHash();
  const parts = [header()];
  if (where.kind === "prompt") parts.push(promptView(where.id));
  else parts.push(runSection(), roundView(where.key));
  app.replaceChildren(...parts);
  if (!document.body.dataset.ready && !Object.keys(RS.loading).some((k) => RS.loading[k] === true)) {
    window.rsReadyAt = performance.now();
    document.body.dataset.ready = "1";
  }
}

function rsStart() {
  RS.started = true;
  window.addEventListener("hashchange", () => {
    view.page = 0;
    route();
  });
  route();
}

// ---------------------------------------------------------------- the run

function header() {
  const run = RS.run;
  const facts = [
    ["model", run.model],
    ["task", run.task],
    ["pass threshold", run.pass_threshold],
    ["rounds", run.rounds.length],
  ].filter(([, v]) => v !== null && v !== undefined);
  return el(
    "header",
    {},
    el("h1", {}, el("a", { href: "#" }, run.title), " ", el("span", { class: "muted" }, run.kind === "best_of_n" ? "best-of-N" : "rs_trainer run")),
    el("p", { class: "facts" }, facts.map(([k, v]) => el("span", {}, el("b", {}, k + ": "), String(v))))
  );
}

function runSection() {
  const run = RS.run;
  const out = el("section", { id: "run" });
  if (run.kind === "best_of_n") {
    const m = run.best_of_n || {};
    out.append(
      el("div", { class: "charts" }, chart("Expected best-of-n reward", [{ name: "reward", pts: (m.n || []).map((n, i) => [n, m.expected_reward[i]]) }], { xlabel: "n" })),
      el("p", {}, `${fmt(m.num_prompts)} prompts, ${fmt(m.candidates_per_prompt)} candidates each; best pass rate ${pct(m.best_pass_rate)}, mean best reward ${fmt(m.best_reward_mean)}.`)
    );
    return out;
  }
  const rounds = run.rounds.map((r) => ({ round: Number(r.key), ...r.metrics }));
  const base = run.base_eval || {};
  const series = (key, name) => ({ name: name || key, pts: rounds.map((m) => [m.round, m[key]]) });
  const splits = Object.keys(base)
    .concat(...rounds.map(Object.keys))
    .filter((k) => /^eval\/.*accuracy$/.test(k) && k !== "eval/accuracy_before");
  const accuracy = [...new Set(splits)].sort().map((k) => ({
    name: k === "eval/accuracy" ? "held-out" : k.split("/")[1],
    pts: [...(base[k] !== undefined ? [[-1, base[k]]] : []), ...rounds.map((m) => [m.round, m[k]])],
  }));
  const generators = [...new Set(rounds.flatMap((m) => Object.keys(m).filter((k) => k.startsWith("gen/") && k.endsWith("/selected_share")).map((k) => k.split("/")[1])))];
  const phases = ["generate", "score", "select", "sft", "kl", "eval"].filter((p) => rounds.some((m) => m["timing/" + p] !== undefined));
  const charts = [
    chart("Greedy accuracy (round −1 = base model)", accuracy, { ymin: 0, ymax: 1 }),
    chart("Pass rates and acceptance", [series("rs/pass@1", "pass@1"), series("rs/pass@n", "pass@N"), series("rs/acceptance_rate", "acceptance")], { ymin: 0, ymax: 1 }),
    chart("KL(policy ‖ base), nats per sample", [series("rs/kl_ref", "KL")]),
    chart("Entropy, nats per token", [series("rs/entropy", "entropy")]),
    chart("Seconds per phase", phases.map((p) => series("timing/" + p, p))),
    chart("Share of the selected set", generators.map((g) => series(`gen/${g}/selected_share`, g)), { ymin: 0, ymax: 1 }),
  ];
  if (rounds.some((m) => m["watch/gold_selected_mean"] !== undefined)) {
    charts.push(chart("Proxy and gold reward of the selected", [series("rs/selected_reward_mean", "proxy"), series("watch/gold_selected_mean", "gold")]));
  }
  const cols = [
    ["round", (m) => m.round],
    ["held-out", (m) => pct(m["eval/accuracy"])],
    ["pass@1", (m) => pct(m["rs/pass@1"])],
    ["pass@N", (m) => pct(m["rs/pass@n"])],
    ["acceptance", (m) => pct(m["rs/acceptance_rate"])],
    ["KL", (m) => fmt(m["rs/kl_ref"])],
    ["entropy", (m) => fmt(m["rs/entropy"])],
    ...phases.map((p) => [p + " s", (m) => fmt(m["timing/" + p], 1)]),
    ["round s", (m) => fmt(m["timing/round"], 1)],
    ...generators.map((g) => [g + " share", (m) => pct(m[`gen/${g}/selected_share`])]),
  ];
  const baseRow = el("tr", {}, el("td", {}, "base"), el("td", {}, pct(base["eval/accuracy"])), cols.slice(2).map(() => el("td", {}, "")));
  out.append(
    el("div", { class: "charts" }, charts),
    el(
      "div",
      { class: "scroll" },
      el(
        "table",
        { id: "round-table" },
        el("thead", {}, el("tr", {}, cols.map(([h]) => el("th", {}, h)))),
        el("tbody", {}, base["eval/accuracy"] !== undefined ? baseRow : null, rounds.map((m) => el("tr", {}, cols.map(([, f]) => el("td", {}, f(m))))))
      )
    ),
    el("details", {}, el("summary", {}, "Resolved config"), el("pre", { id: "config" }, JSON.stringify(run.config, null, 2)))
  );
  return out;
}

// ---------------------------------------------------------------- the sample browser

function sampleFilter(s) {
  return (!view.selected || s.selected) && (!view.generator || s.generator === view.generator);
}

function visiblePrompts(round) {
  const q = view.q.trim().toLowerCase();
  const sampleFiltersOn = view.selected || view.generator;
  const out = [];
  for (const p of round.prompts) {
    if (view.nopass && p.passing > 0) continue;
    const samples = sampleFiltersOn ? p.samples.filter(sampleFilter) : p.samples;
    if (sampleFiltersOn && !samples.length) continue;
    if (q) {
      if (p.lower === null) p.lower = (p.id + "\n" + p.text).toLowerCase();
      if (!p.lower.includes(q) && !samples.some((s) => s.completion.toLowerCase().includes(q))) continue;
    }
    out.push([p, samples]);
  }
  return out;
}

function filterBar(round, rerender, onPromptPage = false) {
  const gens = round ? round.generators : [];
  if (round && view.generator && !gens.includes(view.generator)) view.generator = ""; // a generator of another round
  const search = onPromptPage ? null : el("input", { id: "f-search", type: "search", placeholder: "search prompts and completions", value: view.q });
  let timer = null;
  search?.addEventListener("input", () => {
    clearTimeout(timer);
    timer = setTimeout(() => {
      view.q = search.value;
      view.page = 0;
      rerender();
    }, 150);
  });
  const box = (id, key, label) =>
    el("label", {}, el("input", { id, type: "checkbox", checked: view[key], on: { change: (e) => { view[key] = e.target.checked; view.page = 0; rerender(); } } }), " " + label);
  const gen = el(
    "select",
    { id: "f-generator", on: { change: (e) => { view.generator = e.target.value; view.page = 0; rerender(); } } },
    el("option", { value: "" }, "every generator"),
    gens.map((g) => el("option", { value: g, selected: view.generator === g }, g))
  );
  const nopass = onPromptPage ? null : box("f-nopass", "nopass", "no passing sample");
  return el("div", { class: "filters" }, search, nopass, box("f-selected", "selected", "selected only"), gen);
}

function roundView(key) {
  const section = el("section", { id: "samples" });
  const tabs = el("nav", { class: "tabs" }, RS.run.rounds.map((r) => el("a", { href: "#round=" + encodeURIComponent(r.key), class: r.key === key ? "on" : "" }, r.label)));
  const entry = RS.run.rounds.find((r) => r.key === key);
  section.append(el("h2", {}, "Samples"), tabs);
  if (!entry) return section;
  const c = entry.counts;
  section.append(
    el(
      "p",
      { id: "round-counts", class: "counts" },
      el("span", { id: "count-samples" }, fmt(c.samples)), " samples · ",
      el("span", { id: "count-prompts" }, fmt(c.prompts)), " prompts · ",
      el("span", { id: "count-selected" }, fmt(c.selected)), " selected · ",
      el("span", { id: "count-filtered" }, fmt(c.filtered_out)), " filtered out · ",
      el("span", { id: "count-truncated" }, fmt(c.truncated)), " truncated · ",
      el("span", { id: "count-passing" }, fmt(c.passing)), " passing"
    )
  );
  if (!ensureRound(key)) {
    section.append(el("p", { id: "loading" }, RS.loading[key] === "failed" ? `Could not load ${entry.src}: keep index.html beside its round folders.` : `Loading ${entry.src} …`));
    return section;
  }
  const round = RS.rounds[key];
  const body = el("div", {});
  const render = () => {
    const rows = visiblePrompts(round);
    const pages = Math.max(1, Math.ceil(rows.length / PAGE_SIZE));
    view.page = Math.min(view.page, pages - 1);
    const shown = rows.slice(view.page * PAGE_SIZE, (view.page + 1) * PAGE_SIZE);
    const nSamples = rows.reduce((n, [, s]) => n + s.length, 0);
    const pager = pages > 1
      ? el("span", { class: "pager" },
          el("button", { id: "prev", disabled: view.page === 0, on: { click: () => { view.page--; render(); } } }, "‹"),
          ` page ${view.page + 1} of ${pages} `,
          el("button", { id: "next", disabled: view.page >= pages - 1, on: { click: () => { view.page++; render(); } } }, "›"))
      : null;
    body.replaceChildren(
      el("p", { class: "shown" }, "showing ", el("span", { id: "shown-prompts" }, fmt(rows.length)), " prompts, ", el("span", { id: "shown-samples" }, fmt(nSamples)), " samples ", pager),
      el(
        "div",
        { class: "scroll" },
        el(
          "table",
          { id: "prompt-table" },
          el("thead", {}, el("tr", {}, ["prompt", "text", "samples", "passing", "selected", "best reward"].map((h) => el("th", {}, h)))),
          el(
            "tbody",
            {},
            shown.map(([p, samples]) =>
              el(
                "tr",
                { "data-prompt-id": p.id },
                el("td", {}, el("a", { href: "#prompt=" + encodeURIComponent(p.id) }, p.id)),
                el("td", { class: "text" }, p.text.length > 160 ? p.text.slice(0, 160) + "…" : p.text),
                el("td", { class: "num" }, samples.length),
                el("td", { class: "num" }, `${p.passing}/${p.samples.length}`),
                el("td", { class: "num" }, p.samples.filter((s) => s.selected).length),
                el("td", { class: "num" }, fmt(p.best))
              )
            )
          )
        )
      )
    );
  };
  section.append(filterBar(round, render), body);
  render();
  return section;
}

function sampleCard(s, scorers) {
  const badges = [
    s.selected ? el("span", { class: "badge sel" }, "★ selected") : null,
    s.filteredBy ? el("span", { class: "badge filt" }, "filtered: " + s.filteredBy) : null,
    s.passed ? el("span", { class: "badge pass" }, "passed") : el("span", { class: "badge fail" }, "failed"),
    el("span", { class: "badge" }, s.finished ? "finished" : "truncated"),
  ];
  const perScorer = scorers.length > 1 || s.gold !== null
    ? el("div", { class: "scorers" }, scorers.map((name, i) => el("span", {}, `${name} ${fmt(s.rewards[i])}`)), s.gold !== null ? el("span", {}, `gold ${fmt(s.gold)}`) : null)
    : null;
  return el(
    "div",
    { class: "sample" + (s.selected ? " selected" : ""), "data-sample-index": s.index, "data-generator": s.generator },
    el("div", { class: "meta" }, el("b", {}, "#" + s.index), ` reward ${fmt(s.reward)} · ${s.generator} · ${fmt(s.tokens)} tokens `, badges),
    perScorer,
    el("pre", { class: "completion" }, s.completion)
  );
}

function promptView(id) {
  const section = el("section", { id: "prompt" });
  const keys = roundKeys();
  const waiting = keys.filter((k) => !ensureRound(k));
  const rerender = () => route();
  const first = keys.map((k) => RS.rounds[k] && RS.rounds[k].byId.get(id)).find(Boolean);
  section.append(el("p", {}, el("a", { href: "#" }, "← all prompts")), el("h2", {}, "Prompt ", el("code", { id: "prompt-id" }, id)));
  if (first) section.append(el("pre", { class: "prompt-text" }, first.text));
  section.append(filterBar(RS.rounds[keys[keys.length - 1]] || null, rerender, true));
  const cols = el("div", { class: "rounds" });
  for (const k of keys) {
    const round = RS.rounds[k];
    const label = RS.run.rounds.find((r) => r.key === k).label;
    if (!round) {
      cols.append(el("div", { class: "round-col" }, el("h3", {}, label), el("p", {}, waiting.includes(k) ? "loading …" : "")));
      continue;
    }
    const p = round.byId.get(id);
    const samples = p ? p.samples.filter(sampleFilter) : [];
    cols.append(
      el(
        "div",
        { class: "round-col", "data-round": k },
        el("h3", {}, label, el("span", { class: "muted" }, p ? ` · ${p.passing}/${p.samples.length} passing · ${samples.length} shown` : " · not sampled")),
        samples.map((s) => sampleCard(s, round.scorers))
      )
    );
  }
  section.append(cols);
  return section;
}
