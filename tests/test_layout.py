"""The layout is enforced: import-linter's contracts in pyproject.toml hold, and no module of
onnxopt imports itself back through others (function-local imports count too).

Both read the source tree as one package: a temporary `onnxopt/` of links to the sources with
`passes/` linked in as `onnxopt/passes`, as the wheel maps it (an editable install maps it
with an import hook, which static import analysis does not see)."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.conftest import REPO

pytest.importorskip("importlinter", reason="the test extra installs import-linter")

CHECK = """
import sys
import grimp
from importlinter.cli import lint_imports

graph = grimp.build_graph("onnxopt", cache_dir=None)
assert "onnxopt.passes.prune" in graph.modules, "onnxopt.passes not found"
cycles = []
for module in sorted(graph.modules):
    for imported in sorted(graph.find_modules_directly_imported_by(module)):
        if graph.chain_exists(importer=imported, imported=module):
            chain = graph.find_shortest_chain(importer=imported, imported=module)
            cycles.append(f"{module} -> {' -> '.join(chain)}")
print("import cycles:", *cycles, sep="\\n  ") if cycles else None
code = lint_imports(config_filename=sys.argv[1], no_cache=True)
sys.exit(code or bool(cycles))
"""


def source_package(root: Path) -> Path:
    package = root / "onnxopt"
    package.mkdir(parents=True)
    for entry in (REPO / "onnxopt").iterdir():
        if entry.name not in ("passes", "__pycache__"):
            (package / entry.name).symlink_to(entry)
    (package / "passes").symlink_to(REPO / "passes")
    return root


def test_import_contracts_hold_and_no_cycles(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(source_package(tmp_path / "src")))
    # Run outside the checkout: `python -c` puts the working folder first on sys.path.
    done = subprocess.run(
        [sys.executable, "-c", CHECK, str(REPO / "pyproject.toml")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    contracts = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]
    assert f"Contracts: {len(contracts['contracts'])} kept, 0 broken" in done.stdout
