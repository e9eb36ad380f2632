"""How far a long step is: the callback type passes and engines report into.

It sits below the engines (beside `infra.options`) so they can take one without importing the
pass contract; the CLI's terminal drawing is `onnxopt.report.progress`.
"""

from __future__ import annotations

from collections.abc import Callable

PassProgress = Callable[[str, float, float, str], None]
"""`progress(task, done, total, detail)`: e.g. ("distill", 3, 8, "loss 0.31, early-stop
top-1 93.5 %"). The CLI draws it on a terminal; elsewhere it is dropped. Never part of a
result: a report or a model must not depend on it."""


def no_progress(task: str, done: float, total: float, detail: str = "") -> None:
    """The default PassProgress: nobody is watching."""
