"""A gate run's results.json: the document written at session end, and read back.

``forge compare`` reads its summary fields; ``forge merge`` rebuilds every result from each
entry's ``case`` (the full :func:`~pytest_forge.results.case_to_dict` form) and its
``not_measured`` list, and feeds them to the sinks as one runner would have.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_forge.errors import ForgeError
from pytest_forge.report import judged_counts
from pytest_forge.results import CaseResult, case_from_dict, case_to_dict

if TYPE_CHECKING:
    from pytest_forge.session import Unmeasured

RESULTS_FILE = "results.json"


def results_document(
    results: Sequence[CaseResult],
    hardware: str,
    unmeasured: Sequence[Unmeasured] = (),
    vllm_now: str | None = None,
    shard: str | None = None,
    hardware_deselected: Sequence[Mapping[str, str]] | None = None,
) -> dict[str, Any]:
    """The gate run's results.json, which ``forge compare`` and ``forge merge`` read."""
    from pytest_forge import __version__

    return {
        "pytest_forge": __version__,
        "vllm_version": next((r.verdict.vllm_now for r in results if r.verdict.vllm_now), None)
        or vllm_now,
        "hardware": hardware,
        "shard": shard,  # "I/N" for a --forge-shard run (forge merge checks the set)
        # --forge-hardware-only: the gate tests deselected as this runner cannot run them
        # (test, recipe, workload, reason); forge merge checks another runner ran each.
        # null: the option was off. A merged file lists those no runner ran.
        "hardware_deselected": None
        if hardware_deselected is None
        else [dict(d) for d in hardware_deselected],
        **judged_counts(results, unmeasured),
        "not_measured": [asdict(u) for u in unmeasured],
        "results": [_entry(r) for r in results],
    }


def _entry(r: CaseResult) -> dict[str, Any]:
    return {
        "recipe": r.recipe_id,
        "workload": r.workload,
        "metrics": r.measurement.headline(),
        "accuracy": r.accuracy.value if r.accuracy is not None else None,
        "verdict": r.verdict.status,
        "judged": r.verdict.judged,
        "reference": r.verdict.mode,
        "reference_label": r.verdict.reference_label,
        "reference_metrics": r.reference.headline() if r.reference else None,
        "reference_vllm": r.verdict.vllm_reference,
        "comparisons": {c.name: c.comparison for c in r.verdict.checks if c.comparison is not None},
        "baseline_vllm": r.verdict.baseline.measured_with.vllm if r.verdict.baseline else None,
        # Everything else about the result, so the reports can be rebuilt from this file.
        "case": case_to_dict(r),
    }


@dataclass(frozen=True)
class LoadedRun:
    """One results.json read back: its results, what it did not measure, where it ran."""

    path: Path
    results: list[CaseResult]
    unmeasured: list[Unmeasured]
    hardware: str
    vllm_version: str | None


def is_results_document(data: object) -> bool:
    """Whether parsed JSON is a gate run's results.json (recognised by content)."""
    return (
        isinstance(data, dict) and "pytest_forge" in data and isinstance(data.get("results"), list)
    )


def load_results(path: str | Path) -> LoadedRun:
    """Read a results.json (or the run directory holding one) back into results."""
    # session.py brings httpx and the server code: only reading a file back needs it.
    from pytest_forge.session import Unmeasured

    p = Path(path)
    if p.is_dir():
        p = p / RESULTS_FILE
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except OSError as e:
        raise ForgeError(f"{p}: cannot read: {e.strerror or e}") from None
    except ValueError as e:
        raise ForgeError(f"{p}: not valid JSON: {e}") from None
    if not is_results_document(data):
        raise ForgeError(f"{p}: not a pytest-forge results.json")
    results = []
    for n, entry in enumerate(data["results"]):
        case = entry.get("case") if isinstance(entry, dict) else None
        if not isinstance(case, dict):
            raise ForgeError(
                f"{p}: results[{n}] has no 'case': written by pytest-forge "
                f"{data.get('pytest_forge')}, before results.json carried whole results; "
                "re-run that shard with this version"
            )
        try:
            results.append(case_from_dict(case))
        except (KeyError, TypeError, ValueError) as e:
            raise ForgeError(f"{p}: results[{n}].case is malformed: {e!r}") from None
    unmeasured = []
    for n, entry in enumerate(data.get("not_measured") or []):
        try:
            test, outcome, reason = entry["test"], entry["outcome"], entry["reason"]
            unmeasured.append(Unmeasured(str(test), str(outcome), str(reason)))
        except (KeyError, TypeError) as e:
            raise ForgeError(f"{p}: not_measured[{n}] is malformed: {e!r}") from None
    return LoadedRun(
        p, results, unmeasured, str(data.get("hardware") or "unknown"), data.get("vllm_version")
    )
