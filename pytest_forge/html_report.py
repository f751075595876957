"""The ``--forge-report DIR`` HTML report: ``index.html`` plus the PNG plots beside it.

Plots (matplotlib, Agg, imported only when a report is written):

- ``throughput.png``: measured vs baseline output throughput per recipe x workload, with the
  pass line at baseline x (1 - tolerance);
- ``pareto.png``: output throughput vs p99 latency, one point per recipe x workload, with the
  Pareto front (max throughput, min latency) of each workload;
- per tune run, ``tune-<n>-<run>.png`` (score per experiment, kept / rejected / crashed, the
  running best) and ``tune-<n>-<run>-pareto.png`` (its experiments' trade-off).

Every string read from user files (recipe ids, workload names, rationales, run names) is
HTML-escaped in the page and ``$``-escaped in plots, where matplotlib would read it as math.
"""

from __future__ import annotations

import datetime as _dt
import html
import importlib
import io
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_forge import __version__
from pytest_forge.errors import ForgeError
from pytest_forge.fileio import atomic_write
from pytest_forge.report import (
    COMPARISON_HEADER,
    SUMMARY_HEADER,
    comparison_rows,
    interval_text,
    summary_rows,
)

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from matplotlib.text import Annotation

    from pytest_forge.pipeline import CaseResult
    from pytest_forge.session import Unmeasured

INDEX = "index.html"
THROUGHPUT_PNG = "throughput.png"
PARETO_PNG = "pareto.png"

# 10 in x 100 dpi: the PNG is 1000 px wide, the width the page shows it at, so the font
# sizes below are the sizes a reader sees.
FIG_WIDTH_IN = 10.0
FIG_HEIGHT_IN = 5.6
DPI = 100

MEASURED_COLOR = "#1f77b4"
BASELINE_COLOR = "#b0b0b0"
FLOOR_COLOR = "#d62728"
KEPT_COLOR = "#2ca02c"
REJECTED_COLOR = "#8c8c8c"
CRASHED_COLOR = "#d62728"
BEST_COLOR = "#1f77b4"
VERDICT_COLORS = {
    "pass": "#1a7f37",
    "fail": "#cf222e",
    "no-baseline": "#9a6700",
    "inconclusive": "#9a6700",
}

# Latency axis of the Pareto plots: E2E p99 when measured, else TTFT p99.
LATENCY_KEYS = (
    ("e2el_p99_ms", "p99 end-to-end latency (ms)"),
    ("ttft_p99_ms", "p99 time to first token (ms)"),
)
# Height (axes fraction) of the strip where experiments without a score are drawn.
_UNSCORED_Y = 0.045
# Where a Pareto point's label may go (offset in points, alignment), in order of preference.
# Up-left first: that region is empty, as a point there would dominate this one.
_LABEL_SPOTS: tuple[tuple[tuple[float, float], str], ...] = (
    ((-7, 5), "right"),
    ((7, -14), "left"),
    ((7, 5), "left"),
    ((-7, -14), "right"),
)
MEASURED_STATUSES = ("baseline", "kept", "rejected")
KEPT_STATUSES = ("baseline", "kept")


# -- pure helpers ----------------------------------------------------------------------


def pareto_front(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats on both axes, as ``(latency, throughput)`` pairs.

    Lower latency and higher throughput are better. The front comes sorted by latency
    (so throughput rises along it); exact duplicates appear once, and points with a
    missing or non-finite coordinate are ignored.
    """
    return [(points[i][0], points[i][1]) for i in pareto_indices(points)]


def pareto_indices(points: Sequence[tuple[float | None, float | None]]) -> list[int]:
    """Indices of :func:`pareto_front`'s points in ``points``, in front order."""
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


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _mpl_text(text: Any) -> str:
    # matplotlib parses text between "$" as mathtext (and fails on a lone "$").
    return str(text).replace("$", r"\$")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.") or "run"


def _shorten(text: str, width: int = 60) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _esc(text: Any) -> str:
    return html.escape("" if text is None else str(text), quote=True)


@dataclass(frozen=True)
class ParetoPoint:
    label: str  # what a front point is annotated with
    workload: str
    latency: float | None
    throughput: float | None


# -- matplotlib --------------------------------------------------------------------------


def _require_matplotlib() -> None:
    try:
        for name in ("matplotlib.figure", "matplotlib.backends.backend_agg"):
            importlib.import_module(name)
    except ImportError:
        raise ForgeError(
            "--forge-report needs matplotlib for its plots: pip install pytest-forge[report]"
        ) from None


def _new_figure(height_in: float = FIG_HEIGHT_IN) -> Figure:
    """A Figure on its own Agg canvas: no pyplot, so no global backend or figure state."""
    _require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(FIG_WIDTH_IN, height_in), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: Path) -> None:
    # Written whole and renamed into place, so a reader never sees half a PNG.
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=DPI)
    atomic_write(path, png.getvalue())


def _legend_below(fig: Figure, handles: list[Any], labels: list[str]) -> None:
    # Under the plot, centred on the figure: never on top of a bar or a point, and the
    # constrained layout makes room for it.
    fig.legend(handles, labels, loc="outside lower center", ncols=min(len(handles), 4), fontsize=9)


def _style(ax: Axes, grid_axis: str = "y") -> None:
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
    fig = _new_figure(height_in=max(3.2, 1.6 + 0.55 * n))
    ax = fig.add_subplot()
    height = 0.38
    labels: list[str] = []
    longest = 0.0
    floor_drawn = False
    baseline_drawn = False
    for y, r in enumerate(results):
        labels.append(_mpl_text(_shorten(f"{r.recipe_id} / {r.workload}")))
        measured = _num(r.measurement.headline().get("output_throughput")) or 0.0
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
            ax.vlines(
                floor,
                y - height - 0.06,
                y + height + 0.06,
                colors=FLOOR_COLOR,
                linestyles="--",
                linewidth=2,
                label=None
                if floor_drawn
                else ref_label.split(" ")[0] + " × (1 − tolerance): the margin",
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
    ax.set_xlabel("output throughput (tok/s)", fontsize=11)
    ax.set_ylabel("recipe / workload", fontsize=11)
    ax.set_title("Output throughput: measured vs baseline", fontsize=13)
    _legend_below(fig, *ax.get_legend_handles_labels())
    _style(ax, grid_axis="x")
    return fig


def _latency_axis(points_heads: Iterable[Mapping[str, Any]]) -> tuple[str, str]:
    heads = list(points_heads)
    for key, label in LATENCY_KEYS:
        if any(_num(h.get(key)) is not None for h in heads):
            return key, label
    return LATENCY_KEYS[0]


def pareto_figure(points: Sequence[ParetoPoint], latency_label: str, title: str) -> Figure:
    """One point per case; per workload its Pareto front as a step line, front points ringed.

    Fronts are per workload: a recipe's throughput on one workload says nothing about
    whether it beats another recipe on a different one.
    """
    from matplotlib.lines import Line2D

    fig = _new_figure()
    ax = fig.add_subplot()
    workloads = list(dict.fromkeys(p.workload for p in points))
    colors = [f"C{i % 10}" for i in range(len(workloads))]
    plotted = False
    notes: list[Annotation] = []
    for workload, color in zip(workloads, colors, strict=True):
        mine = [p for p in points if p.workload == workload]
        xy = [(p.latency, p.throughput) for p in mine]
        usable = [(x, y) for x, y in xy if _num(x) is not None and _num(y) is not None]
        if not usable:
            continue
        plotted = True
        ax.scatter(
            [x for x, _ in usable],
            [y for _, y in usable],
            color=color,
            s=36,
            alpha=0.75,
            label=_mpl_text(workload),
            zorder=2,
        )
        front = pareto_indices(xy)
        fx = [mine[i].latency for i in front]
        fy = [mine[i].throughput for i in front]
        ax.step(fx, fy, where="post", color=color, linewidth=1.8, zorder=3)
        ax.scatter(fx, fy, s=130, facecolors="none", edgecolors="black", linewidths=1.6, zorder=4)
        for i in front:
            note = ax.annotate(
                _mpl_text(mine[i].label),
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
    ax.set_ylabel("output throughput (tok/s)", fontsize=11)
    ax.set_title(_mpl_text(title), fontsize=13)
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
        _legend_below(fig, handles, labels)
    ax.margins(x=0.12, y=0.12)
    _style(ax)
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
    placed = []
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


def tune_figure(run_name: str, records: Sequence[Mapping[str, Any]]) -> Figure:
    """Score per experiment; kept filled green, rejected hollow grey, crashed/invalid red x.

    Experiments without a score are drawn on the bottom edge: they were never measured.
    """
    fig = _new_figure()
    ax = fig.add_subplot()
    bottom = ax.get_xaxis_transform()  # x in data, y in axes fraction
    kept_x: list[float] = []
    kept_y: list[float] = []
    rej_x: list[float] = []
    rej_y: list[float] = []
    bad_x: list[float] = []
    unscored_x: list[float] = []
    best_x: list[float] = []
    best_y: list[float] = []
    best: float | None = None
    for n, r in enumerate(records):
        x = _num(r.get("exp"))
        x = float(n) if x is None else x
        score = _num(r.get("score"))
        status = str(r.get("status"))
        if status in KEPT_STATUSES and score is not None:
            kept_x.append(x)
            kept_y.append(score)
            best = score if best is None else max(best, score)
        elif status == "rejected" and score is not None:
            rej_x.append(x)
            rej_y.append(score)
        elif status in ("crashed", "invalid"):
            bad_x.append(x)
        else:
            unscored_x.append(x)
        if best is not None:
            best_x.append(x)
            best_y.append(best)
    if best_x:
        ax.step(best_x, best_y, where="post", color=BEST_COLOR, linewidth=2, label="running best")
    if kept_x:
        ax.scatter(
            kept_x,
            kept_y,
            s=70,
            color=KEPT_COLOR,
            edgecolors="black",
            zorder=3,
            label="kept (or baseline)",
        )
    if rej_x:
        ax.scatter(
            rej_x,
            rej_y,
            s=70,
            facecolors="none",
            edgecolors=REJECTED_COLOR,
            linewidths=1.6,
            zorder=3,
            label="rejected",
        )
    if bad_x:
        ax.scatter(
            bad_x,
            [_UNSCORED_Y] * len(bad_x),
            transform=bottom,
            marker="x",
            s=80,
            color=CRASHED_COLOR,
            linewidths=2.2,
            zorder=3,
            clip_on=False,
            label="crashed / invalid (no score)",
        )
    if unscored_x:
        ax.scatter(
            unscored_x,
            [_UNSCORED_Y] * len(unscored_x),
            transform=bottom,
            s=70,
            facecolors="none",
            edgecolors=REJECTED_COLOR,
            linestyle="--",
            zorder=3,
            clip_on=False,
            label="no score",
        )
    if bad_x or unscored_x:
        # A shaded strip under the scores, so unscored markers do not read as a low score.
        from matplotlib.patches import Rectangle

        ax.add_patch(
            Rectangle((0, 0), 1, _UNSCORED_Y * 2, transform=ax.transAxes, color="#f6d6d6", lw=0)
        )
        ax.text(
            0.995,
            _UNSCORED_Y,
            "no score",
            transform=ax.transAxes,
            ha="right",
            va="center",
            fontsize=9,
            color=CRASHED_COLOR,
        )
    if not records:
        ax.text(
            0.5,
            0.5,
            "no experiments recorded",
            transform=ax.transAxes,
            ha="center",
            va="center",
            fontsize=12,
        )
    scores = kept_y + rej_y
    if scores:
        lo, hi = min(scores), max(scores)
        pad = max((hi - lo) * 0.15, 0.02)
        # Room at the bottom for the unscored markers, which sit below every score.
        ax.set_ylim(lo - pad * 2 if bad_x or unscored_x else lo - pad, hi + pad)
    xs = kept_x + rej_x + bad_x + unscored_x
    if xs and all(float(v).is_integer() for v in xs):
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("experiment #", fontsize=11)
    ax.set_ylabel("score (× committed recipe; higher is better)", fontsize=11)
    ax.set_title(_mpl_text(f"Tune {run_name}: score per experiment"), fontsize=13)
    if ax.get_legend_handles_labels()[0]:
        _legend_below(fig, *ax.get_legend_handles_labels())
    _style(ax)
    return fig


# -- tune runs -----------------------------------------------------------------------------


def _read_run(run_dir: Path) -> list[dict[str, Any]]:
    from pytest_forge.tune.store import RunStore

    if not run_dir.is_dir():
        raise ForgeError(f"{run_dir}: tune run directory not found")
    return RunStore(run_dir).experiments()


def _tune_points(records: Sequence[Mapping[str, Any]]) -> tuple[list[ParetoPoint], str]:
    heads: list[tuple[str, str, Mapping[str, Any]]] = []
    for n, r in enumerate(records):
        if r.get("status") not in MEASURED_STATUSES:
            continue
        metrics = r.get("metrics")
        if not isinstance(metrics, Mapping):
            continue
        label = f"exp {r.get('exp', n)}"
        for workload, head in metrics.items():
            if isinstance(head, Mapping):
                heads.append((label, str(workload), head))
    key, axis_label = _latency_axis(h for _, _, h in heads)
    points = [
        ParetoPoint(label, wl, _num(h.get(key)), _num(h.get("output_throughput")))
        for label, wl, h in heads
    ]
    return points, axis_label


# -- HTML --------------------------------------------------------------------------------

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto;
       max-width: 1040px; padding: 0 1em; color: #1f2328; }
h1 { margin-bottom: 0.2em; }
.meta { color: #59636e; margin: 0.2em 0; }
table { border-collapse: collapse; margin: 1em 0; font-size: 14px; }
th, td { border: 1px solid #d1d9e0; padding: 4px 8px; text-align: left; }
th { background: #f6f8fa; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.verdict { font-weight: 600; }
.v-pass { color: #1a7f37; } .v-fail { color: #cf222e; } .v-no-baseline { color: #9a6700; }
.v-inconclusive { color: #9a6700; }
.s-baseline, .s-kept { color: #1a7f37; } .s-rejected { color: #59636e; }
.s-crashed, .s-invalid { color: #cf222e; }
figure { margin: 1.5em 0; }
img { width: 100%; max-width: 1000px; height: auto; border: 1px solid #d1d9e0; }
pre { background: #f6f8fa; padding: 0.8em; overflow-x: auto; }
"""

_NUMERIC_COLUMNS = {
    "output tok/s",
    "vs reference [95% CI]",
    "TTFT p99 ms",
    "TPOT p99 ms",
    "accuracy",
}


def _comparisons_html(results: Sequence[CaseResult]) -> str:
    """Per judged metric: the reference (baseline or A), now (B), the ratio and interval."""
    rows = comparison_rows(results)
    if not rows:
        return ""
    head = "".join(f"<th>{_esc(h)}</th>" for h in COMPARISON_HEADER)
    body = ["<tr>" + "".join(f"<td>{_esc(x)}</td>" for x in row) + "</tr>" for row in rows]
    return (
        "<h2>Against the reference</h2>\n<table>\n<tr>"
        + head
        + "</tr>\n"
        + ("\n".join(body) + "\n</table>")
    )


def _summary_table(results: Sequence[CaseResult]) -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in SUMMARY_HEADER)
    body = []
    for r, row in zip(results, summary_rows(results), strict=True):
        cells = []
        for name, value in zip(SUMMARY_HEADER, row, strict=True):
            if name == "verdict":
                status = r.verdict.status
                cells.append(
                    f'<td class="verdict v-{_esc(status)}" title="{_esc(r.verdict.versions)}">'
                    f"{_esc(value)}</td>"
                )
            elif name in _NUMERIC_COLUMNS:
                cells.append(f'<td class="num">{_esc(value)}</td>')
            else:
                cells.append(f"<td>{_esc(value)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table>\n<tr>{head}</tr>\n" + "\n".join(body) + "\n</table>"


def _versions_html(results: Sequence[CaseResult]) -> str:
    now = sorted({r.verdict.vllm_now or "unknown" for r in results})
    then = sorted({r.verdict.baseline.measured_with.vllm for r in results if r.verdict.baseline})
    return (
        f'<p class="meta">vLLM now: {_esc(", ".join(now))}; baselines measured with vLLM: '
        f"{_esc(', '.join(then) or '- (no baselines)')}</p>"
    )


def _failures_html(results: Sequence[CaseResult]) -> str:
    failures = [r for r in results if not r.verdict.passed]
    if not failures:
        return ""
    text = "\n\n".join(r.verdict.failure_message() for r in failures)
    return f"<h2>Failures</h2>\n<pre>{_esc(text)}</pre>"


def _figure(png: str, alt: str) -> str:
    return f'<figure><img src="{_esc(png)}" alt="{_esc(alt)}"></figure>'


def _tune_table(records: Sequence[Mapping[str, Any]]) -> str:
    rows = ["<tr><th>exp</th><th>recipe</th><th>status</th><th>score</th><th>rationale</th></tr>"]
    for r in records:
        status = str(r.get("status"))
        score = _num(r.get("score"))
        rows.append(
            f'<tr><td class="num">{_esc(r.get("exp"))}</td><td>{_esc(r.get("recipe_id"))}</td>'
            f'<td class="s-{_esc(_slug(status))}">{_esc(status)}</td>'
            f'<td class="num">{"-" if score is None else f"{score:.4f}"}</td>'
            f"<td>{_esc(' '.join(str(r.get('rationale') or '').split()))}</td></tr>"
        )
    return "<table>\n" + "\n".join(rows) + "\n</table>"


def _tune_section(
    report_dir: Path, number: int, name: str, records: Sequence[Mapping[str, Any]]
) -> str:
    stem = f"tune-{number}-{_slug(name)}"
    parts = [f"<h2>Tune run {_esc(name)}</h2>"]
    score_png = f"{stem}.png"
    _save(tune_figure(name, records), report_dir / score_png)
    parts.append(_figure(score_png, f"Tune {name}: score per experiment"))
    points, latency_label = _tune_points(records)
    if points:
        pareto_png = f"{stem}-pareto.png"
        title = f"Tune {name}: throughput vs p99 latency (Pareto front)"
        _save(pareto_figure(points, latency_label, title), report_dir / pareto_png)
        parts.append(_figure(pareto_png, title))
    parts.append(_tune_table(records) if records else "<p>No experiments recorded.</p>")
    return "\n".join(parts)


def _unmeasured_html(unmeasured: Sequence[Unmeasured]) -> str:
    from pytest_forge.report import unmeasured_reason

    if not unmeasured:
        return ""
    rows = ["<tr><th>test</th><th>outcome</th><th>reason</th></tr>"]
    rows += [
        f"<tr><td>{_esc(u.test)}</td><td>{_esc(u.outcome.upper())}</td>"
        f"<td>{_esc(unmeasured_reason(u, 600))}</td></tr>"
        for u in unmeasured
    ]
    return "<h2>Not measured</h2>\n<table>\n" + "\n".join(rows) + "\n</table>"


def write_html_report(
    report_dir: Path,
    results: list[CaseResult],
    tune_runs: list[Path] | None = None,
    unmeasured: Sequence[Unmeasured] = (),
) -> Path:
    """Write ``index.html`` and its PNGs into ``report_dir``; return the index path."""
    _require_matplotlib()  # fail before anything is written
    runs = [(Path(d).name, _read_run(Path(d))) for d in tune_runs or []]
    report_dir = Path(report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    generated = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    body = [
        "<h1>pytest-forge report</h1>",
        f'<p class="meta">generated {_esc(generated)} by pytest-forge {_esc(__version__)}</p>',
    ]
    if results:
        body.append(_versions_html(results))
        body.append("<h2>Summary</h2>")
        body.append(_summary_table(results))
        body.append(_comparisons_html(results))
        body.append(_failures_html(results))
        _save(throughput_figure(results), report_dir / THROUGHPUT_PNG)
        body.append(_figure(THROUGHPUT_PNG, "Output throughput: measured vs baseline"))
        heads = [r.measurement.headline() for r in results]
        key, latency_label = _latency_axis(heads)
        points = [
            ParetoPoint(r.recipe_id, r.workload, _num(h.get(key)), _num(h.get("output_throughput")))
            for r, h in zip(results, heads, strict=True)
        ]
        title = "Throughput vs p99 latency (Pareto front)"
        _save(pareto_figure(points, latency_label, title), report_dir / PARETO_PNG)
        body.append(_figure(PARETO_PNG, "Throughput vs p99 latency (Pareto front)"))
    else:
        body.append("<p>No benchmark results in this session.</p>")
    body.append(_unmeasured_html(unmeasured))
    for number, (name, records) in enumerate(runs, start=1):
        body.append(_tune_section(report_dir, number, name, records))
    page = (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        "<title>pytest-forge report</title>\n"
        f"<style>{_CSS}</style>\n</head>\n<body>\n"
        + "\n".join(part for part in body if part)
        + "\n</body>\n</html>\n"
    )
    return atomic_write(report_dir / INDEX, page)
