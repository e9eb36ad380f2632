"""Peak host memory added by creating an ORT session and running it once, measured in a child.

A fresh `python -c` child per model (not multiprocessing, which re-imports `__main__`): its
baseline is the interpreter with numpy and onnxruntime imported. On Linux the peak is VmHWM
after resetting it (writing "5" to /proc/self/clear_refs) just before the session is created;
where the reset is refused, the larger RSS of after-creation and after-first-run stands in.
Elsewhere: not measured (None). Device (GPU) memory is not included.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from onnxopt.runtime.session import make_session, session_options

log = logging.getLogger(__name__)

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


@dataclass
class MemoryUse:
    peak_bytes: int | None
    """Peak RSS during session creation and the first run, above the baseline."""
    session_bytes: int | None
    """RSS right after session creation, above the baseline."""
    method: str


def status_kb(key: str) -> int | None:
    """A `kB` line of /proc/self/status (VmRSS, VmHWM); None where there is none."""
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (Linux: write 5 to clear_refs); False if impossible."""
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MiB (since the last reset where Linux allows it)."""
    peak = status_kb("VmHWM")
    if peak is not None:
        return peak / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _probe(model_path: str, provider: str, threads: int | None, feed: dict[str, np.ndarray]):
    """Runs in the child: create the session, run once, report RSS deltas in bytes."""
    baseline = status_kb("VmRSS")
    if baseline is None:
        return MemoryUse(None, None, "unavailable (no /proc/self/status)")
    exact = reset_peak_rss()
    session = make_session(model_path, provider, options=session_options(threads=threads))
    created = status_kb("VmRSS") or baseline
    session.run(None, feed)
    after_run = status_kb("VmRSS") or created
    peak = status_kb("VmHWM") if exact else max(created, after_run)
    method = "VmHWM reset via clear_refs" if exact else "VmRSS samples (clear_refs refused)"
    return MemoryUse((peak - baseline) * 1024, (created - baseline) * 1024, method)


def child_main() -> None:
    """Entry point of the child: a JSON request on stdin, a JSON MemoryUse on stdout."""
    import onnxruntime  # noqa: F401  (part of the baseline, not of the session)

    request = json.loads(sys.stdin.read())
    with np.load(request["feed"], allow_pickle=False) as archive:
        feed = {name: archive[name] for name in archive.files}
    use = _probe(request["model"], request["provider"], request["threads"], feed)
    sys.stdout.write(json.dumps(asdict(use)))


def measure_memory(
    model_path: str | Path,
    provider: str,
    threads: int | None,
    feed: dict[str, np.ndarray],
    *,
    timeout: float = 600.0,
) -> MemoryUse:
    """Session memory of `model_path` measured in a fresh child process."""
    if status_kb("VmRSS") is None:
        return MemoryUse(None, None, "unavailable (no /proc/self/status)")
    package_root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    code = "from onnxopt.runtime.memory import child_main; child_main()"
    with tempfile.TemporaryDirectory(prefix="onnxopt-mem-") as workdir:
        feed_path = Path(workdir) / "feed.npz"
        np.savez(feed_path, **feed)
        request = {"model": str(model_path), "provider": provider, "threads": threads}
        request["feed"] = str(feed_path)
        try:
            done = subprocess.run(
                [sys.executable, "-c", code],
                input=json.dumps(request),
                capture_output=True,
                text=True,
                env=env,
                cwd=workdir,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return MemoryUse(None, None, f"probe timed out after {timeout:g}s")
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        log.warning("memory probe of %s failed: %s", model_path, last)
        return MemoryUse(None, None, f"probe failed: {last}")
    return MemoryUse(**json.loads(done.stdout))


LARGE_BLOCK_BYTES = 4 * 2**20
"""Blocks from this size up are mapped on their own and go back to the system when freed."""


def return_large_blocks() -> None:
    """Make glibc's malloc map blocks of LARGE_BLOCK_BYTES and more on their own (a fixed
    M_MMAP_THRESHOLD) instead of carving them from heaps it keeps. Freed feature maps (the
    probe's, ORT's arena-less runs) then leave the process: a 960x960 detector's quant peaked at
    1.0 GB instead of 1.2-1.8 GB, varying with how the heaps fragmented. Elsewhere: nothing."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        m_mmap_threshold = -3
        if not libc.mallopt(m_mmap_threshold, LARGE_BLOCK_BYTES):
            log.debug("mallopt(M_MMAP_THRESHOLD) refused")
    except (OSError, AttributeError) as exc:  # not glibc (musl) or no libc.so.6
        log.debug("large blocks stay with the allocator: %s", exc)
