"""forge compare: gate results.json and tune run stores, deltas, regression marks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pytest_forge.cli import main as forge_main
from pytest_forge.compare import compare_runs, direction, load_run, render_comparison
from pytest_forge.errors import ForgeError


def metrics(tok_s: float, ttft: float, **extra: float) -> dict[str, float]:
    return {
        "output_throughput": tok_s,
        "ttft_p99_ms": ttft,
        "tpot_p99_ms": 1.2,
        "e2el_p99_ms": 900.0,
        "request_throughput": 4.0,
        "cv": 0.01,
        **extra,
    }


def gate_run(
    root: Path, name: str, vllm: str, results: list[dict[str, Any]], hardware: str = "H100"
) -> Path:
    run = root / "gate" / name
    run.mkdir(parents=True)
    data = {"pytest_forge": "0.1.0", "vllm_version": vllm, "hardware": hardware, "results": results}
    (run / "results.json").write_text(json.dumps(data))
    return run


def result(
    recipe: str, workload: str, m: dict[str, float], accuracy: float = 0.98, verdict: str = "pass"
) -> dict[str, Any]:
    return {
        "recipe": recipe,
        "workload": workload,
        "metrics": m,
        "accuracy": accuracy,
        "verdict": verdict,
    }


@pytest.fixture
def runs(tmp_path: Path) -> tuple[Path, Path]:
    a = gate_run(
        tmp_path,
        "2026-11-20",
        "0.31.0",
        [
            result("tiny-llama-cpu", "chat", metrics(800.0, 40.0)),
            result("tiny-llama-cpu", "rag", metrics(500.0, 60.0)),
            result("old-recipe", "chat", metrics(100.0, 10.0)),
        ],
    )
    b = gate_run(
        tmp_path,
        "2026-11-21",
        "0.32.0",
        [
            # chat: throughput -2.5% (inside 5%), TTFT +12.5% (a regression)
            result("tiny-llama-cpu", "chat", metrics(780.0, 45.0)),
            # rag: throughput -10% (a regression), TTFT -10% (better), verdict now fails
            result("tiny-llama-cpu", "rag", metrics(450.0, 54.0), verdict="fail"),
            result("new-recipe", "chat", metrics(100.0, 10.0)),
        ],
    )
    return a, b


def test_directions() -> None:
    assert direction("output_throughput") == "higher"
    assert direction("accuracy") == "higher"
    assert direction("ttft_p99_ms") == "lower"
    assert direction("failed") == "lower"
    assert direction("cv") is None


def test_gate_comparison_deltas_and_regressions(runs: tuple[Path, Path]) -> None:
    a, b = (load_run(p) for p in runs)
    assert (a.kind, a.vllm_version, b.vllm_version) == ("gate", "0.31.0", "0.32.0")
    comp = compare_runs(a, b)

    assert [(p.recipe, p.workload) for p in comp.pairs] == [
        ("tiny-llama-cpu", "chat"),
        ("tiny-llama-cpu", "rag"),
    ]
    chat, rag = comp.pairs
    chat_deltas = {d.metric: d for d in chat.deltas}
    assert chat_deltas["output_throughput"].delta_pct == pytest.approx(-2.5)
    assert not chat_deltas["output_throughput"].regression
    assert chat_deltas["ttft_p99_ms"].delta_pct == pytest.approx(12.5)
    assert chat_deltas["ttft_p99_ms"].regression
    assert chat.regressions == ["ttft_p99_ms"]
    # Throughput first, accuracy included, unchanged metrics shown without a mark.
    assert chat.deltas[0].metric == "output_throughput"
    assert chat_deltas["accuracy"].delta_pct == 0 and not chat_deltas["accuracy"].regression

    rag_deltas = {d.metric: d for d in rag.deltas}
    assert rag_deltas["output_throughput"].regression
    assert not rag_deltas["ttft_p99_ms"].regression  # faster is never a regression
    assert rag.verdict_regressed
    assert rag.regressions == ["output_throughput", "verdict"]

    assert comp.regression_count == 3 and comp.has_regression
    assert comp.only_a == [("old-recipe", "chat")]
    assert comp.only_b == [("new-recipe", "chat")]


def test_threshold_moves_the_line(runs: tuple[Path, Path]) -> None:
    a, b = (load_run(p) for p in runs)
    lenient = compare_runs(a, b, threshold=0.2)
    assert [p.regressions for p in lenient.pairs] == [[], ["verdict"]]
    strict = compare_runs(a, b, threshold=0.02)
    assert "output_throughput" in strict.pairs[0].regressions  # -2.5% now counts
    with pytest.raises(ForgeError, match="threshold"):
        compare_runs(a, b, threshold=1.5)


def test_rise_from_zero_failures_is_a_regression(tmp_path: Path) -> None:
    a = gate_run(tmp_path, "a", "0.32.0", [result("r", "w", metrics(10.0, 1.0, failed=0))])
    b = gate_run(tmp_path, "b", "0.32.0", [result("r", "w", metrics(10.0, 1.0, failed=2))])
    (pair,) = compare_runs(load_run(a), load_run(b)).pairs
    failed = next(d for d in pair.deltas if d.metric == "failed")
    assert failed.delta_pct is None and failed.regression


def test_render_shows_versions_table_and_marks(runs: tuple[Path, Path]) -> None:
    text = render_comparison(compare_runs(load_run(runs[0]), load_run(runs[1])))
    lines = text.splitlines()
    assert "vLLM 0.31.0" in lines[0] and str(runs[0]) in lines[0]
    assert "vLLM 0.32.0" in lines[1]
    assert "tiny-llama-cpu × rag  verdict pass -> fail  REGRESSION" in text
    ttft = next(ln for ln in lines if ln.strip().startswith("ttft_p99_ms") and "+12.5%" in ln)
    assert ttft.rstrip().endswith("REGRESSION")
    tok = next(ln for ln in lines if ln.strip().startswith("output_throughput") and "-2.5%" in ln)
    assert "REGRESSION" not in tok
    assert "only in A: old-recipe × chat" in text
    assert "only in B: new-recipe × chat" in text
    assert lines[-1] == "3 regressions across 2 pairs"


def test_cli_exit_codes(runs: tuple[Path, Path], capsys) -> None:
    a, b = map(str, runs)
    assert forge_main(["compare", a, b]) == 0
    assert "REGRESSION" in capsys.readouterr().out
    assert forge_main(["compare", a, b, "--fail-on-regression"]) == 1
    # The same run against itself has nothing to regress.
    assert forge_main(["compare", a, a, "--fail-on-regression"]) == 0
    assert "0 regressions" in capsys.readouterr().out
    # results.json itself is accepted too; a generous threshold leaves only the verdict.
    out_file = str(Path(b) / "results.json")
    assert forge_main(["compare", a, out_file, "--threshold", "50", "--fail-on-regression"]) == 1


def tune_run(root: Path, name: str, vllm: str, records: list[dict[str, Any]]) -> Path:
    run = root / "runs" / name
    run.mkdir(parents=True)
    config = {"run": name, "recipe_id": "tiny-llama-cpu", "vllm": vllm, "hardware": "cpu"}
    (run / "config.json").write_text(json.dumps(config))
    (run / "experiments.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return run


def experiment(status: str, tok_s: float, recipe_id: str = "tiny-llama-cpu") -> dict[str, Any]:
    return {
        "recipe_id": recipe_id,
        "status": status,
        "metrics": {"chat": {"output_throughput": tok_s, "e2el_p99_ms": 500.0}},
        "accuracy": {"chat": 1.0},
    }


def test_tune_runs_compare_their_best_experiments(tmp_path: Path, capsys) -> None:
    a = tune_run(
        tmp_path,
        "001_2026-11-20T00-00-00",
        "0.31.0",
        [
            experiment("baseline", 100.0),
            {**experiment("kept", 120.0, "cand-1"), "verdicts": {"chat": {"passed": True}}},
        ],
    )
    b = tune_run(
        tmp_path,
        "002_2026-11-21T00-00-00",
        "0.32.0",
        # The rejected 200 tok/s candidate is not the best: only kept ones are.
        [
            {**experiment("baseline", 110.0), "verdicts": {"chat": "fail"}},
            experiment("rejected", 200.0, "cand-2"),
        ],
    )
    run_a = load_run(a)
    assert run_a.kind == "tune" and run_a.vllm_version == "0.31.0"
    row = run_a.rows[("tiny-llama-cpu", "chat")]
    assert row.metrics["output_throughput"] == 120.0 and row.metrics["accuracy"] == 1.0

    comp = compare_runs(run_a, load_run(b))
    (pair,) = comp.pairs
    tok = pair.deltas[0]
    assert (tok.metric, tok.a, tok.b) == ("output_throughput", 120.0, 110.0)
    assert tok.regression
    assert (pair.verdict_a, pair.verdict_b) == ("pass", "fail")
    assert pair.regressions == ["output_throughput", "verdict"]
    assert forge_main(["compare", str(a), str(b), "--fail-on-regression"]) == 1
    assert "(tune run)" in capsys.readouterr().out


def test_a_gate_run_compares_with_a_tune_run(tmp_path: Path) -> None:
    gate = gate_run(
        tmp_path, "g", "0.32.0", [result("tiny-llama-cpu", "chat", metrics(100.0, 1.0))]
    )
    tune = tune_run(tmp_path, "001_x", "0.32.0", [experiment("baseline", 130.0)])
    (pair,) = compare_runs(load_run(gate), load_run(tune)).pairs
    assert pair.deltas[0].delta_pct == pytest.approx(30.0)
    assert not pair.regressions


def test_bad_inputs_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ForgeError, match="no such run directory"):
        load_run(tmp_path / "missing")
    with pytest.raises(ForgeError, match="not a run"):
        load_run(tmp_path)

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "results.json").write_text("{not json")
    with pytest.raises(ForgeError, match=r"broken/results\.json: not valid JSON"):
        load_run(broken)
    (broken / "results.json").write_text(json.dumps({"results": [{"recipe": "r"}]}))
    with pytest.raises(ForgeError, match=r"results\.0\.workload: Field required"):
        load_run(broken)

    empty = tune_run(tmp_path, "001_x", "0.32.0", [experiment("crashed", 0.0)])
    with pytest.raises(ForgeError, match="no baseline or kept experiment"):
        load_run(empty)
