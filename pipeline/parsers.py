"""Parsers of setting values: each takes the setting's name and its text (MLflow passes every
parameter as a string) and returns the typed value, or raises `UserError` saying, in plain words,
what the setting allows. `option` makes a dataclass field of a default, a parser and a help text:
the one declaration of a setting (`settings.py`)."""

from __future__ import annotations

import difflib
import math
import os
import re
from collections.abc import Callable
from dataclasses import field
from typing import Any

from pipeline.errors import UserError

Parser = Callable[[str, str], Any]


def integer(minimum: int | None = None, maximum: int | None = None) -> Parser:
    def parse(name: str, text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            value = None
        if value is None or (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
            raise UserError(f"{name} must be {_range_words('an integer', minimum, maximum)}, got {text!r}")
        return value

    return parse


def number(low: float, high: float | None = None, low_open: bool = True, high_open: bool = True) -> Parser:
    """A finite float in the interval given; `high=None` means unbounded above."""

    def parse(name: str, text: str) -> float:
        try:
            value = float(text.strip())
        except ValueError:
            value = math.nan
        below = value <= low if low_open else value < low
        above = high is not None and (value >= high if high_open else value > high)
        if not math.isfinite(value) or below or above:
            left = "(" if low_open else "["
            right = ")" if high_open else "]"
            interval = f"{left}{low:g}, {high:g}{right}" if high is not None else f"{left}{low:g}, inf)"
            raise UserError(f"{name} must be a number in {interval}, got {text!r}")
        return value

    return parse


_TRUE = {"true", "1", "yes"}
_FALSE = {"false", "0", "no"}


def boolean(name: str, text: str) -> bool:
    word = text.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise UserError(f"{name} must be one of true/false, 1/0, yes/no, got {text!r}")


def choice(*allowed: str) -> Parser:
    def parse(name: str, text: str) -> str:
        if text not in allowed:
            raise UserError(f"{name} must be one of {', '.join(allowed)}, got {text!r}")
        return text

    return parse


def text(name: str, value: str) -> str:
    return value


def auto_or(parse: Parser, allowed: str, auto: tuple[str, ...] = ("auto",)) -> Parser:
    """`auto` (None: the setting's own default, which its help names) or what `parse` takes."""

    def parse_or_auto(name: str, value: str):
        if value.strip().lower() in auto:
            return None
        try:
            return parse(name, value)
        except UserError:
            raise UserError(f"{name} must be 'auto' or {allowed}, got {value!r}") from None

    return parse_or_auto


# auto: tuned where tuning ran, else the mode's default
learning_rate = auto_or(number(0.0, 1e6, high_open=False), "a number in (0, 1e6]")
# auto: the threshold stored with the model
threshold_or_auto = auto_or(number(0.0, 1.0), "a number in (0, 1) (auto = the model's own)")
# auto: the data seed
seed_or_auto = auto_or(integer(0, 2**31 - 1), f"an integer from 0 to {2**31 - 1}")
# auto: half of the memory available
memory_or_auto = auto_or(number(0.0), "a number of GB > 0")
# auto: Youden's J
fraction_or_auto = auto_or(number(0.0, 1.0), "a number in (0, 1)", auto=("auto", "none", ""))


def lr_range(name: str, value: str) -> tuple[float, float] | None:
    """`auto` (the mode's default range) or `LOW,HIGH` with 0 < LOW < HIGH."""
    if value.strip().lower() in ("auto", ""):
        return None
    parts = value.split(",")
    try:
        low, high = (float(p) for p in parts)
    except ValueError:
        low = high = math.nan
    if not (0 < low < high < 10):
        raise UserError(f"{name} must be 'auto' or LOW,HIGH with 0 < LOW < HIGH < 10, got {value!r}")
    return (low, high)


def name_list(name: str, value: str) -> tuple[str, ...]:
    items = tuple(dict.fromkeys(p.strip() for p in value.split(",") if p.strip()))
    if not items:
        raise UserError(f"{name} must be a comma-separated list with at least one entry, got {value!r}")
    return items


def path_list(name: str, value: str) -> tuple[str, ...]:
    """Comma-separated paths, repeats dropped; empty: none."""
    return tuple(dict.fromkeys(p.strip() for p in value.split(",") if p.strip()))


def patient_pattern(name: str, value: str) -> str:
    """A regular expression applied to file names; its `patient` group (or whole match) is the key."""
    if value == "":
        return value
    try:
        re.compile(value)
    except re.error as e:
        raise UserError(f"{name} must be a valid regular expression ('' disables patient checks): {e}") from None
    return value


def backbone_name(name: str, value: str) -> str:
    from pipeline.models import available_backbones  # torchvision is imported only when asked

    choices = available_backbones()
    if value not in choices:
        close = difflib.get_close_matches(value, choices, n=2, cutoff=0.6)
        hint = f"did you mean {' or '.join(close)}? " if close else ""
        raise UserError(
            f"{name} {value!r} is not a torchvision classification model; {hint}the study's backbones are resnet50 and "
            f"efficientnet_b0 (any of torchvision's {len(choices)} classification models works, e.g. resnet18 or mobilenet_v3_small)"
        )
    return value


def weights_spec(name: str, value: str) -> str:
    if value in ("imagenet", "none"):
        return value
    if not os.path.isfile(value):
        raise UserError(f"{name} must be imagenet, none, or the path of a state_dict file; no file at {value!r}")
    return os.path.abspath(value)


def _range_words(kind: str, minimum: int | None, maximum: int | None) -> str:
    if minimum is not None and maximum is not None:
        return f"{kind} from {minimum} to {maximum}"
    if minimum is not None:
        return f"{kind} >= {minimum}"
    if maximum is not None:
        return f"{kind} <= {maximum}"
    return kind


def option(default: Any, parse: Parser, help: str) -> Any:
    """A dataclass field that the command line can set; `default` is already parsed."""
    return field(default=default, metadata={"parse": parse, "help": help})


CSV_COLUMN_DEFAULTS = {"file": "file", "label": "label", "patient": "patient", "split": "split", "site": "site"}


def csv_columns(name: str, value: str) -> str:
    """`role=column` pairs, comma-separated; roles file, label, patient, split, site; unnamed roles keep
    their default column names. Returned whole (every role), so the logged parameter says it all."""
    columns = dict(CSV_COLUMN_DEFAULTS)
    for part in filter(None, (p.strip() for p in value.split(","))):
        role, sep, column = (x.strip() for x in part.partition("="))
        if not sep or role not in columns or not column:
            raise UserError(
                f"{name} takes role=column pairs for the roles {', '.join(columns)}, e.g. "
                f"'file=Image Index,label=Finding Labels,patient=Patient ID'; got {part!r}"
            )
        columns[role] = column
    return ",".join(f"{role}={column}" for role, column in columns.items())


def column_map(value: str) -> dict[str, str]:
    """A parsed `csv_columns` value as role -> column."""
    return dict(part.split("=", 1) for part in value.split(","))


def label_list(name: str, value: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys(p.strip() for p in value.split(",") if p.strip()))
