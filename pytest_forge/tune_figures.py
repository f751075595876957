"""The HTML report's plots of a tune run: score per experiment, its Pareto points, and the
front of an objective-pareto run.

``tune_figure`` draws each experiment's score (kept, rejected, crashed or unscored) with the
running best; ``tune_points`` turns the measured experiments into points for
:func:`~pytest_forge.html_figures.pareto_figure`; ``front_figure`` draws an objective-pareto
run's experiments as throughput vs p99 TTFT (ratios to experiment 0) with its front
(``front.json``, see ``tune/pareto.py``) ringed and the winner starred.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_forge.errors import ForgeError
from pytest_forge.html_figures import (
    ParetoPoint,
    latency_axis,
    legend_below,
    mpl_text,
    new_figure,
    num,
    style_axes,
)
from pytest_forge.metric_registry import THROUGHPUT

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

KEPT_COLOR = "#2ca02c"
REJECTED_COLOR = "#8c8c8c"
CRASHED_COLOR = "#d62728"
BEST_COLOR = "#1f77b4"
# Height (axes fraction) of the strip where experiments without a score are drawn.
_UNSCORED_Y = 0.045
MEASURED_STATUSES = ("baseline", "kept", "rejected")
KEPT_STATUSES = ("baseline", "kept")


def read_front(run_dir: Path) -> dict[str, Any] | None:
    """An objective-pareto run's ``front.json``; None for other runs (or none written yet)."""
    from pytest_forge.tune.store import RunStore

    return RunStore(run_dir).front()


def read_run(run_dir: Path) -> list[dict[str, Any]]:
    """A tune run's experiment records; ForgeError when the directory is missing."""
    from pytest_forge.tune.store import RunStore

    if not run_dir.is_dir():
        raise ForgeError(f"{run_dir}: tune run directory not found")
    return RunStore(run_dir).experiments()


@dataclass
class _Series:
    """A tune run's experiments sorted by what can be drawn of them."""

    kept_x: list[float] = field(default_factory=list)
    kept_y: list[float] = field(default_factory=list)
    rejected_x: list[float] = field(default_factory=list)
    rejected_y: list[float] = field(default_factory=list)
    crashed_x: list[float] = field(default_factory=list)  # crashed or invalid: no score
    unscored_x: list[float] = field(default_factory=list)
    best_x: list[float] = field(default_factory=list)
    best_y: list[float] = field(default_factory=list)

    @property
    def scores(self) -> list[float]:
        return self.kept_y + self.rejected_y

    @property
    def without_score(self) -> bool:
        return bool(self.crashed_x or self.unscored_x)

    @property
    def xs(self) -> list[float]:
        return self.kept_x + self.rejected_x + self.crashed_x + self.unscored_x


def _series(records: Sequence[Mapping[str, Any]]) -> _Series:
    s = _Series()
    best: float | None = None
    for n, r in enumerate(records):
        exp = num(r.get("exp"))
        x = float(n) if exp is None else exp
        score = num(r.get("score"))
        status = str(r.get("status"))
        if status in KEPT_STATUSES and score is not None:
            s.kept_x.append(x)
            s.kept_y.append(score)
            best = score if best is None else max(best, score)
        elif status == "rejected" and score is not None:
            s.rejected_x.append(x)
            s.rejected_y.append(score)
        elif status in ("crashed", "invalid"):
            s.crashed_x.append(x)
        else:
            s.unscored_x.append(x)
        if best is not None:
            s.best_x.append(x)
            s.best_y.append(best)
    return s


def _draw_scored(ax: Axes, s: _Series) -> None:
    if s.best_x:
        ax.step(
            s.best_x, s.best_y, where="post", color=BEST_COLOR, linewidth=2, label="running best"
        )
    if s.kept_x:
        ax.scatter(
            s.kept_x,
            s.kept_y,
            s=70,
            color=KEPT_COLOR,
            edgecolors="black",
            zorder=3,
            label="kept (or baseline)",
        )
    if s.rejected_x:
        ax.scatter(
            s.rejected_x,
            s.rejected_y,
            s=70,
            facecolors="none",
            edgecolors=REJECTED_COLOR,
            linewidths=1.6,
            zorder=3,
            label="rejected",
        )


def _draw_unscored(ax: Axes, s: _Series) -> None:
    """Experiments without a score, on a shaded strip at the bottom edge."""
    bottom = ax.get_xaxis_transform()  # x in data, y in axes fraction
    if s.crashed_x:
        ax.scatter(
            s.crashed_x,
            [_UNSCORED_Y] * len(s.crashed_x),
            transform=bottom,
            marker="x",
            s=80,
            color=CRASHED_COLOR,
            linewidths=2.2,
            zorder=3,
            clip_on=False,
            label="crashed / invalid (no score)",
        )
    if s.unscored_x:
        ax.scatter(
            s.unscored_x,
            [_UNSCORED_Y] * len(s.unscored_x),
            transform=bottom,
            s=70,
            facecolors="none",
            edgecolors=REJECTED_COLOR,
            linestyle="--",
            zorder=3,
            clip_on=False,
            label="no score",
        )
    if s.without_score:
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


def _set_axes(ax: Axes, s: _Series) -> None:
    scores = s.scores
    if scores:
        lo, hi = min(scores), max(scores)
        pad = max((hi - lo) * 0.15, 0.02)
        # Room at the bottom for the unscored markers, which sit below every score.
        ax.set_ylim(lo - pad * 2 if s.without_score else lo - pad, hi + pad)
    xs = s.xs
    if xs and all(float(v).is_integer() for v in xs):
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def tune_figure(run_name: str, records: Sequence[Mapping[str, Any]]) -> Figure:
    """Score per experiment; kept filled green, rejected hollow grey, crashed/invalid red x.

    Experiments without a score are drawn on the bottom edge: they were never measured.
    """
    fig = new_figure()
    ax = fig.add_subplot()
    s = _series(records)
    _draw_scored(ax, s)
    _draw_unscored(ax, s)
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
    _set_axes(ax, s)
    ax.set_xlabel("experiment #", fontsize=11)
    ax.set_ylabel("score (× committed recipe; higher is better)", fontsize=11)
    ax.set_title(mpl_text(f"Tune {run_name}: score per experiment"), fontsize=13)
    if ax.get_legend_handles_labels()[0]:
        legend_below(fig, *ax.get_legend_handles_labels())
    style_axes(ax)
    return fig


def tune_points(records: Sequence[Mapping[str, Any]]) -> tuple[list[ParetoPoint], str]:
    """The measured experiments as Pareto points (one per workload), and the latency label."""
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
    key, axis_label = latency_axis(h for _, _, h in heads)
    points = [
        ParetoPoint(label, wl, num(h.get(key)), num(h.get(THROUGHPUT.name)))
        for label, wl, h in heads
    ]
    return points, axis_label


def _front_coordinates(
    records: Sequence[Mapping[str, Any]],
) -> dict[int, tuple[float, float]]:
    """Each measured experiment's (p99 TTFT, throughput) as ratios to experiment 0."""
    from pytest_forge.tune.pareto import point_from_record

    if not records or records[0].get("status") != "baseline":
        return {}
    out: dict[int, tuple[float, float]] = {}
    for r in records:
        if r.get("status") not in MEASURED_STATUSES:
            continue
        point = point_from_record(r, records[0])
        ttft = point.ratios.get("ttft_p99_ms") if point is not None else None
        if point is None or not ttft:  # None or 0: never measured, nothing to draw
            continue
        # Back to the metric's own direction: candidate / experiment 0.
        out[point.exp] = (1.0 / ttft, point.throughput)
    return out


def front_figure(
    run_name: str, records: Sequence[Mapping[str, Any]], front: Mapping[str, Any]
) -> Figure:
    """Throughput vs p99 TTFT of every measured experiment (× experiment 0), the front's
    points ringed and labelled, the winner starred, experiment 0 a diamond.

    The front is over throughput, p99 TTFT, p99 TPOT and accuracy, so a front point may
    look beaten in these two axes: it wins on another.
    """
    fig = new_figure()
    ax = fig.add_subplot()
    xy = _front_coordinates(records)
    entries = [p for p in front.get("points") or [] if isinstance(p, Mapping)]
    on_front = {p.get("exp") for p in entries}
    winner = front.get("winner")
    status = {r.get("exp"): r.get("status") for r in records}
    off = [e for e in xy if e not in on_front]
    kept_off = [e for e in off if status.get(e) in KEPT_STATUSES]
    rejected = [e for e in off if e not in kept_off]
    if rejected:
        ax.scatter(
            [xy[e][0] for e in rejected],
            [xy[e][1] for e in rejected],
            s=50,
            facecolors="none",
            edgecolors=REJECTED_COLOR,
            linewidths=1.4,
            zorder=2,
            label="rejected",
        )
    if kept_off:
        ax.scatter(
            [xy[e][0] for e in kept_off],
            [xy[e][1] for e in kept_off],
            s=50,
            color=KEPT_COLOR,
            alpha=0.5,
            zorder=2,
            label="kept, since pushed off the front",
        )
    drawn = [e for e in xy if e in on_front]
    if drawn:
        ax.scatter(
            [xy[e][0] for e in drawn],
            [xy[e][1] for e in drawn],
            s=120,
            color=KEPT_COLOR,
            edgecolors="black",
            linewidths=1.6,
            zorder=3,
            label="Pareto front",
        )
        for e in drawn:
            ax.annotate(
                mpl_text(f"exp {e}"),
                xy[e],
                xytext=(7, 5),
                textcoords="offset points",
                fontsize=9,
            )
    if 0 in xy:
        ax.scatter(
            [xy[0][0]],
            [xy[0][1]],
            marker="D",
            s=60,
            color=BEST_COLOR,
            zorder=4,
            label="committed recipe (exp 0)",
        )
    if isinstance(winner, int) and winner in xy:
        ax.scatter(
            [xy[winner][0]],
            [xy[winner][1]],
            marker="*",
            s=320,
            color="#ffbf00",
            edgecolors="black",
            zorder=5,
            label=f"winner (exp {winner})",
        )
    if not xy:
        ax.text(
            0.5,
            0.5,
            "no experiment has both a throughput and a p99 TTFT",
            transform=ax.transAxes,
            ha="center",
            va="center",
            fontsize=12,
        )
    ax.set_xlabel("p99 TTFT (× committed recipe; lower is better)", fontsize=11)
    ax.set_ylabel("output throughput (× committed recipe; higher is better)", fontsize=11)
    ax.set_title(
        mpl_text(f"Tune {run_name}: Pareto front (throughput, TTFT, TPOT, accuracy)"),
        fontsize=13,
    )
    if ax.get_legend_handles_labels()[0]:
        legend_below(fig, *ax.get_legend_handles_labels())
    ax.margins(x=0.15, y=0.15)
    style_axes(ax)
    ax.grid(True, axis="x", alpha=0.3)
    return fig
