"""The ``--forge-report DIR`` HTML report: ``index.html`` plus the PNG plots beside it.

This module assembles the page (summary, comparisons, failures, what was not measured, one
section per tune run); the plots come from html_figures.py (``throughput.png``,
``pareto.png``) and tune_figures.py (``tune-<n>-<run>.png``, ``tune-<n>-<run>-pareto.png`` and,
for objective pareto, ``tune-<n>-<run>-front.png``).
Every string read from user files (recipe ids, workload names, rationales, run names) is
HTML-escaped in the page.
"""

from __future__ import annotations

import datetime as _dt
import html
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_forge import __version__
from pytest_forge.fileio import atomic_write
from pytest_forge.html_figures import (
    ParetoPoint,
    latency_axis,
    num,
    pareto_figure,
    require_matplotlib,
    save_png,
    throughput_figure,
)
from pytest_forge.metric_registry import THROUGHPUT
from pytest_forge.report import (
    COMPARISON_HEADER,
    SUMMARY_HEADER,
    comparison_rows,
    summary_rows,
    unmeasured_reason,
)
from pytest_forge.tune_figures import front_figure, read_front, read_run, tune_figure, tune_points

if TYPE_CHECKING:
    from pytest_forge.results import CaseResult
    from pytest_forge.session import Unmeasured

INDEX = "index.html"
THROUGHPUT_PNG = "throughput.png"
PARETO_PNG = "pareto.png"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.") or "run"


def _esc(text: Any) -> str:
    return html.escape("" if text is None else str(text), quote=True)


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

# Right-aligned: every column between the workload and the verdict.
_NUMERIC_COLUMNS = set(SUMMARY_HEADER[2:-1])


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
        score = num(r.get("score"))
        rows.append(
            f'<tr><td class="num">{_esc(r.get("exp"))}</td><td>{_esc(r.get("recipe_id"))}</td>'
            f'<td class="s-{_esc(_slug(status))}">{_esc(status)}</td>'
            f'<td class="num">{"-" if score is None else f"{score:.4f}"}</td>'
            f"<td>{_esc(' '.join(str(r.get('rationale') or '').split()))}</td></tr>"
        )
    return "<table>\n" + "\n".join(rows) + "\n</table>"


def _front_table(front: Mapping[str, Any]) -> str:
    """Objective pareto: the front's points with their metrics and ready-to-commit files."""
    rows = [
        "<tr><th>exp</th><th>recipe</th><th>role</th><th>tok/s</th><th>TTFT p99 ms</th>"
        "<th>TPOT p99 ms</th><th>accuracy</th><th>file</th></tr>"
    ]
    for p in front.get("points") or []:
        if not isinstance(p, Mapping):
            continue
        role = "winner" if p.get("winner") else ("committed" if p.get("committed") else "front")
        cells = [
            (p.get(k), spec)
            for k, spec in (
                ("tok_s", ".1f"),
                ("ttft_p99_ms", ".1f"),
                ("tpot_p99_ms", ".2f"),
                ("accuracy", ".3f"),
            )
        ]
        values = "".join(
            f'<td class="num">{"-" if num(v) is None else format(num(v), spec)}</td>'
            for v, spec in cells
        )
        rows.append(
            f'<tr><td class="num">{_esc(p.get("exp"))}</td><td>{_esc(p.get("recipe_id"))}</td>'
            f"<td>{_esc(role)}</td>{values}<td>{_esc(p.get('file') or '-')}</td></tr>"
        )
    return "<table>\n" + "\n".join(rows) + "\n</table>"


def _tune_section(
    report_dir: Path,
    number: int,
    name: str,
    records: Sequence[Mapping[str, Any]],
    front: Mapping[str, Any] | None = None,
) -> str:
    stem = f"tune-{number}-{_slug(name)}"
    parts = [f"<h2>Tune run {_esc(name)}</h2>"]
    score_png = f"{stem}.png"
    save_png(tune_figure(name, records), report_dir / score_png)
    parts.append(_figure(score_png, f"Tune {name}: score per experiment"))
    points, latency_label = tune_points(records)
    if points:
        pareto_png = f"{stem}-pareto.png"
        title = f"Tune {name}: throughput vs p99 latency (Pareto front)"
        save_png(pareto_figure(points, latency_label, title), report_dir / pareto_png)
        parts.append(_figure(pareto_png, title))
    if front is not None:  # objective pareto
        front_png = f"{stem}-front.png"
        save_png(front_figure(name, records, front), report_dir / front_png)
        parts.append(_figure(front_png, f"Tune {name}: Pareto front"))
        parts.append(_front_table(front))
    parts.append(_tune_table(records) if records else "<p>No experiments recorded.</p>")
    return "\n".join(parts)


def _unmeasured_html(unmeasured: Sequence[Unmeasured]) -> str:
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
    require_matplotlib()  # fail before anything is written
    runs = [(Path(d).name, read_run(Path(d)), read_front(Path(d))) for d in tune_runs or []]
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
        save_png(throughput_figure(results), report_dir / THROUGHPUT_PNG)
        body.append(_figure(THROUGHPUT_PNG, "Output throughput: measured vs baseline"))
        heads = [r.measurement.headline() for r in results]
        key, latency_label = latency_axis(heads)
        points = [
            ParetoPoint(r.recipe_id, r.workload, num(h.get(key)), num(h.get(THROUGHPUT.name)))
            for r, h in zip(results, heads, strict=True)
        ]
        title = "Throughput vs p99 latency (Pareto front)"
        save_png(pareto_figure(points, latency_label, title), report_dir / PARETO_PNG)
        body.append(_figure(PARETO_PNG, "Throughput vs p99 latency (Pareto front)"))
    else:
        body.append("<p>No benchmark results in this session.</p>")
    body.append(_unmeasured_html(unmeasured))
    for number, (name, records, front) in enumerate(runs, start=1):
        body.append(_tune_section(report_dir, number, name, records, front))
    page = (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        "<title>pytest-forge report</title>\n"
        f"<style>{_CSS}</style>\n</head>\n<body>\n"
        + "\n".join(part for part in body if part)
        + "\n</body>\n</html>\n"
    )
    return atomic_write(report_dir / INDEX, page)
