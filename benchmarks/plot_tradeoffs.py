"""Fidelity versus size and versus speed per pipeline on MobileNetV2, drawn from the numbers
already recorded in benchmarks/RESULTS.md (nothing is re-run).

Sources (MobileNetV2 tables): `bench_generalization` (1024 calibration crops; top-1 agreement
with fp32 on new crops of the calibration photos and on crops of other photos; speed-up and
file size ratio), `bench_distill` (the same data; its `distill` rows that changed the model;
no file size recorded) and `bench_share` (128 calibration crops, so drawn with its own
marker). Rows whose pass the tool rolled back, and `distill` rows where distill changed
nothing, are left out: they measure a model drawn elsewhere. The `prune` and `quant` sections
predate out-of-sample measurement and are not drawn.

    python -m benchmarks.plot_tradeoffs   # benchmarks/tradeoff_*.png and a RESULTS.md section
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from benchmarks.results_file import RESULTS, write_section

HERE = Path(__file__).resolve().parent
SIZE_PNG = HERE / "tradeoff_size.png"
SPEED_PNG = HERE / "tradeoff_speed.png"
BEGIN, END = "<!-- plot_tradeoffs:begin -->", "<!-- plot_tradeoffs:end -->"
MODEL = "MobileNetV2"
SETS = (("new", "new crops of the calibration photos"), ("other", "crops of other photos"))


@dataclass(frozen=True)
class Point:
    """One pipeline's recorded result; None where its table has no such column."""

    pipeline: str
    source: str
    new_top1: float
    other_top1: float
    speedup: float | None
    size_ratio: float | None


def section(text: str, name: str) -> str:
    """The text between a benchmark script's begin/end markers in RESULTS.md."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    if begin not in text or end not in text:
        raise SystemExit(f"RESULTS.md has no {name} section")
    return text.split(begin, 1)[1].split(end, 1)[0]


def table(text: str, heading: str | None = None) -> list[dict[str, str]]:
    """The first Markdown table after `### heading` (or the first table in `text`)."""
    if heading is not None:
        marker = f"### {heading}\n"
        if marker not in text:
            raise SystemExit(f"no '### {heading}' table in the section")
        text = text.split(marker, 1)[1]
    lines = text.splitlines()
    first = next((i for i, line in enumerate(lines) if line.startswith("|")), None)
    if first is None:
        raise SystemExit("no table found")
    block = []
    for line in lines[first:]:
        if not line.startswith("|"):
            break  # the table ends at its first non-table line
        block.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    header, rows = block[0], []
    for cells in block[2:]:  # block[1] is the |---|---:| rule
        rows.append(dict(zip(header, cells, strict=True)))
    return rows


def number(cell: str) -> float:
    """90.2 % -> 90.2, 1.77x -> 1.77, 0.275 -> 0.275."""
    match = re.fullmatch(r"\s*([0-9.]+)\s*(%|x|MB)?\s*", cell)
    if match is None:
        raise ValueError(f"not a recorded number: {cell!r}")
    return float(match.group(1))


def pipeline_of(cell: str) -> str:
    return cell.strip().strip("`")


def recorded_points(text: str) -> list[Point]:
    points = []
    for row in table(section(text, "bench_generalization"), MODEL):
        if "rolled back" in row["status"]:
            continue
        points.append(
            Point(
                pipeline_of(row["pipeline"]),
                "bench_generalization",
                number(row["new crops top-1"]),
                number(row["other photos top-1"]),
                number(row["speed-up"]),
                number(row["size ratio"]),
            )
        )
    for row in table(section(text, "bench_distill"), MODEL):
        pipeline = pipeline_of(row["pipeline"])
        if "distill" not in pipeline or "distill unchanged" in row["status"]:
            continue
        points.append(
            Point(
                pipeline,
                "bench_distill",
                number(row["new crops top-1"]),
                number(row["other photos top-1"]),
                number(row["speed-up"]),
                None,
            )
        )
    for row in table(section(text, "bench_share")):
        points.append(
            Point(
                pipeline_of(row["pipeline"]),
                "bench_share",
                number(row["top-1 new crops"]),
                number(row["top-1 other photos"]),
                1.0 / number(row["latency vs fp32"]),
                1.0 / number(row["smaller"]),
            )
        )
    return points


MARKERS = {"bench_generalization": "o", "bench_distill": "^", "bench_share": "s"}
SOURCE_TEXT = {
    "bench_generalization": "bench_generalization (1024 calibration crops)",
    "bench_distill": "bench_distill (same data, distill changed the model)",
    "bench_share": "bench_share (128 calibration crops)",
}
FAMILY_COLORS = {
    "quant": "#4c72b0",
    "share": "#dd8452",
    "prune": "#55a868",
    "prune,quant": "#8172b3",
    "share,quant": "#937860",
    "prune,share,quant": "#c44e52",
    "quant,distill": "#da8bc3",
}
LABEL_OFFSETS = ((6, 4), (6, -12), (-14, 4), (-14, -12), (6, 14), (-14, 14), (16, -4), (-24, -4))
"""Candidate places (points) for a point's number, tried in order until one is clear."""
CLEAR_PIXELS = 11.0


def family(pipeline: str) -> str:
    """The pass names of a pipeline without their options: 'prune{ratio=0.3},quant' ->
    'prune,quant'."""
    return ",".join(re.sub(r"\{[^}]*\}", "", pipeline).split(","))


def draw(points: list[Point], axis: str, path: Path) -> None:
    """Two panels (new crops, other photos) of top-1 agreement against `axis` ('size' or
    'speed'); each point carries its number in the key on the right (the same numbers in both
    figures), colour by the passes of the pipeline, marker by the table it comes from."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    numbered = list(enumerate(points, start=1))
    shown = [(n, p) for n, p in numbered if _x(p, axis) is not None]
    figure = Figure(figsize=(13.5, 6.2), dpi=110)
    FigureCanvasAgg(figure)
    grid = figure.add_gridspec(1, 3, width_ratios=(1, 1, 0.62))
    panels = []
    for column, (key, title) in enumerate(SETS):
        axes = figure.add_subplot(grid[0, column])
        xs = [_x(p, axis) for _, p in shown] + [1.0]
        ys = [(p.new_top1 if key == "new" else p.other_top1) for _, p in shown] + [100.0]
        for (_, point), x, y in zip(shown, xs, ys, strict=False):
            axes.scatter(
                x,
                y,
                s=70,
                marker=MARKERS[point.source],
                zorder=3,
                color=FAMILY_COLORS.get(family(point.pipeline), "0.6"),
                edgecolors="black",
                linewidths=0.6,
            )
        axes.scatter(1.0, 100.0, s=130, marker="*", color="black", zorder=3)
        _axes_style(axes, axis, xs, f"{MODEL}: {title}")
        panels.append((axes, xs, ys, [str(n) for n, _ in shown] + ["fp32"]))
    _key(figure.add_subplot(grid[0, 2]), numbered, {n for n, _ in shown})
    what = "file size" if axis == "size" else "measured speed"
    figure.suptitle(
        f"{MODEL}: top-1 agreement with fp32 versus {what}, per pipeline "
        "(numbers recorded in benchmarks/RESULTS.md)",
        fontsize=11,
    )
    figure.tight_layout()
    for axes, xs, ys, labels in panels:  # after the layout: placement works in pixels
        _place_labels(axes, xs, ys, labels)
    figure.savefig(path, format="png")


def _x(point: Point, axis: str) -> float | None:
    return point.size_ratio if axis == "size" else point.speedup


def _axes_style(axes, axis: str, xs: list[float], title: str) -> None:
    if axis == "size":
        axes.set_xscale("log")
        axes.set_xlim(min(xs) * 0.85, 1.25)
        axes.set_xticks([0.1, 0.2, 0.3, 0.5, 1.0], ["0.1", "0.2", "0.3", "0.5", "1"])
        axes.set_xlabel("file size / fp32's (log scale; left is smaller)")
    else:
        axes.set_xlim(0.85, max(xs) + 0.25)
        axes.set_xlabel("speed-up over fp32 (measured, interleaved; right is faster)")
    axes.set_ylim(-5, 106)
    axes.set_ylabel("top-1 agreement with fp32 (%)")
    axes.set_title(title, fontsize=10)
    axes.grid(alpha=0.3)


def _place_labels(axes, xs: list[float], ys: list[float], labels: list[str]) -> None:
    """Write each label at the first candidate offset that keeps it clear of every point and
    of the labels already written (in display pixels); else at the first offset."""
    figure = axes.figure
    to_pixels = axes.transData.transform
    scale = figure.dpi / 72.0
    anchors = [to_pixels((x, y)) for x, y in zip(xs, ys, strict=True)]
    taken = [tuple(a) for a in anchors]
    for (x, y), anchor, label in zip(zip(xs, ys, strict=True), anchors, labels, strict=True):
        chosen = LABEL_OFFSETS[0]
        for dx, dy in LABEL_OFFSETS:
            center = (anchor[0] + (dx + 3) * scale, anchor[1] + (dy + 3) * scale)
            if all(_far(center, other) for other in taken):
                chosen = (dx, dy)
                break
        taken.append((anchor[0] + (chosen[0] + 3) * scale, anchor[1] + (chosen[1] + 3) * scale))
        axes.annotate(
            label, (x, y), xytext=chosen, textcoords="offset points", fontsize=8, zorder=4
        )


def _far(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return abs(a[0] - b[0]) > CLEAR_PIXELS * 1.3 or abs(a[1] - b[1]) > CLEAR_PIXELS


def _key(axes, numbered: list[tuple[int, Point]], shown: set[int]) -> None:
    from matplotlib.lines import Line2D

    axes.axis("off")
    handles = [
        Line2D(
            [],
            [],
            marker=MARKERS[p.source],
            linestyle="",
            markersize=7,
            color=FAMILY_COLORS.get(family(p.pipeline), "0.6"),
            markeredgecolor="black",
            label=f"{n}. {_short(p.pipeline)}" + ("" if n in shown else " (no size)"),
        )
        for n, p in numbered
    ]
    handles += [
        Line2D(
            [],
            [],
            marker=MARKERS[s],
            color="white",
            markeredgecolor="black",
            linestyle="",
            markersize=7,
            label=text,
        )
        for s, text in SOURCE_TEXT.items()
    ]
    axes.legend(handles=handles, loc="center left", fontsize=8, frameon=False)


def _short(pipeline: str, limit: int = 46) -> str:
    return pipeline if len(pipeline) <= limit else pipeline[: limit - 3] + "..."


def results_text(points: list[Point]) -> str:
    sources = ", ".join(sorted({p.source for p in points}))
    return (
        "## Trade-offs: fidelity versus size and speed (MobileNetV2)\n\n"
        "`python -m benchmarks.plot_tradeoffs` draws the MobileNetV2 rows recorded above "
        f"({sources}; nothing re-run): top-1 agreement with fp32 on new crops of the "
        "calibration photos and on crops of other photos, against the file size ratio and "
        "against the measured speed-up. Rolled-back rows and distill rows that changed nothing "
        "are left out; bench_share calibrated on 128 crops, the others on 1024, so its points "
        "have their own marker. `bench_distill` records no file size: its points are on the "
        "speed plot only. What they show: the `quant` rows sit at 1.7–2.1x the speed and "
        "0.275 of the size with 85–93 % agreement on both sets; `share` at one sixth of the "
        "size keeps about fp32's speed, and its agreement falls further on other photos than "
        "on new crops; every `prune{ratio=0.3}` row, with or without `quant`, keeps 73–78 % "
        "on new crops but at most 0.2 % on other photos (7.4–7.8 % with "
        "`scope=sensitivity`: they fit the calibration photos), and half that pruning "
        "(`ratio=0.15`, `scope=sensitivity`) keeps 83–84 % and 44 % at 2.05–2.10x; "
        "`quant{target_top1=0.97}` buys 96–97 % back at fp32's speed and half its size.\n\n"
        f"![fidelity versus file size]({SIZE_PNG.name})\n\n"
        f"![fidelity versus speed]({SPEED_PNG.name})"
    )


def main() -> None:
    text = RESULTS.read_text()
    points = recorded_points(text)
    draw(points, "size", SIZE_PNG)
    draw(points, "speed", SPEED_PNG)
    write_section(BEGIN, END, results_text(points))
    print(f"{len(points)} pipelines drawn: {SIZE_PNG.name}, {SPEED_PNG.name}")


if __name__ == "__main__":
    main()
