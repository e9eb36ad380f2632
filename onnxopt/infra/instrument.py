"""Instrumentation hooks around each pass (MLIR's PassInstrumentation): the manager calls
`before_pass`, `after_run` (the pass returned, before its gates), `after_pass` (checked:
accepted or rolled back) and `pass_failed` (it raised). `PassResources`, always first, fills
each record's wall time and peak resident memory; callers add their own instruments."""

from __future__ import annotations

import time

from onnxopt.infra.records import PassRecord
from onnxopt.runtime.memory import peak_rss_mb, reset_peak_rss


class Instrument:
    """Base hook: subclasses override what they need."""

    def before_pass(self, name: str) -> None:
        """Called before a pass runs."""

    def after_run(self, name: str, record: PassRecord) -> None:
        """Called when the pass returned, before its result is checked."""

    def after_pass(self, name: str, record: PassRecord) -> None:
        """Called after a pass ran and was checked (accepted or rolled back)."""

    def pass_failed(self, name: str, error: BaseException) -> None:
        """Called when a pass raised."""


class PassResources(Instrument):
    """Wall time and peak RSS of each pass's run (the peak is per pass where Linux lets the
    counter be reset, else the process's peak so far)."""

    def __init__(self) -> None:
        self.start = 0.0

    def before_pass(self, name: str) -> None:
        reset_peak_rss()
        self.start = time.perf_counter()

    def after_run(self, name: str, record: PassRecord) -> None:
        record.seconds = time.perf_counter() - self.start
        record.peak_rss_mb = peak_rss_mb()
