"""Accuracy: score a run's outputs against references, or against the greedy outputs recorded
when the baseline was measured, and keep those recorded outputs beside the recipe.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Callable, Mapping
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from pytest_forge.errors import ForgeError, WorkloadError
from pytest_forge.fileio import atomic_write
from pytest_forge.workload import Workload, compile_reference_patterns

SCORERS = ("exact", "contains", "regex", "agreement")
REFERENCE_SCORERS = ("exact", "contains", "regex")
# A recipe's gates may say "none" to turn accuracy off for it.
NO_SCORER = "none"
NO_RECORDINGS_NOTE = "no recorded outputs: run with --forge-update-baselines"


class AccuracyResult(BaseModel):
    """Mean scorer result over the requests that could be scored.

    ``scored`` counts every request in the mean, ``failed`` those among them that got no
    output (each scores 0). ``value`` is None when nothing could be scored; ``note`` says why.
    """

    model_config = ConfigDict(frozen=True)

    scorer: str
    value: float | None
    scored: int
    failed: int
    note: str = ""
    per_request: dict[str, float] = Field(default_factory=dict, repr=False)


# --- scorers over one output ---------------------------------------------------------------


def _normalise(text: str) -> str:
    return " ".join(text.split()).casefold()


def score_exact(output: str, reference: str) -> float:
    """1.0 when equal ignoring case and runs of whitespace."""
    return 1.0 if _normalise(output) == _normalise(reference) else 0.0


def score_contains(output: str, reference: str) -> float:
    """1.0 when the reference appears in the output, ignoring case and runs of whitespace."""
    return 1.0 if _normalise(reference) in _normalise(output) else 0.0


def score_regex(output: str, pattern: re.Pattern[str]) -> float:
    """1.0 when the pattern matches anywhere in the output (``re.search``)."""
    return 1.0 if pattern.search(output) else 0.0


def score_agreement(output: str, recorded: str) -> float:
    """Similarity in [0, 1] of this output to the recorded greedy one (1.0 when identical).

    ``SequenceMatcher`` without autojunk: its heuristic would treat frequent characters
    (spaces, common letters) as junk in outputs over 200 characters and skew the ratio.
    """
    if output == recorded:
        return 1.0
    return difflib.SequenceMatcher(None, output, recorded, autojunk=False).ratio()


_BY_TARGET: dict[str, Callable[[str, str], float]] = {
    "exact": score_exact,
    "contains": score_contains,
    "agreement": score_agreement,
}


# --- choosing and scoring ------------------------------------------------------------------


def choose_scorer(workload: Workload, override: str | None) -> str | None:
    """The recipe's gate override, else the sidecar's scorer, else ``contains`` when the
    workload has references, else ``agreement``. ``"none"`` as override: no scoring."""
    if override is not None:
        if override == NO_SCORER:
            return None
        if override not in SCORERS:
            raise ForgeError(
                f"unknown accuracy scorer '{override}' "
                f"(choose one of: {', '.join((*SCORERS, NO_SCORER))})"
            )
        return override
    if workload.replay.accuracy.scorer is not None:
        return workload.replay.accuracy.scorer
    return "contains" if workload.has_references else "agreement"


def score_outputs(
    workload: Workload,
    outputs: dict[str, str | None],
    scorer: str,
    recorded: Mapping[str, str] | None,
) -> AccuracyResult:
    """Mean score over the workload's requests.

    ``outputs`` maps request id to its text, None for a failed request (it scores 0);
    ids absent from ``outputs`` were not run and are skipped. Reference scorers skip
    requests without a reference; ``agreement`` skips requests with no recorded output.
    """
    if scorer not in SCORERS:
        raise ForgeError(
            f"unknown accuracy scorer '{scorer}' (choose one of: {', '.join(SCORERS)})"
        )
    if scorer == "agreement" and not recorded:
        return AccuracyResult(
            scorer=scorer, value=None, scored=0, failed=0, note=NO_RECORDINGS_NOTE
        )

    # What each output is compared with: the request's reference, or its recorded output.
    targets = recorded if scorer == "agreement" else workload.references
    skip_reason = "without a recorded output" if scorer == "agreement" else "without a reference"
    patterns = compile_reference_patterns(workload) if scorer == "regex" else {}

    per_request: dict[str, float] = {}
    failed = not_run = skipped = 0
    for request in workload.requests:
        if request.id not in outputs:
            not_run += 1
            continue
        target = targets.get(request.id) if targets else None
        if target is None:
            skipped += 1
            continue
        output = outputs[request.id]
        if output is None:
            failed += 1
            per_request[request.id] = 0.0
        elif scorer == "regex":
            per_request[request.id] = score_regex(output, patterns[request.id])
        else:
            per_request[request.id] = _BY_TARGET[scorer](output, target)

    scored = len(per_request)
    value = sum(per_request.values()) / scored if scored else None
    notes = [f"{scorer} over {scored} request{'s' if scored != 1 else ''}"]
    if failed:
        notes.append(f"{failed} failed (scored 0)")
    if skipped:
        notes.append(f"{skipped} {skip_reason} skipped")
    if not_run:
        notes.append(f"{not_run} not run")
    if value is None:
        notes.append("nothing to score")
    return AccuracyResult(
        scorer=scorer,
        value=value,
        scored=scored,
        failed=failed,
        note="; ".join(notes),
        per_request=per_request,
    )


# --- recorded greedy outputs ---------------------------------------------------------------


def recorded_outputs_path(recipe_path: Path | str, workload_name: str) -> Path:
    """``<recipes_dir>/<recipe_id>.outputs/<workload>.jsonl`` (the recipe file is ``<id>.yaml``)."""
    recipe_path = Path(recipe_path)
    return recipe_path.parent / f"{recipe_path.stem}.outputs" / f"{workload_name}.jsonl"


def load_recorded_outputs(recipe_path: Path | str, workload_name: str) -> dict[str, str] | None:
    """The recorded outputs by request id, or None when none were recorded."""
    return read_outputs_file(recorded_outputs_path(recipe_path, workload_name))


def save_recorded_outputs(
    recipe_path: Path | str, workload_name: str, outputs: Mapping[str, str]
) -> Path:
    """Write the outputs atomically (temp file, fsync, rename), sorted by id for clean diffs."""
    return write_outputs_file(recorded_outputs_path(recipe_path, workload_name), outputs)


def read_outputs_file(path: Path) -> dict[str, str] | None:
    """Outputs by request id from a JSON-lines file of ``{"id", "text"}``; None when absent."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise WorkloadError(path, None, None, f"cannot read recorded outputs: {exc}") from None
    recorded: dict[str, str] = {}
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise WorkloadError(path, line_no, None, f"invalid JSON: {exc}") from None
        if not isinstance(item, dict):
            raise WorkloadError(path, line_no, None, "expected a JSON object")
        for key in ("id", "text"):
            if not isinstance(item.get(key), str):
                raise WorkloadError(path, line_no, key, "missing or not a string")
        if item["id"] in recorded:
            raise WorkloadError(path, line_no, "id", f"duplicate id '{item['id']}'")
        recorded[item["id"]] = item["text"]
    return recorded


def write_outputs_file(path: Path, outputs: Mapping[str, str]) -> Path:
    """Outputs as JSON lines, sorted by id, written atomically (temp file, fsync, rename)."""
    text = "".join(
        json.dumps({"id": request_id, "text": outputs[request_id]}, ensure_ascii=False) + "\n"
        for request_id in sorted(outputs)
    )
    return atomic_write(path, text)


__all__ = [
    "NO_RECORDINGS_NOTE",
    "SCORERS",
    "AccuracyResult",
    "choose_scorer",
    "compile_reference_patterns",
    "load_recorded_outputs",
    "read_outputs_file",
    "recorded_outputs_path",
    "save_recorded_outputs",
    "score_agreement",
    "score_contains",
    "score_exact",
    "score_outputs",
    "score_regex",
    "write_outputs_file",
]
