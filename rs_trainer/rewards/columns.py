"""Up-front check that every scorer finds the dataset columns it needs."""

from __future__ import annotations

from rs_trainer.errors import ConfigError


def check_scorer_columns(scorers: dict, prompts: list[dict], source: str) -> None:
    """A scorer's required keyword arguments (beyond `prompts` and `completions`) are dataset columns, such as a
    verifier's ground truth; refuse up front when a prompt lacks one, rather than failing mid-round."""
    import inspect

    for name, fn in scorers.items():
        try:
            params = inspect.signature(fn).parameters.values()
        except (TypeError, ValueError):
            continue
        needed = [
            p.name
            for p in params
            if p.name not in ("prompts", "completions")
            and p.default is inspect.Parameter.empty
            and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        ]
        needed += sorted(getattr(fn, "needs_columns", ()))  # an LLM judge's template fields
        for column in needed:
            missing = [p["prompt_id"] for p in prompts if p.get(column) is None]
            if missing:
                raise ConfigError(
                    f"Scorer {name!r} needs the ground-truth column `{column}`, which {len(missing)} prompt(s) of "
                    f"{source} lack (first: {missing[0]!r}); add the column or change `reward_funcs`."
                )
