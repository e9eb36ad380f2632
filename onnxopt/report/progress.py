"""Progress on the terminal: the one place that draws it (rich, on stderr, on a TTY only).

Passes report into `PassContext.progress` (`onnxopt.infra.progress.PassProgress`); benchmark
rounds through `progress_bar`. On a pipe, with -q, or in a report nothing is drawn.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator

from onnxopt.infra.progress import PassProgress, no_progress


@contextlib.contextmanager
def terminal_progress(enabled: bool = True) -> Iterator[PassProgress]:
    """A PassProgress drawing one line per task (bar, count, ETA, detail) while the block runs."""
    if not enabled or not sys.stderr.isatty():
        yield no_progress
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
    from rich.progress import Progress as RichProgress

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[detail]}"),
    )
    with RichProgress(*columns, console=Console(stderr=True), transient=True) as bar:
        tasks: dict[str, int] = {}

        def update(task: str, done: float, total: float, detail: str = "") -> None:
            if task not in tasks:
                tasks[task] = bar.add_task(task, total=total, detail=detail)
            bar.update(tasks[task], completed=done, total=total, detail=detail)

        yield update


@contextlib.contextmanager
def progress_bar(label: str) -> Iterator[Callable[[float], None] | None]:
    """A fraction-done callback for one task on a TTY, else None."""
    if not sys.stderr.isatty():
        yield None
        return
    with terminal_progress() as update:
        yield lambda fraction: update(label, fraction, 1.0, "")
