"""Run `onnxopt optimize` on every model of the onnx backend test corpus and count outcomes.

    python -m tests.corpus.run_corpus --jobs 2 --summary corpus.json
    python -m tests.corpus.run_corpus --filter 'node/test_conv*' --show all

Each model, and each of its variants (`tests.corpus.variants`: weights frozen into
initializers, old opsets converted to 13), is judged in its own forked process (see
`tests.corpus.worker`); `--passes` defaults to every registered pass in pipeline order
(cleanup, prune, share, quant; not distill, see LEFT_OUT). Exit status 1 when any run ends in
traceback, timeout, unclean refusal, invalid output or mismatch.
"""

from __future__ import annotations

import argparse
import fnmatch
import gc
import json
import os
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path

PIPELINE_ORDER = ("cleanup", "prune", "share", "quant")
"""Known passes in the order they compose; a pass registered later but not listed runs last."""

LEFT_OUT = ("distill",)
"""Not run by default: each forked worker would import torch and train (16+ minutes more on 2
cores); `--passes` can name it. Its op table is checked against the backend node tests in
tests/training."""


def default_passes() -> str:
    from onnxopt.api import list_passes

    names = [entry["name"] for entry in list_passes()]
    known = [n for n in PIPELINE_ORDER if n in names]
    return ",".join(known + sorted(set(names) - set(known) - set(LEFT_OUT)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.corpus.run_corpus", description=__doc__)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--passes", default=None, help="pipeline (default: every pass)")
    parser.add_argument("--filter", action="append", default=[], help="glob on collection/name")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per model")
    parser.add_argument("--memory-mb", type=int, default=6144, help="address space per model")
    parser.add_argument("--corpus", type=Path, default=None, help="corpus folder (default: fetch)")
    parser.add_argument("--summary", type=Path, default=None, help="write the JSON summary here")
    parser.add_argument(
        "--variants",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run the frozen-weights and opset-13 variants (tests.corpus.variants)",
    )
    parser.add_argument("--show", choices=("failures", "all", "none"), default="failures")
    args = parser.parse_args(argv)

    _preimport()
    from onnxopt.infra.registry import pass_names
    from tests.corpus.fetch import corpus_dir
    from tests.corpus.worker import FAILURES, Settings

    pass_names()
    root = args.corpus or corpus_dir()
    cases = corpus_cases(root, args.variants)
    if args.filter:
        cases = [c for c in cases if any(fnmatch.fnmatchcase(c[1], p) for p in args.filter)]
    settings = Settings(args.passes or default_passes(), args.timeout, args.memory_mb)
    gc.freeze()  # forked children then do not copy the parent's objects when they collect
    start = time.monotonic()
    results = run_cases(cases, settings, max(1, args.jobs))
    wall = time.monotonic() - start
    base = [r for r in results if "@" not in r["case"]]
    variants = [r for r in results if "@" in r["case"]]
    summary = {
        "corpus": str(root),
        "passes": settings.passes,
        "jobs": args.jobs,
        "wall_seconds": round(wall, 1),
        "models": len(base),
        "counts": _counts(base),
        "variant_runs": len(variants),
        "variant_counts": _counts(variants),
        "stderr_noise": sum(1 for r in results if r.get("noise")),
        "rolled_back": dict(
            sorted(Counter(n for r in results for n in r.get("rolled_back", ())).items())
        ),
        "results": sorted(results, key=lambda r: r["case"]),
    }
    if args.summary:
        args.summary.write_text(json.dumps(summary, indent=1) + "\n")
    _print(summary, args.show, FAILURES)
    return 1 if any(r["outcome"] in FAILURES for r in results) else 0


def _counts(results: list[dict]) -> dict[str, int]:
    return dict(sorted(Counter(r["outcome"] for r in results).items()))


def _preimport() -> None:
    """Import once here what every forked child needs, as lazy imports would repeat per model.

    onnxruntime.tools imports torch when torch is installed, only for helpers onnxopt never
    uses; hiding torch keeps this process small, so that forking it stays cheap.
    """
    import importlib.util

    find_spec = importlib.util.find_spec
    importlib.util.find_spec = lambda name, *a: None if name == "torch" else find_spec(name, *a)
    try:
        import onnxruntime.tools.symbolic_shape_infer  # noqa: F401
    finally:
        importlib.util.find_spec = find_spec
    import onnxopt.cli  # noqa: F401


def corpus_cases(root: Path, with_variants: bool) -> list[tuple[Path, str, str]]:
    """(case folder, name, variant) for every model, and its variants when asked for."""
    from tests.corpus.fetch import model_dirs
    from tests.corpus.variants import variants_of

    cases = []
    for folder in model_dirs(root):
        name = f"{folder.parent.name}/{folder.name}"
        cases.append((folder, name, ""))
        if with_variants:
            try:
                found = variants_of(folder / "model.onnx")
            except Exception:  # an unreadable model has no variants; the CLI run judges it
                found = []
            cases.extend((folder, f"{name}@{v}", v) for v in found)
    return cases


def run_cases(cases: list[tuple[Path, str, str]], settings, jobs: int) -> list[dict]:
    """Judge every case in a forked child, `jobs` at a time; a child past the limit is killed."""
    pending = list(reversed(cases))
    running: dict[int, tuple[str, Path, float]] = {}
    results: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="onnxopt-corpus-") as scratch:
        while pending or running:
            while pending and len(running) < jobs:
                case_dir, name, variant = pending.pop()
                workdir = Path(scratch) / name.replace("/", "__")
                workdir.mkdir(parents=True)
                running[_spawn(case_dir, name, variant, workdir, settings)] = (
                    name,
                    workdir,
                    time.monotonic(),
                )
            results.extend(_reap(running, settings.timeout + 60))
            time.sleep(0.005)
    return results


def _spawn(case_dir: Path, name: str, variant: str, workdir: Path, settings) -> int:
    pid = os.fork()
    if pid:
        return pid
    os.setpgid(0, 0)
    try:
        from tests.corpus.worker import evaluate

        result = evaluate(case_dir, name, workdir, settings, variant).to_dict()
    except BaseException:
        result = {"case": name, "outcome": "harness_error", "detail": traceback.format_exc()}
    (workdir / "result.json").write_text(json.dumps(result))
    os._exit(0)


def _reap(running: dict, limit: float) -> list[dict]:
    done = []
    for pid, (name, workdir, started) in list(running.items()):
        finished, _ = os.waitpid(pid, os.WNOHANG)
        if not finished and time.monotonic() - started < limit:
            continue
        result_file = workdir / "result.json"
        if not finished:
            os.killpg(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            done.append({"case": name, "outcome": "timeout", "detail": f"judge ran {limit:g}s"})
        elif result_file.exists():
            done.append(json.loads(result_file.read_text()))
        else:
            done.append({"case": name, "outcome": "harness_error", "detail": "judge died"})
        del running[pid]
        shutil.rmtree(workdir, ignore_errors=True)
    return done


def _print(summary: dict, show: str, failures: tuple[str, ...]) -> None:
    if show != "none":
        for r in summary["results"]:
            if show == "all" or r["outcome"] in failures:
                print(f"{r['outcome']:13} {r['case']}: {r.get('detail', '')}".rstrip())
    print(f"passes: {summary['passes']}")
    print(f"{summary['wall_seconds']}s with {summary['jobs']} jobs")
    print(f"{summary['models']} models:")
    for outcome, count in summary["counts"].items():
        print(f"  {outcome:13} {count}")
    print(f"{summary['variant_runs']} variants (frozen weights, opset 13):")
    for outcome, count in summary["variant_counts"].items():
        print(f"  {outcome:13} {count}")
    if summary["stderr_noise"]:
        print(f"  ({summary['stderr_noise']} runs printed stderr lines other than onnxopt's)")
    for name, count in summary["rolled_back"].items():
        print(f"  (pass '{name}' rolled back by the gates on {count} models)")


if __name__ == "__main__":
    sys.exit(main())
