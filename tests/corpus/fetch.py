"""Get the onnx backend test models: `onnx/backend/test/data/**` from the onnx 1.22.0 wheel.

Newer onnx wheels no longer ship the `node` folder, so the corpus comes from the pinned
wheel, downloaded with pip (PyPI or whatever index pip is configured with) for the running
platform, and only the test data is extracted. The result is cached: done once per machine.

    python -m tests.corpus.fetch            # prints the corpus folder
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

ONNX_VERSION = "1.22.0"
DATA_PREFIX = "onnx/backend/test/data/"
COLLECTIONS = ("node", "pytorch-converted", "pytorch-operator", "simple")
"""Folders of the test data holding models (`light` and `real` only point at downloads)."""

_MARKER = ".complete"


def cache_root() -> Path:
    """`$ONNXOPT_CORPUS_CACHE`, else `$XDG_CACHE_HOME/onnxopt`, else `~/.cache/onnxopt`."""
    explicit = os.environ.get("ONNXOPT_CORPUS_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "onnxopt"


def corpus_dir(cache: Path | None = None) -> Path:
    """The folder holding `node/`, `simple/`, ... (downloaded and extracted on first use)."""
    root = Path(cache) if cache is not None else cache_root()
    target = root / f"onnx-{ONNX_VERSION}-backend-data"
    if (target / _MARKER).exists():
        return target
    root.mkdir(parents=True, exist_ok=True)
    with locked(root / f".onnx-{ONNX_VERSION}.lock"):
        if not (target / _MARKER).exists():
            _populate(root, target)
    return target


@contextlib.contextmanager
def locked(path: Path):
    """An exclusive lock so parallel test workers download once."""
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _populate(root: Path, target: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="onnx-wheel-", dir=root) as staging:
        wheel = _download_wheel(Path(staging))
        extracted = Path(staging) / "data"
        _extract_test_data(wheel, extracted)
        if target.exists():
            shutil.rmtree(target)
        os.replace(extracted, target)
    (target / _MARKER).write_text(f"onnx=={ONNX_VERSION}\n")


def pip_download(spec: str, folder: Path, timeout: float) -> subprocess.CompletedProcess:
    """`pip download spec` (the wheel alone, no dependencies) into `folder`; raises
    subprocess.TimeoutExpired past `timeout` seconds."""
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        spec,
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--quiet",
        "-d",
        str(folder),
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


def _download_wheel(folder: Path) -> Path:
    done = pip_download(f"onnx=={ONNX_VERSION}", folder, timeout=900)
    wheels = sorted(folder.glob(f"onnx-{ONNX_VERSION}-*.whl"))
    if done.returncode != 0 or not wheels:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise RuntimeError(
            f"cannot download onnx=={ONNX_VERSION} for the backend test corpus: " + " | ".join(tail)
        )
    return wheels[0]


def _extract_test_data(wheel: Path, destination: Path) -> None:
    """Extract `onnx/backend/test/data/<collection>/**`, refusing names that leave the folder."""

    def relative(name: str) -> str | None:
        inside = name[len(DATA_PREFIX) :]
        wanted = name.startswith(DATA_PREFIX) and inside.split("/", 1)[0] in COLLECTIONS
        return inside if wanted else None

    extract_members(wheel, destination, relative, RuntimeError)


def extract_members(
    wheel: Path,
    destination: Path,
    relative: Callable[[str], str | None],
    error: type[Exception],
) -> None:
    """Extract the files of `wheel` that `relative` maps to a path (None: skipped) under the new
    folder `destination`; a name that would leave it raises `error`."""
    destination.mkdir(parents=True)
    base = destination.resolve()
    with zipfile.ZipFile(wheel) as archive:
        for info in archive.infolist():
            inside = None if info.is_dir() else relative(info.filename)
            if inside is None:
                continue
            path = (base / inside).resolve()
            if base not in path.parents:
                raise error(f"unsafe path in {wheel.name}: {info.filename}")
            path.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(info) as source, open(path, "wb") as sink:
                shutil.copyfileobj(source, sink)


def model_dirs(root: Path) -> list[Path]:
    """Every folder holding a `model.onnx`, sorted by collection and name."""
    return sorted(p.parent for c in COLLECTIONS for p in (root / c).glob("*/model.onnx"))


if __name__ == "__main__":
    print(corpus_dir())
