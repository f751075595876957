"""Objective pareto: noise-aware dominance, the front, its winner, and the tune that keeps it.

Synthetic points and a synthetic landscape (no vLLM): each recipe's throughput and p99
latencies are a function of its config, so trade-offs (faster but slower to first token)
are known in advance.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pytest

from pytest_forge.errors import ForgeError
from pytest_forge.metrics import Measurement, RepeatSummary
from pytest_forge.options import OPTIONS
from pytest_forge.recipe import Recipe
from pytest_forge.results import Evaluation
from pytest_forge.tune import objective as obj
from pytest_forge.tune.options import TuneOptions
from pytest_forge.tune.pareto import (
    ACCURACY,
    Noise,
    Point,
    candidate_points,
    dominates,
    pareto_front,
    point_of,
    select_winner,
    ties,
)
from pytest_forge.tune.run_report import render_report
from pytest_forge.tune.store import RunStore
from tests.unit.test_tuner import (
    RECIPE_YAML,
    NoAgent,
    P,
    ScriptedAgent,
    fake_verdict,
    make_tuner,
    new_store,
)

TPUT, TTFT, TPOT = "output_throughput", "ttft_p99_ms", "tpot_p99_ms"


def pt(
    exp: int,
    tput: float,
    ttft: float = 1.0,
    tpot: float = 1.0,
    *,
    acc: float | None = None,
    se: float = 0.0,
    floors: bool = True,
) -> Point:
    """A point of oriented ratios (higher is better everywhere) with one standard error."""
    ratios = {TPUT: tput, TTFT: ttft, TPOT: tpot}
    if acc is not None:
        ratios[ACCURACY] = acc
    return Point(exp, f"r{exp}", ratios, {m: se for m in (TPUT, TTFT, TPOT)}, floors)


# -- dominance ---------------------------------------------------------------------------
def test_a_point_dominates_only_beyond_the_noise_band() -> None:
    base = pt(0, 1.0, se=0.01)
    # Band: 2 sigmas x sqrt(0.01² + 0.01²) = 2.83 %.
    assert dominates(pt(1, 1.03, se=0.01), base)
    assert not dominates(base, pt(1, 1.03, se=0.01))
    near = pt(2, 1.02, se=0.01)  # inside the band: the same trade-off
    assert not dominates(near, base) and not dominates(base, near)
    assert ties(near, base)
    # The same 3 % is a tie when the repeats are noisier, or below the minimum change.
    assert ties(pt(3, 1.03, se=0.03), pt(0, 1.0, se=0.03))
    assert ties(pt(1, 1.03), pt(0, 1.0), Noise(min_change=0.05))
    assert dominates(pt(1, 1.03), pt(0, 1.0), Noise(min_change=0.02))


def test_a_trade_off_dominates_neither_way_and_worse_beyond_the_band_blocks() -> None:
    fast, snappy = pt(1, 1.3, ttft=0.8), pt(2, 0.8, ttft=1.4)
    assert not dominates(fast, snappy) and not dominates(snappy, fast)
    assert not ties(fast, snappy)
    # Better in throughput, worse in TPOT beyond the band: no domination.
    assert not dominates(pt(3, 1.5, tpot=0.9), pt(0, 1.0))
    # Worse within the band does not block it.
    assert dominates(pt(3, 1.5, tpot=0.99), pt(0, 1.0), Noise(min_change=0.02))


def test_accuracy_counts_beyond_its_band_and_only_where_both_were_scored() -> None:
    assert ties(pt(1, 1.0, acc=1.005), pt(0, 1.0, acc=1.0))  # under ACCURACY_BAND
    assert dominates(pt(0, 1.0, acc=1.0), pt(1, 1.0, acc=0.95))
    assert not dominates(pt(1, 1.2, acc=0.95), pt(0, 1.0, acc=1.0))  # a trade-off
    # Accuracy not scored on one side: compared on the measured metrics alone.
    assert dominates(pt(1, 1.2, acc=0.5), pt(0, 1.0))


def test_a_zero_ratio_is_the_worst_and_two_zeros_tie() -> None:
    dead = pt(1, 0.0, ttft=0.0, tpot=0.0)
    assert dominates(pt(0, 1.0), dead) and not dominates(dead, pt(0, 1.0))
    assert ties(dead, pt(2, 0.0, ttft=0.0, tpot=0.0))


# -- the front -----------------------------------------------------------------------------
def test_front_of_a_known_set() -> None:
    p0 = pt(0, 1.0)
    p1 = pt(1, 1.3, ttft=0.8)  # faster, slower first token: a trade-off
    p2 = pt(2, 1.1, ttft=1.1)  # beats the baseline everywhere
    p3 = pt(3, 0.9, ttft=0.9)  # beaten by everyone
    p4 = pt(4, 0.7, ttft=1.6)  # the latency end of the front
    front = pareto_front([p0, p1, p2, p3, p4])
    assert [p.exp for p in front] == [1, 2, 4]


def test_front_keeps_one_of_duplicates_and_of_noise_ties() -> None:
    a, twin = pt(1, 1.2, ttft=0.9), pt(2, 1.2, ttft=0.9)
    assert [p.exp for p in pareto_front([a, twin])] == [1]
    # Within the noise of the repeats: the earlier point stands for both.
    noisy, near = pt(1, 1.20, se=0.02), pt(2, 1.23, se=0.02)
    assert [p.exp for p in pareto_front([noisy, near])] == [1]
    # The same gap measured without noise is a real win.
    assert [p.exp for p in pareto_front([pt(1, 1.20), pt(2, 1.23)], Noise(min_change=0.02))] == [2]


def test_front_of_one_point_and_of_none() -> None:
    only = pt(0, 1.0)
    assert pareto_front([only]) == [only]
    assert pareto_front([]) == []


# -- the winner ----------------------------------------------------------------------------
def test_select_winner_takes_the_highest_throughput_meeting_the_slos() -> None:
    p0, fast, snappy = pt(0, 1.0), pt(1, 1.3, ttft=0.8), pt(2, 1.1, ttft=1.3)
    front = [p0, fast, snappy]
    assert select_winner(front) == fast
    # The fastest breaks the recipe's TTFT SLO: the next-fastest that meets it wins.
    slo_ok = lambda p: p.ratios[TTFT] >= 1.0  # noqa: E731 - p99 TTFT no worse than exp 0
    assert select_winner(front, slo_ok) == snappy
    # A point whose floors broke is never the winner.
    assert select_winner([p0, pt(1, 1.3, floors=False)]) == p0


def test_no_point_meets_the_slos_so_the_committed_recipe_stays() -> None:
    front = [pt(0, 1.0, floors=False), pt(1, 1.3, ttft=0.8)]
    assert select_winner(front, lambda p: p.ratios[TTFT] >= 1.0) is None
    # The committed recipe is a point too: when it is the best, there is no winner to write.
    assert select_winner([pt(0, 1.2), pt(1, 1.1, ttft=1.5)]).exp == 0  # type: ignore[union-attr]


# -- points from measurements ------------------------------------------------------------
def measurement(
    workload: str, tputs: Iterable[float], ttft: float = 100.0, tpot: float = 10.0
) -> Measurement:
    repeats = [
        RepeatSummary(
            completed=20,
            failed=0,
            duration_s=2.0,
            total_input_tokens=400,
            total_output_tokens=int(t * 2),
            request_throughput=10.0,
            output_throughput=t,
            total_token_throughput=t + 200,
            goodput=None,
            ttft_p99_ms=ttft,
            tpot_p99_ms=tpot,
            e2el_p99_ms=ttft + 50 * tpot,
        )
        for t in tputs
    ]
    return Measurement(workload, repeats, [], [None] * len(repeats), "0.32.0", False)


def test_a_point_is_the_geometric_mean_of_ratios_to_exp_0() -> None:
    ref = {"chat": measurement("chat", [100.0]), "rag": measurement("rag", [50.0])}
    cand = {
        "chat": measurement("chat", [121.0], ttft=50.0, tpot=10.0),
        "rag": measurement("rag", [50.0], ttft=200.0, tpot=5.0),
    }
    p = point_of(
        3,
        "abc",
        cand,
        ref,
        accuracy={"chat": 0.9, "rag": 1.0},
        reference_accuracy={"chat": 1.0, "rag": 1.0},
    )
    assert p.ratios[TPUT] == pytest.approx(1.1)  # sqrt(1.21 x 1.0)
    assert p.ratios[TTFT] == pytest.approx(1.0)  # sqrt(2 x 0.5): halved, then doubled
    assert p.ratios[TPOT] == pytest.approx(math.sqrt(2))  # lower is better: ref / cand
    assert p.ratios[ACCURACY] == pytest.approx(math.sqrt(0.9))
    assert p.throughput == pytest.approx(obj.score("pareto", cand, ref))
    assert p.change(TPOT) == pytest.approx(1 / math.sqrt(2) - 1)  # TPOT 29 % lower
    # One repeat: the single-run CV, as objective.noise_band assumes.
    assert p.se[TPUT] == pytest.approx(math.sqrt(2) * 1.2533 * obj.SINGLE_RUN_CV / 2)
    # The baseline against itself is (1, 1, 1, 1).
    base = point_of(0, "r", ref, ref, accuracy={"chat": 1.0, "rag": 1.0}, reference_accuracy={})
    assert set(base.ratios) == {TPUT, TTFT, TPOT}  # accuracy only where exp 0 scored it
    assert all(v == pytest.approx(1.0) for v in base.ratios.values())


def test_objective_pareto_is_accepted_and_listed() -> None:
    assert TuneOptions(budget=1, objective="pareto").objective == "pareto"
    o = obj.objective("pareto")
    assert o.metric == "output_throughput" and "Pareto front" in o.describe()
    with pytest.raises(ForgeError, match="pareto"):
        obj.objective("front")  # the error lists the choices, pareto among them
    (help_text,) = [h for flag, *_, h in OPTIONS if flag == "--forge-objective"]
    assert "pareto" in help_text


# -- the tune ------------------------------------------------------------------------------
# max_num_seqs -> (throughput factor, TTFT factor, TPOT factor): a bigger batch is faster
# overall but slower to the first token; a smaller one the reverse.
SHAPES: dict[int, tuple[float, float, float]] = {
    128: (1.0, 1.0, 1.0),
    256: (1.3, 1.5, 1.0),
    64: (0.8, 0.5, 1.0),
    512: (1.28, 1.6, 1.05),  # beaten by 256 on every metric (within noise on throughput)
}


class TradeOffs:
    """evaluate(): measurements from the recipe's config; prefix caching helps everything."""

    def __init__(self, accuracy: float = 0.99) -> None:
        self.accuracy = accuracy
        self.calls: list[str] = []

    def __call__(
        self, candidate: Recipe, reference_outputs: Mapping[str, Mapping[str, str]] | None = None
    ) -> Evaluation:
        recipe = candidate
        self.calls.append(recipe.content_hash)
        tput, ttft, tpot = SHAPES[recipe.config.get("max_num_seqs", 128)]
        if recipe.config.get("enable_prefix_caching"):
            tput, ttft = tput * 1.15, ttft * 0.9
        measurements, verdicts = {}, {}
        for w, base in (("chat", 100.0), ("rag", 50.0)):
            t = base * tput
            measurements[w] = measurement(
                w, [t * 0.99, t, t * 1.01], ttft=100.0 * ttft, tpot=10.0 * tpot
            )
            verdicts[w] = fake_verdict(recipe.id, w, self.accuracy)
        return Evaluation(measurements, verdicts)


SEQS_256 = P("raise the batching cap", config__max_num_seqs=256)
SEQS_64 = P("lower the cap for first-token latency", config__max_num_seqs=64)
SEQS_512 = P("raise it further", config__max_num_seqs=512)
PREFIX = P("prefix caching", config__enable_prefix_caching=True)


@pytest.fixture
def recipe_path(tmp_path: Path) -> Path:
    path = tmp_path / "recipes" / "tiny.yaml"
    path.parent.mkdir()
    path.write_text(RECIPE_YAML)
    return path


def _hash(recipe_path: Path, **config: Any) -> str:
    recipe = Recipe.load(recipe_path)
    return recipe.with_changes({f"config.{k}": v for k, v in config.items()}).content_hash


def test_the_tune_keeps_front_joiners_and_the_winner_is_the_next_parent(
    tmp_path: Path, recipe_path: Path
) -> None:
    store = new_store(tmp_path)
    agent = ScriptedAgent([SEQS_256, SEQS_64, PREFIX, SEQS_512])
    tuner = make_tuner(recipe_path, store, agent, TradeOffs(), objective="pareto")
    tuner.run_baseline()
    outcomes = [tuner.run_slot(s) for s in (1, 2, 3, 4)]
    assert [o.status for o in outcomes] == ["kept", "kept", "kept", "rejected"]
    h256 = _hash(recipe_path, max_num_seqs=256)
    h64 = _hash(recipe_path, max_num_seqs=64)
    h256p = _hash(recipe_path, max_num_seqs=256, enable_prefix_caching=True)
    # exp 2 is a trade-off (slower, far quicker to the first token): kept, but the winner
    # (the highest throughput) stays exp 1, so exp 3 mutates exp 1, not the last keep.
    assert "joins the Pareto front" in outcomes[1].reason
    assert agent.contexts[2].recipe.content_hash == h256
    assert outcomes[2].parent_id == h256 and outcomes[2].recipe_id == h256p
    assert "pushes exp 1 off it" in outcomes[2].reason
    # exp 4 (512 from the winner) is beaten on every metric by exp 3.
    assert "dominated by front point exp 3" in outcomes[3].reason
    assert tuner.best.content_hash == h256p
    assert tuner.best_score == pytest.approx(1.3 * 1.15)
    assert store.best_recipe_path.is_file()
    assert Recipe.load(recipe_path).content_hash != h256p  # nothing written before finalize

    # The front: exp 0 (the committed recipe), exp 2 and exp 3; exp 1 was pushed off.
    front = store.front()
    assert front is not None and front["winner"] == 3
    assert [(p["exp"], p["winner"], p["committed"]) for p in front["points"]] == [
        (0, False, True),
        (2, False, False),
        (3, True, False),
    ]
    files = sorted(p.name for p in (store.path / "front").glob("*.yaml"))
    assert files == sorted([f"tiny-{h64}.yaml", f"tiny-{h256p}.yaml"])
    loaded = Recipe.load(store.path / "front" / f"tiny-{h64}.yaml")
    committed = Recipe.load(recipe_path)
    assert loaded.content_hash == h64 and loaded.id == f"tiny-{h64}"
    assert loaded.lineage.parent_id == committed.content_hash
    assert loaded.lineage.generation == committed.lineage.generation + 1
    assert loaded.baselines["chat"].output_throughput == pytest.approx(80.0)
    assert loaded.baselines["chat"].ttft_p99_ms == pytest.approx(50.0)
    text = (store.path / "front" / f"tiny-{h64}.yaml").read_text()
    assert "Pareto front point exp 2" in text and "TTFT p99 -50.0%" in text
    assert "Keep this comment" in text  # the user's recipe file, comments and all

    result = tuner.finalize(remeasure=False)
    written = Recipe.load(recipe_path)
    assert result.winner is not None and written.content_hash == h256p
    assert written.lineage.rationale == "raise the batching cap; prefix caching"


def test_resume_restores_the_front_winner_not_the_last_keep(
    tmp_path: Path, recipe_path: Path
) -> None:
    store = new_store(tmp_path)
    first = make_tuner(
        recipe_path,
        store,
        ScriptedAgent([SEQS_256, SEQS_64, PREFIX, SEQS_64]),
        TradeOffs(),
        objective="pareto",
    )
    first.run_baseline()
    assert [first.run_slot(s).status for s in (1, 2, 3, 4)] == ["kept"] * 4
    records = first.experiments
    h256 = _hash(recipe_path, max_num_seqs=256)
    winner = _hash(recipe_path, max_num_seqs=256, enable_prefix_caching=True)
    assert first.best.content_hash == winner == records[3]["recipe_id"]
    # exp 3 mutated the winner of its time (exp 1), not the last keep (exp 2); exp 4, the
    # last keep, is a latency trade-off that pushed exp 2 off the front.
    assert records[3]["parent_id"] == h256 != records[2]["recipe_id"]
    assert records[4]["recipe_id"] == _hash(
        recipe_path, max_num_seqs=64, enable_prefix_caching=True
    )
    assert "pushes exp 2 off it" in records[4]["reason"]
    for f in (store.path / "front").iterdir():
        f.unlink()  # as if a kill came between the record and the front's files

    evaluate = TradeOffs()
    resumed = make_tuner(
        recipe_path, RunStore.open(store.path), NoAgent(), evaluate, objective="pareto"
    )
    assert resumed.best.content_hash == winner
    assert resumed.best_score == pytest.approx(1.3 * 1.15)
    assert resumed.standing.kept_rationales == ["raise the batching cap", "prefix caching"]
    assert [resumed.run_slot(s).resumed for s in (1, 2, 3, 4)] == [True] * 4
    assert evaluate.calls == []
    front = resumed.store.front()
    assert front is not None and [p["exp"] for p in front["points"]] == [0, 3, 4]
    assert len(list((store.path / "front").glob("*.yaml"))) == 2  # rewritten on resume

    # Written, then killed before completed.json: recipes/ holds the winner, not the last
    # keep, and a resume knows it as this run's own write.
    assert resumed.finalize(remeasure=False).winner is not None
    assert Recipe.load(recipe_path).content_hash == winner
    (store.path / "completed.json").unlink()
    again = make_tuner(
        recipe_path, RunStore.open(store.path), NoAgent(), TradeOffs(), objective="pareto"
    )
    assert "already written" in again.finalize().message


def test_candidates_that_break_a_floor_never_join_and_the_committed_recipe_stays(
    tmp_path: Path, recipe_path: Path
) -> None:
    before = recipe_path.read_bytes()
    store = new_store(tmp_path)
    tuner = make_tuner(
        recipe_path, store, ScriptedAgent([SEQS_256]), TradeOffs(), objective="pareto"
    )
    tuner.run_baseline()
    tuner.evaluate = TradeOffs(accuracy=0.5)  # every candidate now fails the 0.9 floor
    outcome = tuner.run_slot(1)
    assert outcome.status == "rejected" and "floors do not hold" in outcome.reason
    assert tuner.best.content_hash == Recipe.load(recipe_path).content_hash
    result = tuner.finalize(remeasure=False)
    assert result.winner is None and recipe_path.read_bytes() == before
    assert store.front() is None  # nothing joined: the committed recipe is the front
    assert "the committed recipe alone" in render_report(store.path)


def test_candidate_points_skip_a_baseline_that_breaks_a_floor() -> None:
    def record(exp: int, status: str, floors: bool) -> dict[str, Any]:
        m = measurement("chat", [100.0 + exp])
        return {
            "exp": exp,
            "status": status,
            "recipe_id": f"r{exp}",
            "floors_hold": floors,
            "measurements": {"chat": m.to_dict()},
            "accuracy": {"chat": 1.0},
        }

    records = [record(0, "baseline", False), record(1, "kept", True), record(2, "rejected", True)]
    assert [p.exp for p in candidate_points(records)] == [1]
    records[0]["floors_hold"] = True
    assert [p.exp for p in candidate_points(records)] == [0, 1]


def test_the_run_report_lists_the_front(tmp_path: Path, recipe_path: Path) -> None:
    store = new_store(tmp_path)
    tuner = make_tuner(
        recipe_path, store, ScriptedAgent([SEQS_256, SEQS_64]), TradeOffs(), objective="pareto"
    )
    tuner.run_baseline()
    tuner.run_slot(1)
    tuner.run_slot(2)
    report = render_report(store.path)
    h256, h64 = _hash(recipe_path, max_num_seqs=256), _hash(recipe_path, max_num_seqs=64)
    assert "Pareto front: 3 point(s)" in report
    front_rows = [line for line in report.splitlines() if "front/tiny-" in line]
    assert any(h256 in row and "winner" in row for row in front_rows)
    assert any(h64 in row and "TTFT p99 -50.0%" in row for row in front_rows)
    assert f"Best recipe ID: {h256}" in report
    data = json.loads((store.path / "front.json").read_text())
    assert data["winner"] == 1


def test_the_html_report_draws_the_front(tmp_path: Path, recipe_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from pytest_forge.html_report import write_html_report

    store = new_store(tmp_path)
    tuner = make_tuner(
        recipe_path,
        store,
        ScriptedAgent([SEQS_256, SEQS_64, SEQS_512]),
        TradeOffs(),
        objective="pareto",
    )
    tuner.run_baseline()
    for slot in (1, 2, 3):
        tuner.run_slot(slot)
    index = write_html_report(tmp_path / "report", [], tune_runs=[store.path])
    page = index.read_text()
    png = tmp_path / "report" / f"tune-1-{store.path.name}-front.png"
    assert png.name in page and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    h64 = _hash(recipe_path, max_num_seqs=64)
    assert f"front/tiny-{h64}.yaml" in page and ">winner<" in page
