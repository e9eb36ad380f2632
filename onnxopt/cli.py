"""The `onnxopt` command line: parse arguments, call `onnxopt.api`, print. No logic here."""

from __future__ import annotations

import json
import logging

import click

from onnxopt import __version__, api
from onnxopt.cli_support import (
    ExitCodeGroup,
    interrupt_on_sigterm,
    provider_option,
    seed_option,
    setup_logging,
    verbosity_options,
)
from onnxopt.report.progress import progress_bar, terminal_progress
from onnxopt.report.run import passes_lines, run_blocks
from onnxopt.report.tables import (
    Block,
    Table,
    bench_blocks,
    fidelity_blocks,
    summary_blocks,
    to_json,
)
from onnxopt.report.terminal import print_table
from onnxopt.runtime.memory import return_large_blocks

log = logging.getLogger("onnxopt")


@click.group(cls=ExitCodeGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="onnxopt")
@click.option("-v", "--verbose", count=True, help="More logging (-vv: debug, tracebacks).")
@click.option("-q", "--quiet", is_flag=True, help="Only errors on stderr, no table.")
@click.pass_context
def main(ctx: click.Context, verbose: int, quiet: bool) -> None:
    """onnxopt: make ONNX models smaller and faster with measured fidelity.

    -q and -v work before or after the command name.
    """
    setup_logging(verbose, quiet)
    interrupt_on_sigterm()
    return_large_blocks()
    ctx.obj = {"quiet": quiet, "verbose": verbose}


_DATA_FORMS = (
    "a .npz whose keys are the model's input names with samples stacked on axis 0 (a .npy "
    "for a one-input model); a .npz/.npy holding exactly one sample of every input (scalars "
    "and inputs of different leading dims included); a folder of such .npz/.npy files, one "
    "sample each; a folder of images (jpg/png/bmp/webp; grey or RGB by the model's channels, "
    "resized and normalized as --preprocess says, else as the model's metadata "
    "'onnxopt.preprocess' says, else ImageNet's defaults); or 'random' (seeded; fidelity "
    "meaningless)."
)


_preprocess_option = click.option(
    "--preprocess",
    default=None,
    help="How images become inputs, key=value,... (resize, crop, interpolation, scale, mean, "
    "std, layout, order); default: what the model declares in its metadata "
    "'onnxopt.preprocess', else ImageNet's.",
)


@main.command()
@click.argument("model", type=click.Path(dir_okay=False, path_type=str))
@click.option(
    "-o",
    "--output",
    default=None,
    type=click.Path(path_type=str),
    help="Where to write the optimized model (never the input; default: MODEL.opt.onnx "
    "beside the input, refused if it exists unless --force).",
)
@click.option("--force", is_flag=True, help="Overwrite an existing default output.")
@click.option(
    "--passes",
    "passes",
    default=None,
    help=f"Pipeline text, e.g. 'prune,quant' or 'cleanup{{fold_bn=false}}' "
    f"(default: {api.DEFAULT_PIPELINE}; `onnxopt passes` lists them).",
)
@click.option(
    "--config",
    type=click.Path(path_type=str),
    default=None,
    help="Pipeline as YAML/JSON instead of --passes.",
)
@click.option("--calib", default=None, help="Calibration data the passes fit on: " + _DATA_FORMS)
@click.option(
    "--val",
    default=None,
    help="Validation data for the fidelity checks and gates; passes never see it (default: a "
    "holdout of --calib, else seeded random inputs). Same forms as --calib.",
)
@_preprocess_option
@click.option(
    "--holdout",
    type=click.FloatRange(0.0, 0.5),
    default=api.HOLDOUT_FRACTION,
    show_default=True,
    help="Without --val: the share of --calib samples (32 to 256 of them) set aside for the "
    "fidelity checks, which no pass fits on; 0 fits on all and labels fidelity in-sample.",
)
@click.option(
    "--report",
    type=click.Path(path_type=str),
    default=None,
    help="Write the report here: Markdown if the path ends in .md (CI job summaries), else JSON.",
)
@click.option(
    "--bench",
    is_flag=True,
    help="Time the input and the output interleaved; the speed-up goes in the summary.",
)
@click.option(
    "--min-top1", type=float, default=None, help="Gate: top-1 agreement (0..1) with the input."
)
@click.option("--min-cosine", type=float, default=None, help="Gate: cosine with the input.")
@click.option(
    "--min-speedup", type=float, default=None, help="Gate: measured speed-up (implies --bench)."
)
@click.option(
    "--max-size",
    default=None,
    metavar="RATIO|SIZE",
    help="Gate: output size, a ratio of the input's (0.5) or a size (3MB, 512KiB; KB/MB/GB "
    "are powers of 1000, KiB/MiB/GiB of 1024).",
)
@click.option(
    "--keep-failed", is_flag=True, help="Write the model even when a gate is missed (exit 1)."
)
@provider_option("ONNX Runtime execution provider for checks.")
@seed_option("Seed for every random choice; same seed, same output bytes.")
@click.option(
    "--strict",
    is_flag=True,
    help="Abort (exit 1) instead of rolling back a pass that fails its checks.",
)
@verbosity_options
@click.pass_context
def optimize(
    ctx,
    model,
    output,
    force,
    passes,
    config,
    calib,
    val,
    preprocess,
    holdout,
    report,
    bench,
    min_top1,
    min_cosine,
    min_speedup,
    max_size,
    keep_failed,
    provider,
    seed,
    strict,
):
    """Run a pipeline of passes on MODEL and write the result (default MODEL.opt.onnx).

    Fidelity gates use --val, else a holdout of --calib. A missed gate (--min-top1,
    --min-cosine, --min-speedup, --max-size) prints one line naming it, writes no model
    (unless --keep-failed) and exits 1.

    \b
    Examples:
      onnxopt optimize model.onnx --passes prune,quant --calib images/
      onnxopt optimize model.onnx --passes quant --calib calib.npz --bench --min-top1 0.99
      onnxopt optimize model.onnx --passes 'cleanup{fold_limit_mb=8}' -o o.onnx --report r.md
      onnxopt optimize model.onnx --config pipeline.yaml --val val.npz --report r.json -q
    """
    with terminal_progress(enabled=not ctx.obj["quiet"]) as progress:
        result = api.optimize(
            model,
            output if output is not None else api.default_output(model, force=force),
            passes=passes,
            config=config,
            calib=calib,
            val=val,
            preprocess=preprocess,
            holdout=holdout,
            provider=provider,
            seed=seed,
            strict=strict,
            report=report,
            bench=bench,
            min_top1=min_top1,
            min_cosine=min_cosine,
            min_speedup=min_speedup,
            max_size=max_size,
            keep_failed=keep_failed,
            progress=progress,
        )
    if not ctx.obj["quiet"]:
        _print_blocks(run_blocks(result.report))
    result.raise_for_failures()


@main.command("passes")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@verbosity_options
def passes_command(as_json: bool) -> None:
    """List the registered passes with their options, defaults and docs.

    \b
    Examples:
      onnxopt passes
      onnxopt passes --json
    """
    entries = api.list_passes()
    if as_json:
        print(json.dumps(entries, indent=2, default=str))
        return
    _print_blocks(passes_lines(entries))


_SHAPE_HELP = "Shape of a dynamic input, e.g. input:1x3x224x224 (repeatable)."
_DATA_HELP = "Input data: " + _DATA_FORMS


def _print_blocks(blocks: list[Block]) -> None:
    for block in blocks:
        if isinstance(block, Table):
            print_table(block.title, block.columns, block.rows)
        else:
            print(block)


@main.command("inspect")
@click.argument("model", type=click.Path(dir_okay=False, path_type=str))
@click.option("--shape", "shapes", multiple=True, metavar="NAME:DIMS", help=_SHAPE_HELP)
@click.option("--top", type=int, default=10, show_default=True, help="Layers listed by MACs.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output on stdout.")
@verbosity_options
@click.pass_context
def inspect_command(ctx, model, shapes, top, as_json):
    """Describe MODEL: inputs/outputs, opsets, op types, parameters, MACs per layer.

    Dynamic dims stay symbolic in the MAC counts unless --shape fixes them.

    \b
    Examples:
      onnxopt inspect model.onnx
      onnxopt inspect model.onnx --shape input:1x3x224x224 --top 20
      onnxopt inspect model.onnx --json > summary.json
    """
    summary = api.inspect(model, shapes=shapes)
    if as_json:
        print(to_json(summary.to_dict()))
    elif not ctx.obj["quiet"]:
        _print_blocks(summary_blocks(summary, top))


@main.command("validate")
@click.argument("reference", type=click.Path(dir_okay=False, path_type=str))
@click.argument("candidate", type=click.Path(dir_okay=False, path_type=str))
@click.option("--data", required=True, help=_DATA_HELP)
@_preprocess_option
@click.option("--batch", type=int, default=None, help="Batch size for a dynamic batch dim.")
@click.option("--shape", "shapes", multiple=True, metavar="NAME:DIMS", help=_SHAPE_HELP)
@click.option("--json", "json_path", type=click.Path(path_type=str), help="Write JSON here.")
@click.option("--min-cosine", type=float, default=None, help="Exit 1 if a cosine is lower.")
@click.option(
    "--min-top1", type=float, default=None, help="Exit 1 if top-1 agreement (0..1) is lower."
)
@click.option("--max-abs", type=float, default=None, help="Exit 1 if a max abs error is higher.")
@provider_option("ONNX Runtime execution provider.")
@seed_option("Seed for --data random.")
@verbosity_options
@click.pass_context
def validate_command(
    ctx,
    reference,
    candidate,
    data,
    preprocess,
    batch,
    shapes,
    json_path,
    min_cosine,
    min_top1,
    max_abs,
    provider,
    seed,
):
    """Compare CANDIDATE with REFERENCE on the same inputs: max/mean abs error, cosine, SNR,
    top-1/top-5 agreement for logits. Exits 1 when a threshold is missed.

    \b
    Examples:
      onnxopt validate model.onnx model.opt.onnx --data val.npz
      onnxopt validate model.onnx model.int8.onnx --data images/ --min-cosine 0.99 --min-top1 0.98
      onnxopt validate a.onnx b.onnx --data random --shape input:4x3x224x224 --json fidelity.json
    """
    result = api.validate(
        reference,
        candidate,
        data,
        min_cosine=min_cosine,
        min_top1=min_top1,
        max_abs=max_abs,
        provider=provider,
        batch_size=batch,
        shapes=shapes,
        preprocess=preprocess,
        seed=seed,
        report=json_path,
    )
    if not ctx.obj["quiet"]:
        _print_blocks(fidelity_blocks(result, reference, candidate))
    result.raise_for_failures()


@main.command("benchmark")
@click.argument("models", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=str))
@provider_option("ONNX Runtime execution provider (cuda: never falls back to CPU).")
@click.option("--batch", type=int, default=None, help="Value of a dynamic batch dim (default 1).")
@click.option("--threads", type=int, default=None, help="Intra-op threads (default: ORT's).")
@click.option("--warmup", type=int, default=10, show_default=True, help="Untimed runs per model.")
@click.option("--runs", type=int, default=None, help="Timed rounds (default 100).")
@click.option("--seconds", type=float, default=None, help="Time budget instead of --runs.")
@click.option("--data", default=None, help="Inputs from data (first batch) instead of random.")
@click.option("--shape", "shapes", multiple=True, metavar="NAME:DIMS", help=_SHAPE_HELP)
@click.option("--json", "json_path", type=click.Path(path_type=str), help="Write JSON here.")
@click.option("--csv", "csv_path", type=click.Path(path_type=str), help="Write CSV here.")
@click.option(
    "--plot",
    type=click.Path(path_type=str),
    help="Draw the latency distributions side by side here (.png, .svg or .pdf; needs "
    "matplotlib: pip install 'onnxopt[plot]').",
)
@click.option("--no-memory", is_flag=True, help="Skip the memory probe (a child per model).")
@seed_option("Seed for random inputs.")
@verbosity_options
@click.pass_context
def benchmark_command(
    ctx,
    models,
    provider,
    batch,
    threads,
    warmup,
    runs,
    seconds,
    data,
    shapes,
    json_path,
    csv_path,
    plot,
    no_memory,
    seed,
):
    """Time MODELS side by side (interleaved round-robin): latency p50/p90/p99/mean,
    throughput, session creation time and memory, file size, MACs; ratios to the first model.

    \b
    Examples:
      onnxopt benchmark model.onnx model.opt.onnx
      onnxopt benchmark model.onnx --batch 8 --threads 4 --seconds 20 --json bench.json
      onnxopt benchmark a.onnx b.onnx --provider cuda --shape input:1x3x224x224 --csv bench.csv
      onnxopt benchmark model.onnx model.opt.onnx --plot latency.png
    """
    with progress_bar("benchmarking") as progress:
        result = api.benchmark(
            list(models),
            provider=provider,
            batch=batch,
            threads=threads,
            warmup=warmup,
            runs=runs,
            seconds=seconds,
            data=data,
            shapes=shapes,
            memory=not no_memory,
            seed=seed,
            json_path=json_path,
            csv_path=csv_path,
            plot=plot,
            progress=None if ctx.obj["quiet"] else progress,
        )
    if not ctx.obj["quiet"]:
        _print_blocks(bench_blocks(result))
