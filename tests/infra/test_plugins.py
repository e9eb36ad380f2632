"""Plugin passes: real distributions (tests/plugin_pkg, tests/plugin_broken) installed with pip
into a temporary folder, then the console script run with that folder on PYTHONPATH; and the
checks a plugin class goes through, in process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np
import onnx
import pytest

from onnxopt.errors import OptionError
from onnxopt.infra.options import option
from onnxopt.infra.pass_base import Pass, PassResult
from onnxopt.infra.plugins import load_plugin_passes, options_error, pass_class_error
from onnxopt.infra.registry import get_pass_class
from tests.conftest import REPO, CliResult, cli_command, ort_outputs

DEMO = "onnxopt-demo-plugin 0.3.1"
BROKEN = "onnxopt-broken-plugin 0.0.1"


def _install(package: str, target: Path) -> Path:
    """pip-install tests/<package> (copied, so no build files land in the tree) into `target`,
    offline: no index, no build isolation (setuptools >= 70.1 of this environment builds it)."""
    source = target.parent / f"{package}-src"
    shutil.copytree(REPO / "tests" / package, source)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--target",
            str(target),
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return target


@pytest.fixture(scope="module")
def demo_site(tmp_path_factory) -> Path:
    return _install("plugin_pkg", tmp_path_factory.mktemp("demo") / "site")


@pytest.fixture(scope="module")
def broken_site(tmp_path_factory) -> Path:
    return _install("plugin_broken", tmp_path_factory.mktemp("broken") / "site")


def _run(sites: list[Path], *args: str | Path) -> CliResult:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(map(str, sites)))
    done = subprocess.run(
        [*cli_command(), *map(str, args)], capture_output=True, text=True, env=env, timeout=600
    )
    return CliResult(done.returncode, done.stdout, done.stderr)


def test_passes_lists_plugin_passes_with_their_origin(demo_site):
    result = _run([demo_site], "passes")
    assert result.returncode == 0 and result.stderr == ""
    lines = result.stdout.splitlines()
    assert f"rename_nodes: name main-graph nodes <prefix><index>_<op type>  [{DEMO}]" in lines
    assert "    prefix (str, default 'n'): text that starts every new node name" in lines
    assert any(line.startswith("cleanup: ") and line.endswith("[built-in]") for line in lines)
    listed = {e["name"]: e for e in json.loads(_run([demo_site], "passes", "--json").stdout)}
    assert listed["round_weights"]["origin"] == DEMO and listed["prune"]["origin"] == "built-in"
    assert listed["round_weights"]["options"][0]["default"] == 3


def test_plugin_passes_run_under_the_managers_gates(demo_site, digits_model, tmp_path):
    out, report = tmp_path / "o.onnx", tmp_path / "r.json"
    val = REPO / "examples" / "digits_val.npz"
    pipeline = "cleanup,rename_nodes{prefix=p},round_weights{decimals=0}"
    result = _run(
        [demo_site],
        "optimize",
        digits_model,
        "-o",
        out,
        "--passes",
        pipeline,
        "--val",
        val,
        "--report",
        report,
    )
    assert result.returncode == 0, result.stderr
    records = json.loads(report.read_text())["passes"]
    assert [(r["name"], r["status"]) for r in records] == [
        ("cleanup", "changed"),
        ("rename_nodes", "changed"),
        ("round_weights", "rolled back"),
    ]
    assert records[1]["stats"] == {"renamed": records[1]["before"]["nodes"]} == {"renamed": 18}
    assert "cosine" in records[2]["reason"] and "< 0.9999" in records[2]["reason"]
    optimized = onnx.load(out)
    assert [n.name for n in optimized.graph.node] == [
        f"p{i}_{n.op_type}" for i, n in enumerate(optimized.graph.node)
    ]
    metadata_props = {p.key: p.value for p in optimized.metadata_props}
    assert metadata_props["onnxopt.pipeline"].endswith(
        ",rename_nodes{prefix=p},round_weights{decimals=0}"
    )
    feed = {"input": np.load(val)["input"][:16]}
    before, after = ort_outputs(digits_model, feed)[0], ort_outputs(out, feed)[0]
    np.testing.assert_allclose(after, before, rtol=1e-4, atol=1e-4)  # the rounding was undone


def test_a_plugin_pass_missing_its_gate_fails_strict_runs(demo_site, digits_model, tmp_path):
    out = tmp_path / "o.onnx"
    result = _run(
        [demo_site],
        "optimize",
        digits_model,
        "-o",
        out,
        "--strict",
        "--passes",
        "round_weights{decimals=0}",
        "--val",
        REPO / "examples" / "digits_val.npz",
    )
    assert result.returncode == 1 and not out.exists()
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith("error: pass 'round_weights' rolled back (--strict)")
    )


def test_broken_plugins_are_one_warning_each(demo_site, broken_site):
    result = _run([demo_site, broken_site], "passes")
    assert result.returncode == 0 and "Traceback" not in result.stderr
    warnings = result.stderr.strip().splitlines()
    prefix = "WARNING onnxopt.infra.plugins: plugin pass "
    assert sorted(warnings) == [
        f"{prefix}'cleanup' ({BROKEN}) not loaded: the name is taken by the built-in pass",
        f"{prefix}'loose_options' ({BROKEN}) not loaded: onnxopt_broken_plugin.bad:"
        "LooseOptionsPass has Options that is not frozen (use @dataclass(frozen=True))",
        f"{prefix}'missing_module' ({BROKEN}) not loaded: onnxopt_broken_plugin.not_there:"
        "SomePass does not import (ModuleNotFoundError: No module named "
        "'onnxopt_broken_plugin.not_there')",
        f"{prefix}'not_a_pass' ({BROKEN}) not loaded: onnxopt_broken_plugin.bad:not_a_pass "
        "is not a Pass subclass (it is a function)",
    ]
    names = {line.split(":")[0] for line in result.stdout.splitlines() if line[:1] != " "}
    assert names == {
        "cleanup",
        "distill",
        "prune",
        "quant",
        "share",
        "upgrade",
        "rename_nodes",
        "round_weights",
    }
    assert "[built-in]" in next(x for x in result.stdout.splitlines() if x.startswith("cleanup"))


def test_asking_for_a_broken_plugin_pass_is_one_error_line(broken_site, digits_model, tmp_path):
    out = tmp_path / "o.onnx"
    result = _run(
        [broken_site],
        "-q",
        "optimize",
        digits_model,
        "-o",
        out,
        "--passes",
        "cleanup,missing_module",
    )
    assert result.returncode == 2 and not out.exists() and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        f"error: pass 'missing_module' is unavailable: its plugin ({BROKEN}) did not load: "
        "onnxopt_broken_plugin.not_there:SomePass does not import (ModuleNotFoundError: "
        "No module named 'onnxopt_broken_plugin.not_there')"
    ]
    clash = _run([broken_site], "-q", "optimize", digits_model, "-o", out, "--passes", "cleanup")
    assert clash.returncode == 0 and out.exists()  # the built-in cleanup, not the plugin's


# --- the checks, in process ----------------------------------------------------------------


class _Named(Pass):
    name = "test-plugin-named"
    summary = "test only"

    def apply(self, model, ctx):
        return PassResult(model, False)


class _Abstract(Pass):
    name = "test-plugin-abstract"
    summary = "test only"


class _NoSummary(_Named):
    summary = None


def test_pass_class_checks_say_why():
    assert pass_class_error(_Named, "test-plugin-named") is None
    assert pass_class_error(_Named, "other") == (
        "declares name 'test-plugin-named', not the entry point's 'other'"
    )
    assert pass_class_error(_Abstract, "test-plugin-abstract") == (
        "is abstract (it does not implement apply)"
    )
    assert pass_class_error(_NoSummary, "test-plugin-named").startswith("has no summary")
    assert pass_class_error(int, "x") == "is not a Pass subclass (it is the class int)"


@dataclass(frozen=True)
class _GoodOptions:
    level: int = option(2, "how much")
    names: tuple[str, ...] = option(("a", "b c"), "which")


@dataclass(frozen=True)
class _NoDefault:
    level: int


@dataclass(frozen=True)
class _DictOption:
    table: complex = option(0j, "unsupported")


@dataclass(frozen=True)
class _WrongDefault:
    level: int = option(2.5, "a float default for an int")


def test_options_checks_say_why():
    assert options_error(_GoodOptions) is None
    assert options_error(dict) == "has Options that is not a dataclass"
    assert options_error(_NoDefault) == "has option 'level' without a default"
    assert options_error(_DictOption).startswith("has option 'table' of an unsupported type")
    assert options_error(_WrongDefault) == (
        "has option 'level' whose default is not its type (expected an integer)"
    )


def test_entry_points_load_or_mark_the_name_unavailable():
    points = [
        metadata.EntryPoint("cleanup", "onnxopt.passes.cleanup:CleanupPass", "onnxopt.passes"),
        metadata.EntryPoint("test-plugin-gone", "tests.no_such_module:P", "onnxopt.passes"),
    ]
    same, gone = load_plugin_passes(points)
    assert same.error is None  # the same class under its own name is no clash
    assert gone.origin == "entry point tests.no_such_module:P"
    assert gone.error.startswith("tests.no_such_module:P does not import (ModuleNotFoundError")
    with pytest.raises(OptionError, match=r"^pass 'test-plugin-gone' is unavailable: its plugin"):
        get_pass_class("test-plugin-gone")


def test_installed_entry_points_are_read_once(monkeypatch):
    from onnxopt.infra import plugins

    calls = []
    point = metadata.EntryPoint("test-plugin-once", "tests.no_such_module:Q", "onnxopt.passes")

    def entry_points(group):
        calls.append(group)
        return [point]

    monkeypatch.setattr(plugins, "_installed", None)
    monkeypatch.setattr(plugins.metadata, "entry_points", entry_points)
    load_plugin_passes([])  # an explicit list does not count as the installed ones
    first = load_plugin_passes()
    assert load_plugin_passes() is first and calls == ["onnxopt.passes"]
    assert first[0].name == "test-plugin-once" and first[0].error is not None
