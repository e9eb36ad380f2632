"""The wheel maps the top-level passes/ folder to onnxopt.passes and ships nothing else."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile

from tests.conftest import REPO

SOURCES = ("pyproject.toml", "README.md", "onnxopt", "passes")


def test_wheel_contents(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    for name in SOURCES:
        origin = REPO / name
        if origin.is_dir():
            shutil.copytree(origin, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(origin, source / name)
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(source)],
        check=True,
        capture_output=True,
    )
    (wheel,) = wheels.glob("onnxopt-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "onnxopt/passes/__init__.py" in names
    assert "onnxopt/passes/cleanup.py" in names
    assert "onnxopt/infra/manager.py" in names and "onnxopt/ir/io.py" in names
    assert not any(n.startswith(("passes/", "tests/", "benchmarks/")) for n in names)
    local_packages = {
        p.parent.relative_to(REPO).as_posix() for p in (REPO / "onnxopt").rglob("__init__.py")
    }
    shipped = {n.rsplit("/", 1)[0] for n in names if n.endswith("/__init__.py")}
    assert local_packages <= shipped, f"packages missing from the wheel: {local_packages - shipped}"
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "onnxopt = onnxopt.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
