"""Typed, frozen pass options: declaration, parsing from text or YAML values, description.

A pass declares its options as a frozen dataclass whose fields use `option(...)`. Values come
from pipeline text (strings) or config files (native YAML/JSON values) and are converted to the
declared type; an unknown option or a bad value is an OptionError naming the valid choices.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from onnxopt.errors import OptionError

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def option(
    default: Any,
    doc: str,
    *,
    low: float | None = None,
    high: float | None = None,
) -> Any:
    """Declare one option field: its default, a one-line doc and an optional inclusive range."""
    return dataclasses.field(default=default, metadata={"doc": doc, "low": low, "high": high})


@dataclass(frozen=True)
class NoOptions:
    """Options of a pass that has none."""


@dataclass(frozen=True)
class OptionInfo:
    name: str
    type_text: str
    default: Any
    doc: str


def describe_options(options_cls: type) -> list[OptionInfo]:
    hints = typing.get_type_hints(options_cls)
    return [
        OptionInfo(f.name, type_text(hints[f.name]), f.default, f.metadata.get("doc", ""))
        for f in dataclasses.fields(options_cls)
    ]


def type_text(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin is Literal:
        return "|".join(str(v) for v in typing.get_args(hint))
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(hint) if a is not type(None)]
        return f"{type_text(inner[0])} or none"
    if origin is tuple:
        return f"list of {type_text(typing.get_args(hint)[0])}"
    return getattr(hint, "__name__", str(hint))


def build_options(options_cls: type, raw: Mapping[str, Any], pass_name: str) -> Any:
    """Instantiate `options_cls` from raw values, converting and checking each one."""
    fields = {f.name: f for f in dataclasses.fields(options_cls)}
    hints = typing.get_type_hints(options_cls)
    values = {}
    for key, value in raw.items():
        if key not in fields:
            valid = ", ".join(fields) or "none"
            raise OptionError(f"pass '{pass_name}' has no option '{key}' (valid options: {valid})")
        try:
            converted = convert(value, hints[key])
        except (TypeError, ValueError) as exc:
            raise OptionError(f"{pass_name}{{{key}={format_value(value)}}}: {exc}") from None
        _check_range(pass_name, key, converted, fields[key].metadata)
        values[key] = converted
    return options_cls(**values)


def _check_range(pass_name: str, key: str, value: Any, meta: Mapping[str, Any]) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return
    low, high = meta.get("low"), meta.get("high")
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"[{'-inf' if low is None else low}, {'inf' if high is None else high}]"
        raise OptionError(f"{pass_name}{{{key}={value}}}: must be within {bounds}")


def convert(value: Any, hint: Any) -> Any:
    """Convert a text or native value to the type `hint`; raise ValueError naming valid values."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        inner = [a for a in typing.get_args(hint) if a is not type(None)]
        return convert(value, inner[0])
    if origin is Literal:
        choices = typing.get_args(hint)
        for choice in choices:
            if str(choice) == str(value):
                return choice
        raise ValueError(f"expected one of {', '.join(map(str, choices))}")
    if origin is tuple:
        items = value if isinstance(value, (list, tuple)) else [value]
        return tuple(convert(item, typing.get_args(hint)[0]) for item in items)
    if hint is bool:
        return _to_bool(value)
    if hint is int:
        return _to_int(value)
    if hint is float:
        if isinstance(value, bool):
            raise ValueError("expected a number")
        return float(value)
    if hint is str:
        if isinstance(value, (list, tuple, dict)):
            raise ValueError("expected a single value")
        return str(value)
    raise TypeError(f"unsupported option type {hint!r}")


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError("expected true or false")


def _to_int(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError("expected an integer")
    if isinstance(value, float) and not value.is_integer():
        raise ValueError("expected an integer")
    return int(value)


def format_value(value: Any) -> str:
    """Text form of an option value that `convert` reads back to the same value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(format_value(v) for v in value) + "]"
    if isinstance(value, float):
        return repr(value)
    text = str(value)
    if any(ch in text for ch in ",{}[]=\"' ") or text == "":
        return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return text


def non_default_items(options: Any) -> list[tuple[str, Any]]:
    return [
        (f.name, getattr(options, f.name))
        for f in dataclasses.fields(options)
        if getattr(options, f.name) != f.default
    ]


def all_items(options: Any) -> list[tuple[str, Any]]:
    return [(f.name, getattr(options, f.name)) for f in dataclasses.fields(options)]
