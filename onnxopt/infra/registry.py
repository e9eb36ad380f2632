"""Passes by stable name: the built-in ones (`onnxopt.passes.BUILTIN_PASSES`) and any that
`register_pass` adds. Filled by explicit lists, never by scanning."""

from __future__ import annotations

from onnxopt.errors import OptionError
from onnxopt.infra.pass_base import Pass
from onnxopt.passes import BUILTIN_PASSES

_PASSES: dict[str, type[Pass]] = {}


def register_pass(cls: type[Pass]) -> type[Pass]:
    """Class decorator: make a pass reachable by its `name` from pipelines and the CLI."""
    existing = _PASSES.get(cls.name)
    if existing is not None and existing is not cls:
        raise RuntimeError(f"two passes registered as '{cls.name}': {existing} and {cls}")
    _PASSES[cls.name] = cls
    return cls


for _builtin in BUILTIN_PASSES:
    register_pass(_builtin)


def pass_names() -> list[str]:
    return sorted(_PASSES)


def get_pass_class(name: str) -> type[Pass]:
    try:
        return _PASSES[name]
    except KeyError:
        valid = ", ".join(sorted(_PASSES))
        raise OptionError(f"unknown pass '{name}' (available passes: {valid})") from None
