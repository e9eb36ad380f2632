"""Instrumentation hooks around each pass: wall time and peak resident memory."""

from __future__ import annotations

import contextlib
import resource
import time
from dataclasses import dataclass
from pathlib import Path

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def current_peak_rss_mb() -> float:
    """Peak resident memory of this process (since the last reset where Linux allows it)."""
    if _STATUS.exists():
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (Linux: write 5 to clear_refs); False if impossible."""
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


@dataclass
class Measurement:
    seconds: float = 0.0
    peak_rss_mb: float = 0.0
    peak_is_per_pass: bool = False


class Instrument:
    """Base hook: subclasses override what they need."""

    def before_pass(self, name: str) -> None:
        """Called before a pass runs."""

    def after_pass(self, name: str, record) -> None:
        """Called after a pass ran and was checked (accepted or rolled back)."""

    def pass_failed(self, name: str, error: BaseException) -> None:
        """Called when a pass raised."""


@contextlib.contextmanager
def measure():
    """Measure the wall time and the peak RSS of the enclosed block."""
    result = Measurement()
    result.peak_is_per_pass = reset_peak_rss()
    start = time.perf_counter()
    try:
        yield result
    finally:
        result.seconds = time.perf_counter() - start
        result.peak_rss_mb = current_peak_rss_mb()
