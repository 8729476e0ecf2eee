"""docs/options.md's list of every recipe key, written from RSConfig's fields: a table per key group (the group's
docstring is its title), each key with its default, what it takes (type, range or choices, per round, whether a
resumed run may change it) and its help. A test fails when docs/options.md and the fields disagree.

    python -m rs_trainer.config.reference --write docs/options.md   # rewrite the list in place
    python -m rs_trainer.config.reference                          # print it
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import typing
from pathlib import Path

from rs_trainer.config.checks import annotation, one_of
from rs_trainer.config.recipe import GROUPS, RSConfig

BEGIN = "<!-- every key: written by `python -m rs_trainer.config.reference --write docs/options.md` -->"
END = "<!-- every key: end -->"
KINDS = {int: "whole number", float: "number", str: "text", bool: "true or false", dict: "mapping"}


def shown(value) -> str:
    """A default as a recipe writes it.

    >>> shown(None), shown(True), shown([0.8]), shown("best_of_n"), shown([])
    ('null', 'true', '[0.8]', 'best_of_n', '[]')
    """
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return f"[{', '.join(shown(v) for v in value)}]"
    return str(value)


def takes(name: str, hint, facts) -> str:
    """What a key takes, in words: its type, range or choices, and the facts a user plans by."""
    kind, is_list, optional = annotation(hint)
    if name == "temperature":
        words = "a number ≥ 0 or `auto`"
    elif facts.get("choices"):
        words = one_of(f"`{c}`" for c in facts["choices"])
    else:
        words = KINDS.get(kind, kind.__name__)
        words = f"list of {words}s" if is_list and not facts.get("per_round") else words
    words += " or null" if optional else ""
    span = facts["range"].span() if "range" in facts else ""
    words += f", {span}{facts['range'].note}" if span else ""
    parts = [words]
    parts += ["per round"] if facts.get("per_round") else []
    parts += ["may change on resume"] if facts.get("resumable") else []
    parts += ["not part of what a run computes"] if facts.get("semantic") is False else []
    return "; ".join(parts)


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown() -> str:
    """The list, from BEGIN to END."""
    hints = typing.get_type_hints(RSConfig)
    defaults = RSConfig.defaults()
    lines = [BEGIN, ""]
    for group in GROUPS:
        lines += [f"### {group.__doc__.strip().splitlines()[0]}", "", "| key | default | takes | what it does |"]
        lines.append("|---|---|---|---|")
        for f in dataclasses.fields(group):
            row = (f"`{f.name}`", f"`{shown(defaults[f.name])}`", takes(f.name, hints[f.name], f.metadata))
            lines.append(f"| {' | '.join(cell(c) for c in row)} | {cell(f.metadata['help'])} |")
        lines.append("")
    return "\n".join([*lines, END])


def replaced(text: str) -> str:
    """`text` (docs/options.md) with its list between BEGIN and END written anew."""
    if BEGIN not in text or END not in text:
        raise ValueError(f"the file has no list to replace: it needs the lines {BEGIN} and {END}")
    head, rest = text.split(BEGIN, 1)
    return head + markdown() + rest.split(END, 1)[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", type=Path, help="rewrite the list in this file (docs/options.md)")
    args = parser.parse_args(argv)
    if args.write is None:
        print(markdown())
        return 0
    text = replaced(args.write.read_text(encoding="utf-8"))
    tmp = args.write.with_suffix(".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(args.write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
