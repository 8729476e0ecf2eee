"""What a recipe key may hold, declared once on its field: `key(help, range=..., choices=..., ...)` builds the
field's metadata, and `check_value` checks a value against it. RSConfig's first check runs `check_value` over every
field in one loop; the lists of keys that the rest of the package reads (`per_round_keys`, `keys_with`) are derived
from the same metadata, so a key's facts live on its field and nowhere else.

The facts a field may carry:

- `help`: what the key does (also `--help`'s text);
- `range`: a `Range` for a number, or each number of a list;
- `choices`: the texts a text key takes (None too, when the field is `str | None`);
- `per_round`: one value or a list with one value per round, the last repeating;
- `resumable`: a resumed run may change it (it fits the work into memory or adds rounds, not what is computed);
- `semantic=False`: it does not change what a run computes (where outputs go, trackers, ...);
- `yaml_booleans`: what YAML 1.1's booleans (`on`, `off`, `yes`, `no`) mean for a text key.
"""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass

from rs_trainer.errors import ConfigError

ARGPARSE_KEYS = ("help", "aliases")  # the metadata HfArgumentParser hands to argparse's `add_argument`
NULL_TEXTS = ("", "none", "null")  # `--dataset_test_split none` on the command line: null


@dataclass(frozen=True)
class Range:
    """The values a numeric key allows: `low` <= x <= `high`, None being no bound, `<` instead of `<=` with
    `open_low` or `open_high`. `note` says what a bound means and `fix` what to do; both go into the error message."""

    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False
    note: str = ""
    fix: str = ""

    def holds(self, x: float) -> bool:
        if x != x:  # NaN (`.nan` in YAML) is in no range
            return False
        if self.low is not None and (x <= self.low if self.open_low else x < self.low):
            return False
        return self.high is None or (x < self.high if self.open_high else x <= self.high)

    def span(self) -> str:
        """The range as docs/options.md writes it.

        >>> Range(0, 1, open_low=True).span(), Range(1).span(), Range().span()
        ('0 < x ≤ 1', 'x ≥ 1', '')
        """
        if self.low is None and self.high is None:
            return ""
        if self.high is None:
            return f"x {'>' if self.open_low else '≥'} {self.low:g}"
        if self.low is None:
            return f"x {'<' if self.open_high else '≤'} {self.high:g}"
        return f"{self.low:g} {'<' if self.open_low else '≤'} x {'<' if self.open_high else '≤'} {self.high:g}"

    def words(self) -> str:
        """
        >>> Range(0, 1, open_low=True).words(), Range(1).words(), Range(0, open_low=True).words(), Range().words()
        ('lie in (0, 1]', 'be at least 1', 'be > 0', 'be a number')
        """
        if self.high is not None and (self.open_low or self.open_high):
            left, right = "(" if self.open_low else "[", ")" if self.open_high else "]"
            return f"lie in {left}{self.low:g}, {self.high:g}{right}"
        if self.high is not None:
            return f"lie in {self.low:g}..{self.high:g}"
        if self.low is None:
            return "be a number"
        if self.open_low:
            return f"be > {self.low:g}"
        return f"be at least {self.low:g}" if self.low >= 1 else f"be >= {self.low:g}"


class Facts(dict):
    """A field's metadata. HfArgumentParser (under TrlParser) passes `metadata.copy()` to argparse's
    `add_argument`, which refuses keys it does not know, so `copy()` gives only those argparse takes, the choices
    written into the help; the field's own `metadata` keeps every fact."""

    def copy(self) -> dict:
        out = {k: v for k, v in self.items() if k in ARGPARSE_KEYS}
        if self.get("choices"):
            out["help"] = f"{out.get('help', '')} One of: {', '.join(self['choices'])}.".strip()
        return out


def key(
    help: str,
    *,
    range: Range | None = None,
    choices: tuple[str, ...] | None = None,
    per_round: bool = False,
    resumable: bool = False,
    semantic: bool = True,
    yaml_booleans: dict | None = None,
) -> Facts:
    """The metadata of one RSConfig field: `field(default=..., metadata=key("...", range=Range(1)))`."""
    facts = Facts(help=help)
    optional = {
        "range": range,
        "choices": tuple(choices) if choices else None,
        "per_round": per_round or None,
        "resumable": resumable or None,
        "semantic": None if semantic else False,
        "yaml_booleans": yaml_booleans,
    }
    facts.update({k: v for k, v in optional.items() if v is not None})
    return facts


def annotation(hint) -> tuple[type, bool, bool]:
    """(element type, is a list, may be None) of a field annotation such as `int`, `float | None` or
    `list[int] | None`."""
    optional = False
    if typing.get_origin(hint) in (types.UnionType, typing.Union):
        optional = type(None) in typing.get_args(hint)
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    if typing.get_origin(hint) is list:
        return typing.get_args(hint)[0], True, optional
    return hint, False, optional


def as_number(key: str, value, kind: type, in_list: bool = False, fix_list: str = "") -> int | float:
    """`value` as a `kind` (int or float), or a ConfigError naming `key`. A number written as text (`2e-4`, which
    YAML 1.1 reads as a string) is read, a whole float (`2.0`) is a whole number; a boolean, a list or other text is
    refused. `in_list`: `value` is one of a list's values; `fix_list`: what to say to a list given for one number."""
    if isinstance(value, str):
        try:
            value = int(value.strip()) if kind is int else float(value)
        except ValueError:
            pass
    if isinstance(value, float) and kind is int and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, (float, int)) or (kind is int and not isinstance(value, int)):
        what = {(int, True): "whole numbers", (int, False): "a whole number"}.get((kind, in_list))
        what = what or ("numbers" if in_list else "a number")
        shown = f"the list {value!r}" if isinstance(value, (list, tuple)) else repr(value)
        shown = str(value).lower() if isinstance(value, bool) else shown
        if isinstance(value, bool):
            fix = f"; YAML reads on/off/yes/no/true/false as booleans: give `{key}` a number"
        elif isinstance(value, (list, tuple)) and not in_list:
            fix = fix_list or "; give one value"
        else:
            fix = ""
        raise ConfigError(f"`{key}` takes {what}, got {shown}{fix}.")
    return float(value) if kind is float else value


def check_range(key: str, value, allowed: Range) -> None:
    """Refuse a number (or a list of numbers, each checked) outside `allowed`, naming `key` and the fix."""
    values = value if isinstance(value, list) else [value]
    if not all(allowed.holds(v) for v in values):
        plural = " values" if isinstance(value, list) else ""
        raise ConfigError(f"`{key}`{plural} must {allowed.words()}{allowed.note}, got {value}{allowed.fix}.")


def one_of(choices) -> str:
    """
    >>> one_of(("a", "b", "c")), one_of(("a", "b"))
    ('a, b or c', 'a or b')
    """
    choices = [str(c) for c in choices]
    return choices[0] if len(choices) == 1 else f"{', '.join(choices[:-1])} or {choices[-1]}"


def check_value(name: str, value, hint, facts, per_round_keys: tuple[str, ...] = ()):
    """`value` of the field `name` (annotation `hint`, metadata `facts`) checked and normalised, or a ConfigError
    naming the key and the fix: numbers read and held to their `range` (one value of a per-round key becomes a
    one-value list), texts held to their `choices`, `none`/`null` read as null where the field allows it, and YAML's
    booleans read as what `yaml_booleans` says."""
    kind, is_list, optional = annotation(hint)
    if value is None:
        return None
    if kind in (int, float):
        return _numbers(name, value, kind, is_list, facts, per_round_keys)
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"`{name}` takes true or false, got {value!r}.")
        return value
    if kind is str:
        value = _text(name, value, is_list, facts)
        if optional and isinstance(value, str) and value.strip().lower() in NULL_TEXTS:
            return None
        choices = facts.get("choices")
        if choices and value is not None and value not in choices:
            allowed = (*choices, "null") if optional else choices
            raise ConfigError(f"`{name}` must be {one_of(allowed)}, got {value!r}.")
    return value


def _numbers(name: str, value, kind: type, is_list: bool, facts, per_round_keys) -> int | float | list:
    allowed = facts.get("range", Range())
    if not is_list:
        fix = f"; give one value (lists, one value per round, are for {', '.join(per_round_keys)})"
        number = as_number(name, value, kind, fix_list=fix if per_round_keys else "")
        check_range(name, number, allowed)
        return number
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    if not values and facts.get("per_round"):
        raise ConfigError(f"`{name}` is an empty list; give one value or one per round.")
    numbers = [as_number(name, v, kind, in_list=True) for v in values]
    check_range(name, numbers, allowed)
    return numbers


def _text(name: str, value, is_list: bool, facts) -> str | list[str] | None:
    if is_list:
        values = [value] if isinstance(value, str) else value
        if not isinstance(values, (list, tuple)) or not all(isinstance(v, str) for v in values):
            raise ConfigError(f"`{name}` takes names (one, or a list of them), got {value!r}.")
        return list(values)
    booleans = facts.get("yaml_booleans", {})
    if isinstance(value, bool) and value in booleans:
        return booleans[value]
    if isinstance(value, bool):
        raise ConfigError(
            f"`{name}` takes text, got the boolean {str(value).lower()} (YAML reads on, off, yes, no, true and "
            f'false as booleans); put the value in quotes: `{name}: "..."`.'
        )
    if not isinstance(value, str):
        fix = "give one value" if isinstance(value, (list, tuple, dict)) else "put the value in quotes"
        raise ConfigError(f"`{name}` takes text, got {value!r}; {fix}.")
    return value
