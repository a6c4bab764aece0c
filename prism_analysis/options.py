"""Options defined once: on a config dataclass, with their help text and their valid range.

A field declared with :func:`option` carries its help, its command-line flag and its check.
:func:`add_options` turns a config class into argparse options, :func:`from_args` builds the config
from parsed arguments, and :func:`check_options` validates an instance built in Python the same way
(config classes call it in ``__post_init__``), so a bad value gets the same one-line error whether it
came from the command line or from a script::

    @dataclass
    class TrainConfig:
        steps: int = option(300, "optimizer steps", low=1)
        lr: float = option(1e-3, "peak learning rate", low=0, low_open=True)

The same checks back the standalone argparse types of the analysis commands (:func:`number`,
:func:`number_list`).
"""

from __future__ import annotations

import argparse
import copy
import math
from dataclasses import MISSING, field, fields

from .errors import PrismError


def option(
    default,
    help: str,
    *,
    low=None,
    high=None,
    low_open: bool = False,
    choices=None,
    parse=None,
    flag: str | None = None,
    metavar: str | None = None,
    required: bool = False,
    aliases: tuple[str, ...] = (),
):
    """A config field that is also a command-line option (``--field-name`` unless ``flag``).

    ``low``/``high``: inclusive bounds (``low_open``: the lower bound excluded); floats must also be
    finite. ``choices``: the allowed values. ``parse``: str -> value for lists and tuples.
    Booleans become switches: ``--name`` for a False default, ``--no-name`` for a True one.
    ``required``: the command line must give it (the default stands for "not given").
    ``aliases``: more flags for the same option (``("--n-prompts",)``). A ``None`` default takes its
    type from ``parse`` (or ``str``).
    """
    meta = {
        "help": help,
        "low": low,
        "high": high,
        "low_open": low_open,
        "choices": choices,
        "parse": parse,
        "flag": flag,
        "metavar": metavar,
        "required": required,
        "aliases": tuple(aliases),
    }
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    return field(default=default, metadata=meta)


def problem(value, low=None, high=None, low_open: bool = False, choices=None, **_) -> str | None:
    """What is wrong with ``value`` under these constraints, or None when it is fine."""
    if choices is not None and value not in choices:
        return f"must be one of {', '.join(map(str, choices))}"
    values = value if isinstance(value, (list, tuple)) else [value]
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        if isinstance(v, float) and not math.isfinite(v):
            return "must be a finite number"
        if low is not None and (v < low or (low_open and v == low)):
            return f"must be {'>' if low_open else '>='} {low:g}"
        if high is not None and v > high:
            return f"must be <= {high:g}"
    return None


def _flag(f) -> str:
    if f.metadata.get("flag"):
        return f.metadata["flag"]
    if f.default is True:
        return "--no-" + f.name.replace("_", "-")
    return "--" + f.name.replace("_", "-")


def _kind(f):
    default = f.default if f.default is not MISSING else f.default_factory()
    if default is None:
        return f.metadata.get("parse") or str
    return type(default)


def _converter(f):
    meta = f.metadata
    kind = _kind(f)
    parse = meta.get("parse") or kind

    def convert(text: str):
        try:
            value = parse(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"not a valid {getattr(parse, '__name__', 'value')}: {text!r}") from None
        why = problem(value, **meta)
        if why:
            raise argparse.ArgumentTypeError(f"{why} (got {text!r})")
        return value

    convert.__name__ = getattr(parse, "__name__", "value")
    return convert


def add_options(parser: argparse.ArgumentParser, cls, skip=()) -> None:
    """Add every :func:`option` field of dataclass ``cls`` (except ``skip``) to ``parser``."""
    for f in fields(cls):
        if "help" not in f.metadata or f.name in skip:
            continue
        meta = f.metadata
        kind = _kind(f)
        if kind is bool:
            action = "store_false" if f.default is True else "store_true"
            parser.add_argument(_flag(f), *meta.get("aliases", ()), dest=f.name, action=action, help=meta["help"])
            continue
        default = f.default if f.default is not MISSING else f.default_factory()
        shown = ",".join(map(str, default)) if isinstance(default, (list, tuple)) else default
        extra = {"choices": meta["choices"]} if meta["choices"] is not None and kind is str else {}
        if meta["required"]:
            extra["required"] = True
        parser.add_argument(
            _flag(f),
            *meta.get("aliases", ()),
            dest=f.name,
            type=str if "choices" in extra else _converter(f),
            default=default,
            metavar=meta.get("metavar"),
            help=f"{meta['help']} (default: {shown})" if shown not in ("", None) else meta["help"],
            **extra,
        )


def flags(cls) -> dict[str, str]:
    """Field name -> command-line flag, for every :func:`option` field of dataclass ``cls``."""
    return {f.name: _flag(f) for f in fields(cls) if "help" in f.metadata}


def from_args(cls, args: argparse.Namespace, **overrides):
    """An instance of ``cls`` from the parsed values of its options, plus ``overrides``."""
    values = {f.name: getattr(args, f.name) for f in fields(cls) if "help" in f.metadata and hasattr(args, f.name)}
    return cls(**{**values, **overrides})


def check_options(obj) -> None:
    """Raise :class:`PrismError` naming the first option of dataclass ``obj`` out of its range."""
    for f in fields(obj):
        if "help" not in f.metadata:
            continue
        why = problem(getattr(obj, f.name), **f.metadata)
        if why:
            raise PrismError(f"{_flag(f)} {why} (got {getattr(obj, f.name)!r})")


# -- argparse types for options that are not config fields ---------------------------------------
def number(kind=float, **constraints):
    """An argparse type: a number of ``kind`` within ``constraints`` (see :func:`problem`)."""

    def convert(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a{'n integer' if kind is int else ' number'}: {text!r}") from None
        why = problem(value, **constraints)
        if why:
            raise argparse.ArgumentTypeError(f"{why} (got {text!r})")
        return value

    convert.__name__ = kind.__name__
    return convert


def number_list(kind=float, percent: bool = False, **constraints):
    """An argparse type: comma-separated numbers of ``kind`` (``percent``: ``1%`` means 0.01)."""

    def one(x: str):
        x = x.strip()
        if percent and x.endswith("%"):
            return kind(x[:-1]) / 100
        return kind(x)

    def convert(text: str):
        try:
            values = [one(x) for x in text.split(",") if x.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a comma-separated list of numbers: {text!r}") from None
        why = "is empty" if not values else problem(values, **constraints)
        if why:
            raise argparse.ArgumentTypeError(f"{why} (got {text!r})")
        return values

    convert.__name__ = "list"
    return convert


def steps_list(text: str) -> list[int]:
    """``"1,2,5"`` -> ``[1, 2, 5]``, sorted and unique (steps to save)."""
    return sorted(set(number_list(int, low=0)(text)))


def nonempty(text: str) -> str:
    """An argparse type for paths: refuses the empty string."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return text
