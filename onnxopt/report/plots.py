"""Pictures of results: the latency distributions of a benchmark, side by side.

matplotlib is an optional extra (`pip install 'onnxopt[plot]'`), imported only when a picture
is drawn; `require_matplotlib` lets a command refuse before any work. Figures are drawn on
matplotlib's Agg canvas (no pyplot, no display, no global state) and returned as bytes, so the
caller writes the file atomically.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from onnxopt.errors import InputError
from onnxopt.runtime.bench import BenchReport, ModelBench

INSTALL = "pip install 'onnxopt[plot]'"
FORMATS = {".png": "png", ".svg": "svg", ".pdf": "pdf"}
LABEL_CHARS = 28
LOG_SCALE_SPAN = 20.0
"""Latency axis goes logarithmic when the slowest median is this many times the fastest."""
CLIP_ABOVE_P95 = 1.5
"""On a linear axis, the chart ends at this multiple of the largest 95th percentile: a few
rounds stalled by other load would otherwise flatten every box (they are counted instead)."""


def require_matplotlib() -> None:
    """InputError naming the install command when matplotlib cannot be imported."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise InputError(f"--plot needs matplotlib, which is not installed: {INSTALL}") from None


def plot_format(path: str | Path) -> str:
    """The image format of `path` from its suffix (png, svg, pdf); InputError otherwise."""
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        valid = ", ".join(FORMATS)
        raise InputError(f"--plot {path}: give a file name ending in {valid}")
    return FORMATS[suffix]


def latency_figure(report: BenchReport, image_format: str = "png") -> bytes:
    """Box plots of each model's per-round latency (ms) with every round drawn over its box;
    each label gives the model, its median, and its median speed-up over the first model."""
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    models = report.models
    samples = [m.samples_ms for m in models]
    if not all(samples):
        raise InputError("no per-round timings to plot")
    figure = Figure(figsize=(max(5.0, 1.9 * len(models) + 2.2), 4.8), dpi=120)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    positions = list(range(1, len(models) + 1))
    axes.boxplot(
        samples,
        positions=positions,
        widths=0.5,
        whis=(5, 95),
        showfliers=False,
        medianprops={"color": "black", "linewidth": 2},
        boxprops={"linewidth": 1.2},
    )
    for position, values, color in zip(positions, samples, _colors(len(models)), strict=True):
        offsets = _jitter(len(values), position)
        axes.scatter(offsets, values, s=7, alpha=0.35, color=color, linewidths=0, zorder=3)
    medians = [m.latency_ms["p50"] for m in models]
    hidden = [0] * len(models)
    if max(medians) > LOG_SCALE_SPAN * min(medians):
        axes.set_yscale("log")
    else:
        top = CLIP_ABOVE_P95 * max(float(np.percentile(values, 95)) for values in samples)
        hidden = [sum(value > top for value in values) for values in samples]
        axes.set_ylim(0, top)
    labels = [_label(i, m, hidden[i]) for i, m in enumerate(models)]
    axes.set_xticks(positions, labels, fontsize=9)
    axes.set_ylabel("latency per run (ms)")
    axes.grid(axis="y", alpha=0.3)
    axes.set_title(_title(report), fontsize=10)
    figure.text(
        0.01,
        0.01,
        "box: quartiles, whiskers: 5th-95th percentile, dots: every round\n"
        "speed-up: median of the per-round latency ratios to model 1 (rounds interleaved)",
        fontsize=7,
        color="0.35",
    )
    figure.tight_layout(rect=(0, 0.06, 1, 1))
    buffer = io.BytesIO()
    figure.savefig(buffer, format=image_format)
    return buffer.getvalue()


def _label(index: int, model: ModelBench, hidden: int) -> str:
    name = model.name
    if len(name) > LABEL_CHARS:
        name = name[: LABEL_CHARS - 3] + "..."
    median = model.latency_ms["p50"]
    if index == 0:
        versus = "baseline"
    else:
        speedup = 1.0 / model.ratio
        versus = f"{speedup:.2f}x faster" if speedup >= 1 else f"{1 / speedup:.2f}x slower"
    label = f"{index + 1}. {name}\np50 {_ms(median)} ms\n{versus}"
    if hidden:
        label += f"\n({hidden} slow round{'s' if hidden > 1 else ''} above the chart)"
    return label


def _title(report: BenchReport) -> str:
    settings, env = report.settings, report.environment
    first = report.models[0]
    head = f"Latency on {env['execution_provider']}, batch {first.batch}, {first.runs} rounds"
    if len(report.models) < 2:
        return head
    best = max(report.models[1:], key=lambda m: 1.0 / m.ratio)
    threads = settings.get("threads") or "default"
    return (
        f"{head} (threads: {threads})\n"
        f"{best.name}: {1.0 / best.ratio:.2f}x the speed of {first.name} (median per round)"
    )


def _ms(value: float) -> str:
    return f"{value:.3g}" if value < 100 else f"{value:.0f}"


def _jitter(count: int, center: float) -> list[float]:
    """Deterministic horizontal spread of `count` dots around `center` (no RNG)."""
    if count == 1:
        return [center]
    return [center - 0.18 + 0.36 * ((i * 0.618034) % 1.0) for i in range(count)]


def _colors(count: int) -> list[str]:
    palette = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3"]
    return [palette[i % len(palette)] for i in range(count)]
