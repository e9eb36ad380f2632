"""Passes by stable name. Filled by the explicit imports in `onnxopt.passes`, never by scanning."""

from __future__ import annotations

from typing import TYPE_CHECKING

from onnxopt.errors import OptionError

if TYPE_CHECKING:
    from onnxopt.infra.pass_base import Pass

_PASSES: dict[str, type[Pass]] = {}


def register_pass(cls: type[Pass]) -> type[Pass]:
    """Class decorator: make a pass reachable by its `name` from pipelines and the CLI."""
    existing = _PASSES.get(cls.name)
    if existing is not None and existing is not cls:
        raise RuntimeError(f"two passes registered as '{cls.name}': {existing} and {cls}")
    _PASSES[cls.name] = cls
    return cls


def _ensure_builtin_passes() -> None:
    import onnxopt.passes  # noqa: F401  (its imports register the built-in passes)


def pass_names() -> list[str]:
    _ensure_builtin_passes()
    return sorted(_PASSES)


def get_pass_class(name: str) -> type[Pass]:
    _ensure_builtin_passes()
    try:
        return _PASSES[name]
    except KeyError:
        valid = ", ".join(sorted(_PASSES))
        raise OptionError(f"unknown pass '{name}' (available passes: {valid})") from None
