"""Plugin passes: classes that installed distributions name in the entry-point group
`onnxopt.passes` (entry-point name = the pass's `name`).

Loaded by an explicit call (`load_plugin_passes`, made by the API before a pipeline is parsed
or the passes are listed), never at import. A plugin that fails to import, names something
that is not a usable Pass subclass, has options that are not a frozen dataclass of typed,
defaulted fields, or takes the name of a pass already registered is skipped with a one-line
warning; its name then gives a one-line error saying why instead of "unknown pass".
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import typing
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import metadata

from onnxopt.infra.options import convert, type_text
from onnxopt.infra.pass_base import Pass
from onnxopt.infra.registry import (
    BUILTIN,
    mark_unavailable,
    pass_origin,
    register_pass,
    registered_pass,
)

log = logging.getLogger(__name__)

GROUP = "onnxopt.passes"


@dataclass(frozen=True)
class PluginLoad:
    """One entry point's outcome: `error` is None when its pass was registered."""

    name: str
    origin: str
    error: str | None = None


_installed: list[PluginLoad] | None = None
"""The outcomes of the installed entry points, once they have been loaded."""


def load_plugin_passes(
    entry_points: Iterable[metadata.EntryPoint] | None = None,
) -> list[PluginLoad]:
    """Register the passes of the installed `onnxopt.passes` entry points (once per process),
    or of `entry_points` when given; a broken plugin is logged as one warning and skipped."""
    global _installed
    if entry_points is None and _installed is not None:
        return _installed
    installed = entry_points is None
    if entry_points is None:
        entry_points = metadata.entry_points(group=GROUP)
    outcomes = [_load_one(entry_point) for entry_point in entry_points]
    for outcome in outcomes:
        if outcome.error is not None:
            log.warning(
                "plugin pass '%s' (%s) not loaded: %s", outcome.name, outcome.origin, outcome.error
            )
    if installed:
        _installed = outcomes
    return outcomes


def _load_one(entry_point: metadata.EntryPoint) -> PluginLoad:
    name, origin = entry_point.name, _origin(entry_point)
    taken = registered_pass(name)
    if taken is not None and not _same_target(taken, entry_point):
        taken_by = pass_origin(name)
        owner = "the built-in pass" if taken_by == BUILTIN else f"the pass from {taken_by}"
        reason = f"the name is taken by {owner}"
        return PluginLoad(name, origin, reason)
    try:
        target = entry_point.load()
    except Exception as exc:
        error = f"{entry_point.value} does not import ({type(exc).__name__}: {_first_line(exc)})"
        return _broken(name, origin, error)
    error = pass_class_error(target, name)
    if error is not None:
        return _broken(name, origin, f"{entry_point.value} {error}")
    register_pass(target, origin)
    return PluginLoad(name, origin)


def pass_class_error(target: object, name: str) -> str | None:
    """Why `target` cannot be registered as the pass `name`, or None when it can."""
    if not (isinstance(target, type) and issubclass(target, Pass)):
        return f"is not a Pass subclass (it is {_kind(target)})"
    if inspect.isabstract(target):
        return "is abstract (it does not implement apply)"
    if getattr(target, "name", None) != name:
        return f"declares name {getattr(target, 'name', None)!r}, not the entry point's '{name}'"
    if not isinstance(getattr(target, "summary", None), str):
        return "has no summary (a one-line str class attribute)"
    return options_error(target.Options)


def options_error(options_cls: object) -> str | None:
    """Why `options_cls` is not a usable options class (a frozen dataclass whose every field
    has a type that pipeline text converts to and a default of that type), or None."""
    if not (isinstance(options_cls, type) and dataclasses.is_dataclass(options_cls)):
        return "has Options that is not a dataclass"
    if not options_cls.__dataclass_params__.frozen:
        return "has Options that is not frozen (use @dataclass(frozen=True))"
    try:
        hints = typing.get_type_hints(options_cls)
    except Exception as exc:
        return f"has Options whose annotations do not resolve ({_first_line(exc)})"
    for field in dataclasses.fields(options_cls):
        if field.default is dataclasses.MISSING:
            return f"has option '{field.name}' without a default"
        try:
            type_text(hints[field.name])
            back = convert(field.default, hints[field.name])
        except TypeError as exc:
            return f"has option '{field.name}' of an unsupported type ({_first_line(exc)})"
        except ValueError as exc:
            return f"has option '{field.name}' whose default is not its type ({_first_line(exc)})"
        if back != field.default:
            return f"has option '{field.name}' whose default is not of its declared type"
    return None


def _broken(name: str, origin: str, reason: str) -> PluginLoad:
    mark_unavailable(name, f"its plugin ({origin}) did not load: {reason}")
    return PluginLoad(name, origin, reason)


def _same_target(cls: type, entry_point: metadata.EntryPoint) -> bool:
    return entry_point.value == f"{cls.__module__}:{cls.__qualname__}"


def _origin(entry_point: metadata.EntryPoint) -> str:
    dist = getattr(entry_point, "dist", None)
    if dist is None:
        return f"entry point {entry_point.value}"
    return f"{dist.name} {dist.version}"


def _kind(target: object) -> str:
    if isinstance(target, type):
        return f"the class {target.__name__}"
    return f"a {type(target).__name__}"


def _first_line(exc: BaseException) -> str:
    text = str(exc)
    return text.splitlines()[0] if text else "no message"
