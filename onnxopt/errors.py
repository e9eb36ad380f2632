"""Errors that reach the user.

`OnnxoptError` and its subclasses are expected failures (bad input, refused rewrites): the CLI
prints their message on one line and exits 2. Anything else that escapes is a bug: exit 1.
"""

from __future__ import annotations


class OnnxoptError(Exception):
    """A failure the user can act on; its message is one line and says what to do."""

    exit_code = 2


class InputError(OnnxoptError):
    """The model, data, path or option given by the user cannot be used."""


class OptionError(OnnxoptError):
    """A pipeline text, pass name or pass option is invalid."""


class PassRefused(OnnxoptError):
    """A pass cannot run on this model (e.g. its opset is too old); the model is untouched."""


class CheckFailed(OnnxoptError):
    """A validation gate was missed (fidelity threshold, --strict rollback)."""

    exit_code = 1


class PassCrashed(Exception):
    """A pass raised an unexpected error: a bug, reported with the pass and the passes before it."""

    def __init__(self, pass_name: str, previous: list[str], cause: BaseException) -> None:
        ran = ", ".join(previous) if previous else "none"
        super().__init__(
            f"pass '{pass_name}' crashed ({type(cause).__name__}: {cause}); passes before it: {ran}"
        )
        self.pass_name = pass_name
        self.previous = previous
