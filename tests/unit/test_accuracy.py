from __future__ import annotations

import json
from pathlib import Path

import pytest

from pytest_forge.accuracy import (
    NO_RECORDINGS_NOTE,
    choose_scorer,
    load_recorded_outputs,
    recorded_outputs_path,
    save_recorded_outputs,
    score_agreement,
    score_contains,
    score_exact,
    score_outputs,
)
from pytest_forge.errors import ForgeError, WorkloadError
from pytest_forge.workload import AccuracySpec, Replay, Workload, WorkloadRequest


def make_workload(
    references: dict[str, str | None], scorer: str | None = None, path: str = "w.jsonl"
) -> Workload:
    requests = []
    for line, (rid, ref) in enumerate(references.items(), start=1):
        request = WorkloadRequest(id=rid, prompt="q", expected_output_tokens=4, reference=ref)
        request._line = line
        requests.append(request)
    replay = Replay(accuracy=AccuracySpec(scorer=scorer))  # type: ignore[arg-type]
    return Workload(name="w", path=Path(path), requests=requests, replay=replay)


# --- single-output scorers -------------------------------------------------------------------


def test_exact_normalises_whitespace_and_case() -> None:
    assert score_exact("  Paris \n", "paris") == 1.0
    assert score_exact("New   York\tCity", "new york city") == 1.0
    assert score_exact("Paris, France", "Paris") == 0.0


def test_contains_is_case_insensitive() -> None:
    assert score_contains("The answer is 42.", "42") == 1.0
    assert score_contains("I think it's TOKYO", "Tokyo") == 1.0
    assert score_contains("Kyoto", "Tokyo") == 0.0


def test_agreement_ratio() -> None:
    assert score_agreement("same text", "same text") == 1.0
    assert score_agreement("", "") == 1.0
    assert score_agreement("abc", "xyz") == 0.0
    half = score_agreement("abcd", "abxy")
    assert half == pytest.approx(0.5)
    # Long, mostly-equal outputs: without autojunk the ratio reflects the real overlap.
    a = "the cat sat on the mat " * 20
    assert score_agreement(a, a[:-10] + "0123456789") > 0.95


# --- choosing a scorer -----------------------------------------------------------------------


def test_choose_scorer_precedence() -> None:
    with_refs = make_workload({"a": "x"})
    without = make_workload({"a": None})
    sidecar = make_workload({"a": "x"}, scorer="exact")
    assert choose_scorer(with_refs, None) == "contains"
    assert choose_scorer(without, None) == "agreement"
    assert choose_scorer(sidecar, None) == "exact"
    assert choose_scorer(sidecar, "agreement") == "agreement"  # recipe override wins
    assert choose_scorer(sidecar, "none") is None
    with pytest.raises(ForgeError, match="unknown accuracy scorer 'fuzzy'"):
        choose_scorer(with_refs, "fuzzy")


# --- scoring a run ---------------------------------------------------------------------------


def test_contains_with_failed_and_unreferenced_requests() -> None:
    w = make_workload({"a": "42", "b": "Paris", "c": "7", "d": None})
    outputs: dict[str, str | None] = {"a": "It is 42", "b": "paris!", "c": None, "d": "x"}
    result = score_outputs(w, outputs, "contains", None)
    assert result.scorer == "contains"
    assert result.value == pytest.approx(2 / 3)  # the failed request scores 0
    assert (result.scored, result.failed) == (3, 1)
    assert result.per_request == {"a": 1.0, "b": 1.0, "c": 0.0}
    assert "1 failed" in result.note and "1 without a reference skipped" in result.note


def test_exact_scorer() -> None:
    w = make_workload({"a": "Tokyo", "b": "Ottawa"})
    result = score_outputs(w, {"a": " tokyo ", "b": "Ottawa, Canada"}, "exact", None)
    assert result.value == 0.5 and result.scored == 2 and result.failed == 0


def test_all_failed_scores_zero() -> None:
    w = make_workload({"a": "1", "b": "2"})
    result = score_outputs(w, {"a": None, "b": None}, "contains", None)
    assert result.value == 0.0 and result.failed == 2


def test_requests_not_run_are_skipped() -> None:
    w = make_workload({"a": "1", "b": "2"})
    result = score_outputs(w, {"a": "1"}, "contains", None)
    assert result.value == 1.0 and result.scored == 1 and "1 not run" in result.note


def test_no_references_gives_none() -> None:
    w = make_workload({"a": None})
    result = score_outputs(w, {"a": "x"}, "contains", None)
    assert result.value is None and result.scored == 0 and "nothing to score" in result.note


def test_regex_scorer_and_bad_pattern() -> None:
    w = make_workload({"a": r"\b4[0-9]\b", "b": r"^yes$"})
    result = score_outputs(w, {"a": "about 42 items", "b": "yes, sure"}, "regex", None)
    assert result.per_request == {"a": 1.0, "b": 0.0}

    bad = make_workload({"ok": "x", "broken": "(unclosed"}, path="workloads/acc.jsonl")
    with pytest.raises(WorkloadError) as info:
        score_outputs(bad, {"ok": "x", "broken": "y"}, "regex", None)
    err = info.value
    assert (str(err.path), err.line, err.field) == ("workloads/acc.jsonl", 2, "reference")
    assert "'broken'" in err.message and "regular expression" in err.message


def test_agreement_without_recordings() -> None:
    w = make_workload({"a": None})
    for recorded in (None, {}):
        result = score_outputs(w, {"a": "x"}, "agreement", recorded)
        assert result.value is None and result.scored == 0
        assert result.note == NO_RECORDINGS_NOTE
        assert "--forge-update-baselines" in result.note


def test_agreement_scores_against_recordings() -> None:
    w = make_workload({"a": None, "b": None, "c": None, "d": None})
    recorded = {"a": "hello world", "b": "abcd", "c": "zzz"}  # d was never recorded
    outputs: dict[str, str | None] = {"a": "hello world", "b": "abxy", "c": None, "d": "new"}
    result = score_outputs(w, outputs, "agreement", recorded)
    assert result.per_request == {"a": 1.0, "b": pytest.approx(0.5), "c": 0.0}
    assert result.value == pytest.approx(1.5 / 3)
    assert (result.scored, result.failed) == (3, 1)
    assert "1 without a recorded output skipped" in result.note


def test_unknown_scorer_in_score_outputs() -> None:
    with pytest.raises(ForgeError, match="fuzzy"):
        score_outputs(make_workload({"a": "x"}), {"a": "x"}, "fuzzy", None)


# --- recorded outputs ------------------------------------------------------------------------


def test_recorded_outputs_path(tmp_path: Path) -> None:
    recipe = tmp_path / "recipes" / "tiny-llama-cpu.yaml"
    expected = tmp_path / "recipes" / "tiny-llama-cpu.outputs" / "chat.jsonl"
    assert recorded_outputs_path(recipe, "chat") == expected


def test_recorded_outputs_round_trip(tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    assert load_recorded_outputs(recipe, "chat") is None
    outputs = {"b": "deux\nlignes", "a": "café ☕", "c": ""}
    path = save_recorded_outputs(recipe, "chat", outputs)
    assert path == tmp_path / "r.outputs" / "chat.jsonl"
    assert load_recorded_outputs(recipe, "chat") == outputs
    raw = path.read_text(encoding="utf-8")
    assert [json.loads(line)["id"] for line in raw.splitlines()] == ["a", "b", "c"]
    assert "café ☕" in raw  # not \u-escaped
    # Overwriting replaces the file and leaves no temporary files behind.
    save_recorded_outputs(recipe, "chat", {"z": "only"})
    assert load_recorded_outputs(recipe, "chat") == {"z": "only"}
    assert [p.name for p in path.parent.iterdir()] == ["chat.jsonl"]


def test_corrupt_recorded_outputs_name_file_and_line(tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    path = recorded_outputs_path(recipe, "chat")
    path.parent.mkdir()
    path.write_text('{"id": "a", "text": "x"}\nnot json\n')
    with pytest.raises(WorkloadError) as info:
        load_recorded_outputs(recipe, "chat")
    assert (info.value.path, info.value.line) == (path, 2)
    path.write_text('{"id": "a"}\n')
    with pytest.raises(WorkloadError) as info:
        load_recorded_outputs(recipe, "chat")
    assert (info.value.line, info.value.field) == (1, "text")
