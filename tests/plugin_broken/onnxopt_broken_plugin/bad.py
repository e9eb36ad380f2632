"""Entry-point targets that onnxopt must refuse, one reason each."""

from __future__ import annotations

from dataclasses import dataclass

from onnxopt.infra.pass_base import Pass, PassResult


def not_a_pass(model, ctx):
    """A function where a Pass subclass is expected."""
    return PassResult(model, False)


class CleanupClash(Pass):
    """Would shadow the built-in `cleanup`."""

    name = "cleanup"
    summary = "a second cleanup"

    def apply(self, model, ctx):
        return PassResult(model, False)


@dataclass
class LooseOptions:
    level: int = 1


class LooseOptionsPass(Pass[LooseOptions]):
    """Options that are not frozen: a pipeline could mutate them between runs."""

    name = "loose_options"
    summary = "options that are not frozen"
    Options = LooseOptions

    def apply(self, model, ctx):
        return PassResult(model, False)
