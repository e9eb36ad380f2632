"""How far a long step is: the callback type passes and engines report into.

It sits below the engines (beside `infra.options`) so they can take one without importing the
pass contract; the CLI's terminal drawing is `onnxopt.report.progress`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from onnxopt.data.feeds import Feed, feed_rows
from onnxopt.data.sources import DataSource

PassProgress = Callable[[str, float, float, str], None]
"""`progress(task, done, total, detail)`: e.g. ("distill", 3, 8, "loss 0.31, early-stop
top-1 93.5 %"). The CLI draws it on a terminal; elsewhere it is dropped. Never part of a
result: a report or a model must not depend on it."""


def no_progress(task: str, done: float, total: float, detail: str = "") -> None:
    """The default PassProgress: nobody is watching."""


class ReportedReads(DataSource):
    """`source`, reporting each read through it: samples so far of the samples it holds, and
    which read this is. Calibration, prune's probes and refits and share's moments each read
    the calibration data, so a long pass shows where it is without an engine drawing anything."""

    def __init__(self, source: DataSource, progress: PassProgress, task: str) -> None:
        self.source, self.progress, self.task = source, progress, task
        self.description = source.description
        self.synthetic = source.synthetic
        self.reads = 0

    def __getattr__(self, name: str):
        # Only reached for what this wrapper lacks: batch_size, specs, samples, ...
        if name == "source":  # not set yet (copy, pickle): no recursion
            raise AttributeError(name)
        return getattr(self.source, name)

    def __iter__(self) -> Iterator[Feed]:
        self.reads += 1
        total = getattr(self.source, "samples", None) or 0
        detail = f"reading {self.description}, read {self.reads}"
        done = 0
        for feed in self.source:
            yield feed
            done += feed_rows(feed)
            self.progress(self.task, done, max(total, done), detail)


def reported_reads(source: DataSource | None, progress: PassProgress, task: str):
    """`source` wrapped in `ReportedReads`, unless nobody is watching or there is no source."""
    if source is None or progress is no_progress:
        return source
    return ReportedReads(source, progress, task)
