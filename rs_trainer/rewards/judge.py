"""An LLM as the judge: a scorer that asks one or several models behind an OpenAI-compatible endpoint (vLLM, SGLang,
`transformers serve`, a hosted API) to grade each completion, through the same `openai` client as the generators.

A `reward_funcs` entry is a mapping (`kind: judge`) instead of a name:

    reward_funcs:
      - kind: judge
        name: grader                       # the scorer's name in rows' `rewards` and in the metrics
        base_url: http://127.0.0.1:8000/v1
        model: Qwen/Qwen2.5-7B-Instruct    # or a list: several judges on the endpoint, combined by `combine`
        template: "Question: {prompt}\\nReference: {answer}\\nResponse: {completion}\\nCorrect? Answer Yes or No."
        score: yes_no                      # or `number` (the first number of the reply, divided by `scale`), or
                                           # `yes_prob` (P(yes) / (P(yes) + P(no)) from the first token's logprobs)

- The template gets `{prompt}` (the last user message), `{completion}` and any dataset column (`{answer}`); a field
  that some prompt lacks is refused before the run starts, naming it.
- Greedy replies (temperature 0) of at most `max_tokens` tokens. `yes_no` reads the reply's first word (yes -> 1,
  no -> 0); `number` its first number; `yes_prob` asks for one token with its `TOP_LOGPROBS` most likely
  alternatives and scores P(yes) / (P(yes) + P(no)), each summed over the tokens that read yes (or no) once
  stripped and lower-cased, a graded score where `yes_no` gives 0 or 1 (a server must return log-probabilities:
  vLLM and SGLang do, `transformers serve` does not, and the check refuses it). A reply that cannot be read (no
  yes or no among the alternatives) is None, no opinion: never a silent 0. Such samples are marked
  `judge_unparsed` in their rows and counted in `rs/judge_unparsed`.
- Several models combine by `mean` of their opinions, or `vote` (the majority of opinions >= 0.5; a tie is None).
- Every reply is cached on disk by the judge (model, template, reading, token limit) and the exact request, under
  `$RS_TRAINER_CACHE/judges/` (one append-only file per process, synced per batch): a resumed run, or a rerun,
  never asks twice.
- The endpoint is checked when the scorer is built, before anything is written: one that does not answer, or does
  not serve the model, stops the run in one line that names the entry.
- With `command` instead of `base_url`, the run serves the judge itself: `command: vllm serve {model} --host {host}
  --port {port}` (or `transformers serve --host {host} --port {port}`) is started once, after every other check,
  by the main process on a free loopback port, logged to `output_dir/judge-<name>.log`, checked as above, used by
  every rank, and stopped when the run ends or fails. `{model}` is the judge's one model; a server the run starts is
  on its main node's loopback, so a run over several nodes is refused: serve the judge where every node reaches it
  and give `base_url`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import socket
import string
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from rs_trainer.errors import ConfigError
from rs_trainer.run.servers import ManagedServer, tail

JUDGE = "judge"
SCORE_MODES = ("yes_no", "number", "yes_prob")
TOP_LOGPROBS = 20  # the first token's alternatives `yes_prob` reads (the OpenAI API's most)
COMBINE = ("mean", "vote")
DEFAULT_TEMPLATE = (
    "You are grading an answer.\n\nQuestion:\n{prompt}\n\nAnswer:\n{completion}\n\n"
    "Is the answer correct? Reply with one word: Yes or No."
)
BUILT_IN_FIELDS = ("prompt", "completion")


@dataclasses.dataclass(frozen=True)
class JudgeSpec:
    """One `kind: judge` entry of `reward_funcs` (see the module docstring): where to ask, whom, what and how to
    read the answer."""

    name: str
    model: tuple[str, ...]
    base_url: str = ""
    command: str | None = None  # the run serves the judge itself (module docstring)
    startup_timeout: float = 600.0
    template: str = DEFAULT_TEMPLATE
    score: str = "yes_no"
    scale: float = 1.0
    combine: str = "mean"
    max_tokens: int = 16
    api_key_env: str | None = None
    timeout: float = 120.0
    max_retries: int = 3
    max_concurrency: int = 8

    @property
    def fields(self) -> set[str]:
        """The template's `{field}`s: `prompt`, `completion` and dataset columns."""
        return {f for _, f, _, _ in string.Formatter().parse(self.template) if f}

    def identity(self, model: str) -> str:
        """What a cached reply depends on, besides the request itself: the model and how it is asked and read."""
        return json.dumps([model, self.template, self.score, self.scale, self.max_tokens])


def parse_judge_entry(entry: dict, where: str) -> JudgeSpec:
    """A `kind: judge` mapping as a `JudgeSpec`, or a `ConfigError` naming `where` (`reward_funcs[1]`), the key and
    the fix.

    >>> parse_judge_entry({"kind": "judge", "name": "g", "base_url": "http://h/v1", "model": "m"}, "x").model
    ('m',)
    >>> parse_judge_entry({"kind": "judge", "name": "g", "base_url": "http://h/v1", "model": "m", "score": "maybe"},
    ...                   "`reward_funcs[0]`")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    rs_trainer.errors.ConfigError: `reward_funcs[0]` (judge g): `score` 'maybe' is unknown; choose one of ...
    """
    if entry.get("kind") != JUDGE:
        raise ConfigError(f"{where}: a mapping entry needs `kind: judge` (got kind {entry.get('kind')!r}).")
    known = {f.name for f in dataclasses.fields(JudgeSpec)} | {"kind"}
    unknown = sorted(set(entry) - known)
    label = f"{where} (judge {entry.get('name', '?')})"
    if unknown:
        raise ConfigError(f"{label}: unknown keys {unknown}; the keys are {sorted(known)}.")
    for key in ("name", "model"):
        if not entry.get(key):
            raise ConfigError(
                f"{label}: `{key}` is missing; a judge needs `name`, `model`, and `base_url` or `command`."
            )
    if bool(entry.get("base_url")) == bool(entry.get("command")):
        raise ConfigError(
            f"{label}: give `base_url` (a server that runs already) or `command` (one the run starts, e.g. "
            "`vllm serve {model} --host {host} --port {port}`), not both nor neither."
        )
    models = entry["model"]
    models = tuple([models] if isinstance(models, str) else models)
    if not models or not all(isinstance(m, str) and m for m in models):
        raise ConfigError(f"{label}: `model` must be a model name or a list of them, got {entry['model']!r}.")
    spec = JudgeSpec(**{**{k: v for k, v in entry.items() if k != "kind"}, "model": models})
    if spec.score not in SCORE_MODES:
        raise ConfigError(f"{label}: `score` {spec.score!r} is unknown; choose one of {SCORE_MODES}.")
    if spec.combine not in COMBINE:
        raise ConfigError(f"{label}: `combine` {spec.combine!r} is unknown; choose one of {COMBINE}.")
    if "completion" not in spec.fields:
        raise ConfigError(f"{label}: `template` has no `{{completion}}`; the judge would not see what it grades.")
    if spec.command:
        check_command(spec, label)
    for key in ("scale", "timeout", "startup_timeout"):
        if not isinstance(getattr(spec, key), (int, float)) or getattr(spec, key) <= 0:
            raise ConfigError(f"{label}: `{key}` must be a number > 0, got {getattr(spec, key)!r}.")
    for key in ("max_tokens", "max_retries", "max_concurrency"):
        value = getattr(spec, key)
        if not isinstance(value, int) or isinstance(value, bool) or value < (0 if key == "max_retries" else 1):
            raise ConfigError(f"{label}: `{key}` must be a whole number >= 1, got {value!r}.")
    return spec


def check_command(spec: JudgeSpec, label: str) -> None:
    """A `command` template the run can start: `{port}` present (the run picks a free one), no field but `{model}`,
    `{host}` and `{port}`, and `{model}` only with one model."""
    fields = {f for _, f, _, _ in string.Formatter().parse(spec.command) if f is not None}
    unknown = sorted(fields - {"model", "host", "port"})
    if unknown or "port" not in fields:
        what = f"has unknown fields {unknown}" if unknown else "has no `{port}`"
        raise ConfigError(
            f"{label}: `command` {what}; it may use `{{model}}`, `{{host}}` and `{{port}}`, and needs `{{port}}`, "
            "e.g. `vllm serve {model} --host {host} --port {port}`."
        )
    if "model" in fields and len(spec.model) > 1:
        raise ConfigError(
            f"{label}: `command` serves `{{model}}`, one model, but `model` lists {len(spec.model)}; give one model, "
            "or a server that serves them all (`transformers serve`) with no `{model}` in `command`."
        )


def parse_reply(text: str, mode: str, scale: float = 1.0) -> float | None:
    """A judge's reply as a score, or None when it cannot be read.

    >>> [parse_reply(t, "yes_no") for t in ("Yes.", " no, because", "**Yes**", "Maybe", "")]
    [1.0, 0.0, 1.0, None, None]
    >>> [parse_reply(t, "number", 10) for t in ("Score: 7/10", "8", "-1", "none")]
    [0.7, 0.8, -0.1, None]
    """
    if mode == "yes_no":
        words = re.findall(r"[a-z]+", text.lower())
        return {"yes": 1.0, "no": 0.0}.get(words[0]) if words else None
    if mode == "yes_prob":
        return yes_probability(text)
    found = re.search(r"-?\d+(?:\.\d+)?", text)
    return float(found.group()) / scale if found else None


def yes_probability(reply: str) -> float | None:
    """P(yes) / (P(yes) + P(no)) from a `yes_prob` reply, the first token's alternatives as JSON `{token: logprob}`;
    None when neither reads yes or no.

    >>> yes_probability('{"Yes": -0.2231, " yes": -3.0, "No": -1.8971, "Maybe": -4.0}')  # 0.8, 0.0498, 0.15
    0.85
    >>> yes_probability('{"The": -0.1}'), yes_probability("")
    (None, None)
    """
    try:
        alternatives = json.loads(reply) if reply else {}
    except json.JSONDecodeError:
        return None
    mass = {"yes": 0.0, "no": 0.0}
    for token, logprob in alternatives.items():
        word = token.strip().lower()
        if word in mass:
            mass[word] += math.exp(logprob)
    total = mass["yes"] + mass["no"]
    return round(mass["yes"] / total, 4) if total > 0 else None


def combine(opinions: list[float | None], how: str) -> float | None:
    """Several judges' scores of one sample as one: the mean of those with an opinion, or the majority vote of
    opinion >= 0.5 (1.0 or 0.0; a tie, or no opinion at all, is None).

    >>> combine([1.0, None, 0.0, 1.0], "mean"), combine([1.0, 0.0, 1.0], "vote"), combine([1.0, 0.0], "vote")
    (0.6666666666666666, 1.0, None)
    """
    given = [o for o in opinions if o is not None]
    if not given:
        return None
    if how == "mean":
        return sum(given) / len(given)
    ayes = sum(o >= 0.5 for o in given)
    return None if 2 * ayes == len(given) else float(2 * ayes > len(given))


def cache_root() -> Path:
    from rs_trainer.run.models import cache_dir

    return cache_dir() / "judges"


class JudgeScorer:
    """The scorer of one `kind: judge` entry, with TRL's reward-function signature. After each call, `unparsed`
    holds the indices of the samples no judge gave a readable reply for."""

    def __init__(self, spec: JudgeSpec):
        self.spec = spec
        self.__name__ = f"{JUDGE}:{spec.name}"
        self.unparsed: list[int] = []
        self._cache: dict[str, str] | None = None
        self._client = None
        self.base_url = spec.base_url  # with `command`: the server's, once `serve` started it (on any rank: `use`)
        self.server = None  # the `ManagedServer` this process started for `command`

    @property
    def needs_columns(self) -> set[str]:
        """The dataset columns the template reads (`rewards.columns` checks every prompt has them)."""
        return self.spec.fields - set(BUILT_IN_FIELDS)

    # ---- the endpoint
    def client(self):
        if self._client is None:
            from rs_trainer.run.openai_api import openai_client

            spec = self.spec
            self._client = openai_client(self.base_url, spec.api_key_env, spec.timeout, spec.max_retries)
        return self._client

    def check(self) -> None:
        """Each model answers a one-token request, or a `ValueError` says which does not and why."""
        import openai

        client = self.client().with_options(max_retries=1, timeout=min(self.spec.timeout, 60))
        logprobs = self.spec.score == "yes_prob"
        fix = "; or use `score: yes_no` (this server may not return log-probabilities)" if logprobs else ""
        for model in self.spec.model:
            try:
                out = client.chat.completions.create(
                    model=model, messages=[{"role": "user", "content": "Hi"}], **self._request(1)
                )
            except openai.APIConnectionError:
                raise ValueError(f"{self.base_url} does not answer; start the server or fix `base_url`.") from None
            except openai.APIStatusError as err:
                hint = fix if err.status_code not in (401, 403, 404) else ""  # not the model, not the key: logprobs?
                raise ValueError(
                    f"{self.base_url} refused a one-token request for model {model!r} ({err.status_code}: "
                    f"{str(err.message)[:200]}); fix `model` (or `api_key_env`){hint}."
                ) from None
            if logprobs and not self._alternatives(out):
                raise ValueError(
                    f"{self.base_url} returns no log-probabilities for model {model!r}, which `score: yes_prob` "
                    "reads; use `score: yes_no`, or a server that returns them (vLLM, SGLang)."
                )

    def serve(self, log_path: Path) -> str:
        """`command`: start the judge's server (in this process's care) and check it as a `base_url` would be; its
        address, or a `ConfigError` naming the entry with the end of the server's log."""
        spec = self.spec
        label = f"`reward_funcs`: judge {spec.name!r}"
        server = ManagedServer(
            spec.command, spec.model[0], log_path, spec.startup_timeout, spec.name, label=label, error=ConfigError
        )
        server.start()
        self.server = server
        self.use(server.base_url)
        try:
            self.check()
        except ValueError as err:
            self.stop()
            raise ConfigError(f"{label}: {err} Its log ({log_path}) ends:\n{tail(log_path)}") from None
        return server.base_url

    def use(self, base_url: str) -> None:
        """Ask the server at `base_url` from now on (a `command` judge's, started by the main process)."""
        self.base_url, self._client = base_url, None

    def stop(self) -> None:
        """Stop the server `serve` started, if any; idempotent."""
        if self.server is not None:
            self.server.stop()
            self.server = None

    def _request(self, max_tokens: int) -> dict:
        """Greedy; with `yes_prob`, one token and its most likely alternatives."""
        if self.spec.score == "yes_prob":
            return {"max_tokens": 1, "temperature": 0, "logprobs": True, "top_logprobs": TOP_LOGPROBS}
        return {"max_tokens": max_tokens, "temperature": 0}

    @staticmethod
    def _alternatives(out) -> dict[str, float]:
        """The first generated token's alternatives, {token: logprob}, from a chat completion; empty if none."""
        choice = out.choices[0] if out.choices else None
        content = getattr(getattr(choice, "logprobs", None), "content", None) or []
        return {alt.token: alt.logprob for alt in (content[0].top_logprobs or [])} if content else {}

    # ---- the cache
    def _cache_dir(self) -> Path:
        digest = hashlib.sha256(json.dumps([self.spec.identity(m) for m in self.spec.model]).encode()).hexdigest()
        return cache_root() / f"{self.spec.name}-{digest[:16]}"

    def _load_cache(self) -> dict[str, str]:
        if self._cache is None:
            from rs_trainer.run.io import read_jsonl_prefix

            self._cache = {}
            for path in sorted(self._cache_dir().glob("*.jsonl")):
                self._cache.update({row["key"]: row["reply"] for row in read_jsonl_prefix(path)})
        return self._cache

    def _remember(self, rows: list[dict]) -> None:
        from rs_trainer.run.io import append_jsonl

        path = self._cache_dir() / f"{socket.gethostname()}-{os.getpid()}.jsonl"
        append_jsonl(path, rows)

    # ---- scoring
    def render(self, prompt, completion, columns: dict, i: int) -> str:
        values = {name: columns[name][i] for name in self.spec.fields if name in columns}
        last_user = next((m["content"] for m in reversed(prompt) if m.get("role") == "user"), "")
        text = completion[-1]["content"] if isinstance(completion, list) else completion
        return self.spec.template.format_map({**values, "prompt": last_user, "completion": text})

    def __call__(self, prompts: list, completions: list, **columns) -> list[float | None]:
        spec, cache = self.spec, self._load_cache()
        asks = [self.render(p, c, columns, i) for i, (p, c) in enumerate(zip(prompts, completions, strict=True))]
        keys = {
            (i, m): hashlib.sha256(f"{spec.identity(m)}\n{ask}".encode()).hexdigest()
            for i, ask in enumerate(asks)
            for m in spec.model
        }
        todo = sorted({key: (i, m) for (i, m), key in keys.items() if key not in cache}.items())
        if todo:
            with ThreadPoolExecutor(max_workers=spec.max_concurrency) as pool:
                replies = list(pool.map(lambda item: self._ask(item[1][1], asks[item[1][0]]), todo))
            fresh = [
                {"key": key, "model": m, "reply": reply} for (key, (_, m)), reply in zip(todo, replies, strict=True)
            ]
            self._remember(fresh)
            cache.update({row["key"]: row["reply"] for row in fresh})
        scores, self.unparsed = [], []
        for i in range(len(asks)):
            opinions = [parse_reply(cache[keys[i, m]], spec.score, spec.scale) for m in spec.model]
            if all(o is None for o in opinions):
                self.unparsed.append(i)
            scores.append(combine(opinions, spec.combine))
        return scores

    def _ask(self, model: str, text: str) -> str:
        """The reply as it is cached: its text, or with `yes_prob` its first token's alternatives as JSON."""
        out = self.client().chat.completions.create(
            model=model, messages=[{"role": "user", "content": text}], **self._request(self.spec.max_tokens)
        )
        if self.spec.score == "yes_prob":
            return json.dumps(self._alternatives(out))
        return out.choices[0].message.content or "" if out.choices else ""
