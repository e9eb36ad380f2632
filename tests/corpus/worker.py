"""Optimize one corpus model with the `onnxopt` CLI and classify what a user would see.

The CLI runs in a forked child (`onnxopt.cli.main`, exactly what the console script calls)
with stdout/stderr in files, a time limit and an address-space limit; this process then judges
the exit code, stderr, the input file and the output model.

Outcomes:
- `ok`: exit 0; the output loads, passes onnx.checker as strictly as the input did, has the
  same inputs and outputs, and matches the input model on the test data within what the
  passes that changed it promise.
- `unchanged`: exit 0 and the output is the input model (onnxopt's metadata aside).
- `refusal`: exit 2, one `error:` line after nothing but onnxopt's log lines, no output file.
- `unclean`: exit 2 with other stderr (several `error:` lines, ORT's or Python's own messages).
- `not_runnable`: the installed onnxruntime cannot load or run the input model itself; the
  CLI must still exit 0 unchanged or exit 2 cleanly, else the outcome is one of the below.
- `traceback`: a Traceback on stderr, exit 1, a signal, or any other exit code or message.
- `timeout`: the CLI ran past the time limit.
- `invalid`: exit 0 but the output is missing, does not load, fails the checker or ORT, or
  the input model file was modified, or an output file was left after a refusal.
- `mismatch`: the output computes something else.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import resource
import signal
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

import onnx

from tests.corpus import compare
from tests.corpus.cases import write_data_folder
from tests.corpus.variants import prepare

FAILURES = ("traceback", "timeout", "unclean", "invalid", "mismatch", "harness_error")
ACCEPTED = ("ok", "unchanged", "refusal", "not_runnable")
METADATA_PREFIX = "onnxopt."
LOG_LINE = re.compile(r"(DEBUG|INFO|WARNING|ERROR|CRITICAL) [\w.]+: ")
"""How the CLI's log lines start (`logging` format set in onnxopt.cli)."""


@dataclass
class Outcome:
    case: str
    outcome: str
    exit_code: int | None = None
    detail: str = ""
    stderr: str = ""
    seconds: float = 0.0
    rolled_back: list[str] = field(default_factory=list)
    """Passes whose output the pass manager's gates rejected (not a failure: a safety net)."""
    noise: str = ""
    """The first stderr line that is neither onnxopt's log nor its `error:` line."""

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Settings:
    passes: str
    timeout: float = 120.0
    memory_mb: int = 6144


def evaluate(
    case_dir: Path, name: str, workdir: Path, settings: Settings, variant: str = ""
) -> Outcome:
    """Optimize the case (or its `variant`, see tests.corpus.variants) and judge the run."""
    start = time.monotonic()
    try:
        model_path, feeds = prepare(case_dir, variant, workdir)
    except Exception as exc:  # the corpus holds anything; the CLI must cope, the harness too
        if variant:
            return Outcome(name, "skipped", detail=f"variant not made: {exc}".splitlines()[0])
        model_path, feeds = case_dir / "model.onnx", []
    digest = _sha256(model_path)
    output = workdir / "out.onnx"
    report = workdir / "report.json"
    args = ["optimize", str(model_path), "--passes", settings.passes, "-o", str(output)]
    args += ["--report", str(report)]
    folder = write_data_folder(feeds, workdir / "data")
    data_arg = str(folder) if folder is not None else "random"
    args += ["--calib", data_arg, "--val", data_arg]
    code, stderr = _run_cli(args, workdir, settings)
    outcome = Outcome(name, "", code, stderr=stderr[-2000:])
    outcome.noise = next(
        (
            x
            for x in stderr.splitlines()
            if x.strip() and not LOG_LINE.match(x) and not x.startswith("error:")
        ),
        "",
    )
    outcome.outcome, outcome.detail = judge(code, stderr, model_path, output, report, feeds)
    left = sorted(p.name for p in workdir.iterdir() if p.name not in _expected_files(outcome))
    if left and outcome.outcome not in FAILURES:
        outcome.outcome, outcome.detail = "invalid", f"files left behind: {', '.join(left)}"
    if outcome.outcome in ("unchanged", "refusal"):
        why = input_runnable(model_path, feeds)
        if why is not None:
            outcome.outcome, outcome.detail = "not_runnable", f"{outcome.detail} [{why}]"
    if _sha256(model_path) != digest:
        outcome.outcome, outcome.detail = "invalid", "the input model file was modified"
    if code == 0 and report.exists():
        records = json.loads(report.read_text())["passes"]
        outcome.rolled_back = [r["name"] for r in records if r["status"] == "rolled back"]
    outcome.seconds = round(time.monotonic() - start, 3)
    return outcome


def _run_cli(args: list[str], workdir: Path, settings: Settings) -> tuple[int | None, str]:
    """Exit code (None on timeout, -N for a signal) and stderr of `onnxopt ARGS` in a child."""
    err_path = workdir / "stderr.txt"
    pid = os.fork()
    if pid == 0:  # child: become the console script
        code = 1
        try:
            _become_cli(workdir, err_path, settings)
            from onnxopt.cli import main

            main(args, prog_name="onnxopt")
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException:
            traceback.print_exc()
        finally:
            with contextlib.suppress(Exception):
                sys.stderr.flush()
                sys.stdout.flush()
            os._exit(code)
    code = _wait(pid, settings.timeout)
    return code, err_path.read_text(errors="replace") if err_path.exists() else ""


def _become_cli(workdir: Path, err_path: Path, settings: Settings) -> None:
    limit = settings.memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    os.chdir(workdir)
    out = os.open(workdir / "stdout.txt", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    err = os.open(err_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(out, 1)
    os.dup2(err, 2)


def _wait(pid: int, timeout: float) -> int | None:
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return None
        time.sleep(0.01)


def _expected_files(outcome: Outcome) -> set[str]:
    scratch = {"data", "stderr.txt", "stdout.txt", "variant.onnx"}
    if outcome.outcome in ("refusal", "not_runnable") and outcome.exit_code == 2:
        return scratch
    return scratch | {"out.onnx", "out.onnx.data", "report.json"}


def judge(
    code: int | None, stderr: str, model_path: Path, output: Path, report: Path, feeds
) -> tuple[str, str]:
    """(outcome, detail) of one CLI run: its exit code (None: timed out), its stderr, the
    input model, the output and report paths it was given, and the test data's feeds."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    if code is None:
        return "timeout", "killed at the time limit"
    if "Traceback" in stderr or code not in (0, 2):
        last = lines[-1] if lines else ""
        return "traceback", f"exit {code}: {last}"[:500]
    if code == 2:
        return _judge_refusal(lines, output)
    return _judge_output(model_path, output, report, feeds)


def _judge_refusal(lines: list[str], output: Path) -> tuple[str, str]:
    errors = [line for line in lines if line.startswith("error:")]
    if len(errors) != 1 or lines[-1] != errors[0]:
        return "unclean", "exit 2 without exactly one final 'error:' line: " + " | ".join(
            lines[-3:]
        )
    foreign = [line for line in lines[:-1] if not LOG_LINE.match(line)]
    if foreign:
        return "unclean", f"exit 2 with stderr lines other than onnxopt's log: {foreign[0]}"
    if output.exists():
        return "invalid", "an output file was left after a refusal"
    return "refusal", errors[0]


def _judge_output(model_path: Path, output: Path, report: Path, feeds) -> tuple[str, str]:
    if not output.exists():
        return "invalid", "exit 0 but no output file"
    original = onnx.load(str(model_path))
    try:
        produced = onnx.load(str(output))
    except Exception as exc:
        return "invalid", f"output does not load: {exc}".splitlines()[0]
    if _strip_metadata(produced) == original:
        return "unchanged", ""
    reference = _runnable(original, feeds)
    if isinstance(reference, str):
        return "invalid", f"model changed although onnxruntime cannot run it: {reference}"
    reason = _structure_error(original, produced)
    if reason:
        return "invalid", reason
    records = json.loads(report.read_text())["passes"]
    changed = [p["name"] for p in records if p["status"] == "changed"]
    if not feeds:
        return "ok", "+".join(changed) + " (not compared: the case has no test data)"
    tolerance = compare.tolerance_for(changed)
    try:
        got = compare.run_all(compare.session(str(output)), feeds)
    except Exception as exc:
        return "invalid", f"onnxruntime cannot run the output: {exc}".splitlines()[0][:300]
    for index, (ref, cand) in enumerate(zip(reference, got, strict=True)):
        for key, value in ref.items():
            if key not in cand:
                return "invalid", f"output '{key}' missing"
            reason = compare.mismatch(value, cand[key], tolerance, f"set {index} '{key}'")
            if reason:
                return "mismatch", f"{reason} ({'+'.join(changed)}: {tolerance.describe()})"
    return "ok", "+".join(changed)


def input_runnable(model_path: Path, feeds) -> str | None:
    """Why onnxruntime cannot load or run the input model on its test data, or None."""
    result = _runnable(onnx.load(str(model_path)), feeds)
    return result if isinstance(result, str) else None


def _runnable(model: onnx.ModelProto, feeds):
    try:
        return compare.run_all(compare.session(model), feeds)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}".splitlines()[0][:300]


def _structure_error(original: onnx.ModelProto, produced: onnx.ModelProto) -> str | None:
    level = _checker_level(original)
    if level and _checker_fails(produced, level):
        return f"output fails onnx.checker ({level}) which the input passes"
    if [i.name for i in _inputs(original)] != [i.name for i in _inputs(produced)]:
        return "graph inputs changed"
    if [o.name for o in original.graph.output] != [o.name for o in produced.graph.output]:
        return "graph outputs changed"
    return None


def _inputs(model: onnx.ModelProto):
    initializers = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in initializers]


def _checker_level(model: onnx.ModelProto) -> str | None:
    for level in ("full", "basic"):
        if not _checker_fails(model, level):
            return level
    return None


def _checker_fails(model: onnx.ModelProto, level: str) -> bool:
    try:
        onnx.checker.check_model(model, full_check=level == "full")
    except Exception:
        return True
    return False


def _strip_metadata(model: onnx.ModelProto) -> onnx.ModelProto:
    stripped = onnx.ModelProto()
    stripped.CopyFrom(model)
    kept = [p for p in stripped.metadata_props if not p.key.startswith(METADATA_PREFIX)]
    del stripped.metadata_props[:]
    stripped.metadata_props.extend(kept)
    return stripped


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
