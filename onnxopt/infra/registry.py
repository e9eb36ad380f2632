"""Passes by stable name: the built-in ones (`onnxopt.passes.BUILTIN_PASSES`), plugin passes
(`onnxopt.infra.plugins.load_plugin_passes`) and any that `register_pass` adds. Filled by
explicit lists and explicit calls, never by scanning at import."""

from __future__ import annotations

from onnxopt.errors import OptionError
from onnxopt.infra.pass_base import Pass
from onnxopt.passes import BUILTIN_PASSES

BUILTIN = "built-in"

_PASSES: dict[str, type[Pass]] = {}
_ORIGINS: dict[str, str] = {}
_UNAVAILABLE: dict[str, str] = {}
"""Pass names whose provider failed to load -> why, for a one-line error when asked for."""


def register_pass(cls: type[Pass], origin: str | None = None) -> type[Pass]:
    """Make a pass reachable by its `name` from pipelines and the CLI (usable as a decorator).

    `origin` says where it comes from in `onnxopt passes` (default: the defining module).
    """
    existing = _PASSES.get(cls.name)
    if existing is not None and existing is not cls:
        raise RuntimeError(f"two passes registered as '{cls.name}': {existing} and {cls}")
    _PASSES[cls.name] = cls
    _ORIGINS[cls.name] = origin or f"registered by {cls.__module__}"
    _UNAVAILABLE.pop(cls.name, None)
    return cls


def mark_unavailable(name: str, reason: str) -> None:
    """Remember that a pass called `name` exists but could not be loaded, and why."""
    if name not in _PASSES:
        _UNAVAILABLE[name] = reason


for _builtin in BUILTIN_PASSES:
    register_pass(_builtin, BUILTIN)


def pass_names() -> list[str]:
    return sorted(_PASSES)


def pass_origin(name: str) -> str:
    """'built-in', the plugin distribution and version, or the module that registered it."""
    return _ORIGINS[name]


def registered_pass(name: str) -> type[Pass] | None:
    """The pass registered as `name`, or None (no error)."""
    return _PASSES.get(name)


def get_pass_class(name: str) -> type[Pass]:
    try:
        return _PASSES[name]
    except KeyError:
        if name in _UNAVAILABLE:
            raise OptionError(f"pass '{name}' is unavailable: {_UNAVAILABLE[name]}") from None
        valid = ", ".join(sorted(_PASSES))
        raise OptionError(f"unknown pass '{name}' (available passes: {valid})") from None
