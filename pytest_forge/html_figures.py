"""The gate report's plots (matplotlib, Agg, imported only when a plot is drawn).

- ``throughput_figure``: measured vs reference output throughput per recipe x workload,
  with the pass line at reference x (1 - tolerance);
- ``pareto_figure``: output throughput vs p99 latency, one point per case, with each
  workload's Pareto front (max throughput, min latency); the tune plots use it too.

Also the plumbing every report plot shares (figure, style, legend, PNG writing). Text read
from user files is ``$``-escaped, where matplotlib would read it as math.
"""

from __future__ import annotations

import importlib
import io
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pytest_forge.errors import ForgeError
from pytest_forge.fileio import atomic_write
from pytest_forge.metric_registry import PARETO_LATENCY, THROUGHPUT
from pytest_forge.report import interval_text

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from matplotlib.text import Annotation
    from matplotlib.transforms import Bbox

    from pytest_forge.results import CaseResult


# 10 in x 100 dpi: the PNG is 1000 px wide, the width the page shows it at, so the font
# sizes below are the sizes a reader sees.
FIG_WIDTH_IN = 10.0
FIG_HEIGHT_IN = 5.6
DPI = 100

MEASURED_COLOR = "#1f77b4"
BASELINE_COLOR = "#b0b0b0"
FLOOR_COLOR = "#d62728"
VERDICT_COLORS = {
    "pass": "#1a7f37",
    "fail": "#cf222e",
    "no-baseline": "#9a6700",
    "inconclusive": "#9a6700",
}

# Where a Pareto point's label may go (offset in points, alignment), in order of preference.
# Up-left first: that region is empty, as a point there would dominate this one.
_LABEL_SPOTS: tuple[tuple[tuple[float, float], Literal["left", "right"]], ...] = (
    ((-7, 5), "right"),
    ((7, -14), "left"),
    ((7, 5), "left"),
    ((-7, -14), "right"),
)


# -- pure helpers ----------------------------------------------------------------------


def pareto_indices(points: Sequence[tuple[float | None, float | None]]) -> list[int]:
    """Indices of the ``(latency, throughput)`` points no other point beats on both axes.

    Lower latency and higher throughput are better. The front comes sorted by latency
    (so throughput rises along it); exact duplicates appear once, and points with a
    missing or non-finite coordinate are ignored.
    """
    # Sweep by latency (ties: best throughput first): a point is on the front exactly when
    # it beats the throughput of every point at lower or equal latency seen before it.
    usable = sorted(
        (lat, -thr, i)
        for i, (lat, thr) in enumerate(points)
        if lat is not None and thr is not None and math.isfinite(lat) and math.isfinite(thr)
    )
    front: list[int] = []
    best = -math.inf
    for _, neg_thr, i in usable:
        if -neg_thr > best:
            front.append(i)
            best = -neg_thr
    return front


def num(value: Any) -> float | None:
    """``value`` as a finite float, or None (not a number, a bool, NaN or infinite)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def mpl_text(text: Any) -> str:
    """``text`` safe for a plot: ``$`` escaped."""
    # matplotlib parses text between "$" as mathtext (and fails on a lone "$").
    return str(text).replace("$", r"\$")


def shorten(text: str, width: int = 60) -> str:
    """``text`` cut to ``width`` characters with an ellipsis."""
    return text if len(text) <= width else text[: width - 1] + "…"


@dataclass(frozen=True)
class ParetoPoint:
    """One case (or experiment) on a Pareto plot."""

    label: str  # what a front point is annotated with
    workload: str
    latency: float | None
    throughput: float | None


# -- matplotlib --------------------------------------------------------------------------


def require_matplotlib() -> None:
    """Raise a ForgeError naming the extra to install when matplotlib is missing."""
    try:
        for name in ("matplotlib.figure", "matplotlib.backends.backend_agg"):
            importlib.import_module(name)
    except ImportError:
        raise ForgeError(
            "--forge-report needs matplotlib for its plots: pip install pytest-forge[report]"
        ) from None


def new_figure(height_in: float = FIG_HEIGHT_IN) -> Figure:
    """A Figure on its own Agg canvas: no pyplot, so no global backend or figure state."""
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(FIG_WIDTH_IN, height_in), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_png(fig: Figure, path: Path) -> None:
    """Write ``fig`` as a PNG, whole and renamed into place: never half a PNG on disk."""
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=DPI)
    atomic_write(path, png.getvalue())


def legend_below(fig: Figure, handles: list[Any], labels: list[str]) -> None:
    """The legend under the plot."""
    # Under the plot, centred on the figure: never on top of a bar or a point, and the
    # constrained layout makes room for it.
    fig.legend(handles, labels, loc="outside lower center", ncols=min(len(handles), 4), fontsize=9)


def style_axes(ax: Axes, grid_axis: Literal["both", "x", "y"] = "y") -> None:
    """A light grid behind the data, no top or right spine."""
    ax.grid(True, axis=grid_axis, alpha=0.3)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def throughput_figure(results: Sequence[CaseResult]) -> Figure:
    """Grouped bars per recipe x workload: measured (solid) vs baseline (hatched).

    Horizontal, one row per case: recipe and workload names stay readable however many
    cases there are, and the figure grows taller instead of squeezing the labels.
    """
    n = len(results)
    fig = new_figure(height_in=max(3.2, 1.6 + 0.55 * n))
    ax = fig.add_subplot()
    height = 0.38
    labels: list[str] = []
    longest = 0.0
    floor_drawn = False
    baseline_drawn = False
    for y, r in enumerate(results):
        labels.append(mpl_text(shorten(f"{r.recipe_id} / {r.workload}")))
        measured = num(r.measurement.headline().get(THROUGHPUT.name)) or 0.0
        # The reference: the committed baseline, or side A measured in this very run (A/B).
        base_value = (
            r.verdict.reference_throughput
            if r.verdict.mode == "ab"
            else (r.verdict.baseline.output_throughput if r.verdict.baseline else None)
        )
        ref_label = "A (reference, this run)" if r.verdict.mode == "ab" else "baseline (committed)"
        status = r.verdict.status
        # The y axis is inverted below, so "- height / 2" is the upper bar of the pair.
        ax.barh(
            y - height / 2,
            measured,
            height,
            color=MEASURED_COLOR,
            label="measured (median of repeats)" if y == 0 else None,
        )
        longest = max(longest, measured)
        if base_value is None:
            note = "no baseline" if r.verdict.mode == "baseline" else "no reference"
        else:
            ax.barh(
                y + height / 2,
                base_value,
                height,
                color=BASELINE_COLOR,
                hatch="//",
                edgecolor="#555555",
                linewidth=0.6,
                label=None if baseline_drawn else ref_label,
            )
            baseline_drawn = True
            longest = max(longest, base_value)
            floor = base_value * (1.0 - r.verdict.tolerance)
            # Labelled once: the legend has one entry for every pass line.
            floor_label = ref_label.split(" ")[0] + " × (1 − tolerance): the margin"
            label_once: dict[str, Any] = {} if floor_drawn else {"label": floor_label}
            ax.vlines(
                floor,
                y - height - 0.06,
                y + height + 0.06,
                colors=FLOOR_COLOR,
                linestyles="--",
                linewidth=2,
                **label_once,
            )
            floor_drawn = True
            comparison = r.verdict.comparison()
            change = r.verdict.change_vs_baseline
            if comparison is not None:
                note = interval_text(comparison)
            else:
                note = "" if change is None else f"{change:+.1%}"
        ax.annotate(
            f"{measured:.1f} tok/s  {note}".rstrip(),
            (measured, y - height / 2),
            xytext=(4, 0),
            textcoords="offset points",
            ha="left",
            va="center",
            fontsize=9,
            color=VERDICT_COLORS.get(status, "black"),
            fontweight="bold" if status == "fail" else "normal",
            # Readable where it crosses a pass line.
            bbox={"boxstyle": "square,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.85},
            zorder=5,
        )
    ax.set_yticks(range(n), labels, fontsize=9)
    ax.set_ylim(n - 0.4, -0.6)  # first case on top, as in the summary table
    # Room on the right for the value labels.
    ax.set_xlim(0, longest * 1.3 if longest > 0 else 1.0)
    ax.set_xlabel(THROUGHPUT.axis_label, fontsize=11)
    ax.set_ylabel("recipe / workload", fontsize=11)
    ax.set_title("Output throughput: measured vs baseline", fontsize=13)
    legend_below(fig, *ax.get_legend_handles_labels())
    style_axes(ax, grid_axis="x")
    return fig


def latency_axis(points_heads: Iterable[Mapping[str, Any]]) -> tuple[str, str]:
    """The Pareto plots' latency metric and axis label: E2E p99 when measured, else TTFT p99."""
    heads = list(points_heads)
    spec = next(
        (s for s in PARETO_LATENCY if any(num(h.get(s.name)) is not None for h in heads)),
        PARETO_LATENCY[0],
    )
    return spec.name, spec.axis_label


def pareto_figure(points: Sequence[ParetoPoint], latency_label: str, title: str) -> Figure:
    """One point per case; per workload its Pareto front as a step line, front points ringed.

    Fronts are per workload: a recipe's throughput on one workload says nothing about
    whether it beats another recipe on a different one.
    """
    from matplotlib.lines import Line2D

    fig = new_figure()
    ax = fig.add_subplot()
    workloads = list(dict.fromkeys(p.workload for p in points))
    colors = [f"C{i % 10}" for i in range(len(workloads))]
    plotted = False
    notes: list[Annotation] = []
    for workload, color in zip(workloads, colors, strict=True):
        mine = [p for p in points if p.workload == workload]
        xy = [(p.latency, p.throughput) for p in mine]
        usable = [
            (fx, fy) for x, y in xy if (fx := num(x)) is not None and (fy := num(y)) is not None
        ]
        if not usable:
            continue
        plotted = True
        ax.scatter(
            [x for x, _ in usable],
            [y for _, y in usable],
            color=color,
            s=36,
            alpha=0.75,
            label=mpl_text(workload),
            zorder=2,
        )
        front = pareto_indices(xy)
        # Front points always have both coordinates (pareto_indices skips the others).
        front_x = [num(mine[i].latency) or 0.0 for i in front]
        front_y = [num(mine[i].throughput) or 0.0 for i in front]
        ax.step(front_x, front_y, where="post", color=color, linewidth=1.8, zorder=3)
        ax.scatter(
            front_x, front_y, s=130, facecolors="none", edgecolors="black", linewidths=1.6, zorder=4
        )
        for i in front:
            note = ax.annotate(
                mpl_text(mine[i].label),
                (mine[i].latency, mine[i].throughput),
                xytext=_LABEL_SPOTS[0][0],
                textcoords="offset points",
                ha=_LABEL_SPOTS[0][1],
                va="bottom",
                fontsize=9,
            )
            notes.append(note)
    if not plotted:
        ax.text(
            0.5,
            0.5,
            "no case has both a throughput and a latency",
            transform=ax.transAxes,
            ha="center",
            va="center",
            fontsize=12,
        )
    ax.set_xlabel(latency_label, fontsize=11)
    ax.set_ylabel(THROUGHPUT.axis_label, fontsize=11)
    ax.set_title(mpl_text(title), fontsize=13)
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        front_key = "Pareto front (max tok/s, min latency)"
        handles.append(
            Line2D(
                [],
                [],
                color="black",
                marker="o",
                markerfacecolor="none",
                markersize=10,
                linewidth=1.8,
                label=front_key,
            )
        )
        labels.append(front_key)
        legend_below(fig, handles, labels)
    ax.margins(x=0.12, y=0.12)
    style_axes(ax)
    ax.grid(True, axis="x", alpha=0.3)
    _declutter(fig, ax, notes)
    return fig


def _declutter(fig: Figure, ax: Axes, notes: Sequence[Annotation]) -> None:
    """Move or hide point labels that would overprint another label or leave the figure.

    Each label tries its spots in turn and keeps the first free one; labels placed
    earlier win, and one with no free spot is hidden (its point stays ringed).
    """
    if not notes:
        return
    fig.canvas.draw()  # runs the layout, so the extents below are final
    renderer = fig.canvas.get_renderer()  # type: ignore[attr-defined]
    inside = ax.bbox  # off the axes a label would cover tick labels
    placed: list[Bbox] = []
    for note in notes:
        for offset, ha in _LABEL_SPOTS:
            note.xyann = offset
            note.set_horizontalalignment(ha)
            box = note.get_window_extent(renderer).expanded(1.04, 1.15)
            fits = (
                inside.x0 <= box.x0
                and box.x1 <= inside.x1
                and inside.y0 <= box.y0
                and box.y1 <= inside.y1
            )
            if fits and not any(box.overlaps(other) for other in placed):
                placed.append(box)
                break
        else:
            note.set_visible(False)
