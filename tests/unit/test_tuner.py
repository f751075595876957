"""The tuning loop over a synthetic landscape: no vLLM, no network, no LLM.

``evaluate`` computes measurements from the recipe's config (a fake bench), the agent plays
a script of proposals, and everything lands in a real run store under tmp_path.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest

from pytest_forge.errors import AgentError, ForgeError, ServerError
from pytest_forge.metrics import Measurement, RepeatSummary
from pytest_forge.recipe import MeasuredWith, Recipe
from pytest_forge.results import Evaluation
from pytest_forge.tune import objective as obj
from pytest_forge.tune.agent_types import AgentUsage, Proposal, ProposalContext
from pytest_forge.tune.options import TuneOptions
from pytest_forge.tune.store import RunStore
from pytest_forge.tune.tuner import Tuner
from pytest_forge.verdict import Check, Verdict

RECIPE_YAML = """\
# The CPU recipe CI gates on. Keep this comment: the tuner must not drop it.
id: tiny
model: forge:tiny-llama
hardware: {vendor: cpu}
config:
  max_num_seqs: 128   # the committed batching cap
  enforce_eager: true
env:
  VLLM_CPU_KVCACHE_SPACE: "1"
gates:
  accuracy_floor: 0.9
lineage:
  generation: 3
  parent_id: 0badc0de
  rationale: hand-tuned
"""

WORKLOADS = ("chat", "rag")
BASE_TPUT = {"chat": 100.0, "rag": 50.0}


# -- the synthetic landscape ---------------------------------------------------------------
def _factor(recipe: Recipe) -> tuple[float, float, bool]:
    """(throughput factor, accuracy, crashes) of a recipe."""
    cfg = recipe.config
    factor = {64: 0.8, 128: 1.0, 256: 1.3, 512: 1.4}.get(cfg.get("max_num_seqs", 128), 1.0)
    if cfg.get("enable_prefix_caching"):
        factor *= 1.01  # real but smaller than the noise
    accuracy = 0.99
    if recipe.quant.kv_cache_quant == "fp8":
        factor *= 1.5
        accuracy = 0.7  # fast and wrong
    crashes = cfg.get("max_num_batched_tokens") == 999_999
    return factor, accuracy, crashes


def fake_measurement(
    workload: str, throughputs: Iterable[float], p99_ms: float = 200.0
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
            e2el_p99_ms=p99_ms,
            ttft_p99_ms=p99_ms / 4,
        )
        for t in throughputs
    ]
    return Measurement(workload, repeats, [], [None] * len(repeats), "0.32.0", False)


def fake_verdict(recipe_id: str, workload: str, accuracy: float, floor: float = 0.9) -> Verdict:
    ok = accuracy >= floor
    check = Check("accuracy", ok, f"accuracy {accuracy:.3f} {'>=' if ok else '<'} floor {floor}")
    # A failing throughput check must not count as a floor: candidates differ from baselines.
    tput = Check("throughput", False, "below the committed baseline")
    return Verdict(recipe_id, workload, [check, tput], accuracy=accuracy)


@dataclass
class Landscape:
    cv: float = 0.0  # spread of the 3 repeats
    delay_s: float = 0.0
    tick: Callable[[], None] | None = None  # advances a fake clock
    calls: list[str] = field(default_factory=list)
    override: dict[str, float] = field(default_factory=dict)  # content hash -> factor

    def __call__(self, recipe: Recipe) -> Evaluation:
        self.calls.append(recipe.content_hash)
        if self.delay_s:
            time.sleep(self.delay_s)
        if self.tick:
            self.tick()
        factor, accuracy, crashes = _factor(recipe)
        factor = self.override.get(recipe.content_hash, factor)
        if crashes:
            return Evaluation(
                {}, {}, error="vLLM exited with code 1\n--- log ---\nValueError: token budget"
            )
        measurements = {}
        verdicts = {}
        for w in WORKLOADS:
            t = BASE_TPUT[w] * factor
            spread = [t * (1 - self.cv), t, t * (1 + self.cv)]
            measurements[w] = fake_measurement(w, spread, p99_ms=200.0 / factor)
            verdicts[w] = fake_verdict(recipe.id, w, accuracy)
        return Evaluation(measurements, verdicts)


class ScriptedAgent:
    """Plays proposals in order; an exception in the script is raised from propose()."""

    name = "scripted"

    def __init__(self, script: Iterable[Proposal | Exception], cost: float = 0.0) -> None:
        self.script = list(script)
        self.usage = AgentUsage()
        self.cost = cost
        self.contexts: list[ProposalContext] = []

    def propose(self, ctx: ProposalContext) -> Proposal:
        self.contexts.append(ctx)
        self.usage.add(input_tokens=100, output_tokens=20, cost_usd=self.cost)
        self.usage.calls += 1
        step = self.script.pop(0)
        if isinstance(step, Exception):
            raise step
        return step


class NoAgent:
    name = "none"

    def __init__(self) -> None:
        self.usage = AgentUsage()

    def propose(self, ctx: ProposalContext) -> Proposal:
        raise AssertionError("a resumed experiment must not ask the agent")


def P(rationale: str, **changes: Any) -> Proposal:
    return Proposal(rationale, {k.replace("__", "."): v for k, v in changes.items()})


SEQS_256 = P("raise the batching cap", config__max_num_seqs=256)
SEQS_512 = P("raise it further", config__max_num_seqs=512)
SEQS_64 = P("lower the cap for latency", config__max_num_seqs=64)
FP8 = P("fp8 kv cache", quant__kv_cache_quant="fp8")
CRASH = P("huge token budget", config__max_num_batched_tokens=999_999)
PREFIX = P("prefix caching", config__enable_prefix_caching=True)


def measured_with() -> MeasuredWith:
    return MeasuredWith(
        vllm="0.32.0", pytest_forge="0.1.0", hardware="test cpu", backend="vllm", date="2026-11-22"
    )


@pytest.fixture
def recipe_path(tmp_path: Path) -> Path:
    path = tmp_path / "recipes" / "tiny.yaml"
    path.parent.mkdir()
    path.write_text(RECIPE_YAML)
    return path


def make_tuner(
    recipe_path: Path,
    store: RunStore,
    agent: Any,
    evaluate: Callable[[Recipe], Evaluation],
    clock: Callable[[], float] = time.monotonic,
    **options: Any,
) -> Tuner:
    opts = {"budget": 5, "patience": 10, **options}
    return Tuner(
        Recipe.load(recipe_path),
        agent,
        store,
        TuneOptions(**opts),
        hardware=None,
        hardware_class="CPU",
        search_space=None,
        evaluate=evaluate,
        measured_with=measured_with,
        clock=clock,
    )


def new_store(tmp_path: Path) -> RunStore:
    return RunStore.create(tmp_path / ".forge" / "runs", {"recipe_id": "tiny", "budget": 5})


# -- objective -----------------------------------------------------------------------------
def test_score_is_the_geometric_mean_of_ratios_and_the_baseline_scores_one() -> None:
    ref = {"chat": fake_measurement("chat", [100.0]), "rag": fake_measurement("rag", [50.0])}
    cand = {"chat": fake_measurement("chat", [121.0]), "rag": fake_measurement("rag", [50.0])}
    assert obj.score("throughput", ref, ref) == pytest.approx(1.0)
    assert obj.score("throughput", cand, ref) == pytest.approx(1.1)
    # Lower latency is better: half the p99 on both workloads doubles the score.
    fast = {
        "chat": fake_measurement("chat", [100.0], p99_ms=100.0),
        "rag": fake_measurement("rag", [50.0], p99_ms=100.0),
    }
    assert obj.score("latency", fast, ref) == pytest.approx(2.0)
    with pytest.raises(ForgeError, match="no measurement for workload"):
        obj.score("throughput", {"chat": cand["chat"]}, ref)
    with pytest.raises(ForgeError, match="unknown tuning objective 'speed'"):
        obj.score("speed", cand, ref)


def test_goodput_objective_needs_an_slo() -> None:
    ref = {"chat": fake_measurement("chat", [100.0])}  # goodput None: no SLO configured
    problem = obj.check_reference("goodput", ref)
    assert problem is not None and "needs a per-request SLO" in problem
    assert obj.check_reference("throughput", ref) is None


def test_noise_band_and_decide() -> None:
    noisy = {"chat": fake_measurement("chat", [97.0, 100.0, 103.0])}
    steady = {"chat": fake_measurement("chat", [100.0, 100.0, 100.0])}
    single = {"chat": fake_measurement("chat", [100.0])}
    # standard error of a median of 3: 1.2533 x cv / sqrt(3); two medians in the ratio
    se = 1.2533 * 0.03 / 3**0.5
    assert obj.noise_band("throughput", noisy, noisy) == pytest.approx(2 * (2 * se**2) ** 0.5)
    # more workloads average the noise of the geometric mean down
    two = {"chat": noisy["chat"], "rag": noisy["chat"]}
    assert obj.noise_band("throughput", two, two) == pytest.approx(
        obj.noise_band("throughput", noisy, noisy) / 2**0.5
    )
    assert obj.noise_band("throughput", steady, steady) == 0.0
    # One repeat reports CV 0; the band assumes a typical spread instead of none.
    assert obj.noise_band("throughput", single, steady) == pytest.approx(
        2 * 1.2533 * obj.SINGLE_RUN_CV
    )

    keep = obj.decide(1.084, 1.031, True, 0.02, 0.012)
    assert keep.keep
    assert keep.reason == "score 1.084 vs best 1.031: +5.1% >= max(min 2.0%, noise 1.2%)"
    assert not obj.decide(1.01, 1.0, True, 0.02, 0.0).keep
    assert not obj.decide(1.05, 1.0, True, 0.02, 0.085).keep
    floors = obj.decide(1.5, 1.0, False, 0.02, 0.0)
    assert not floors.keep and floors.reason.startswith("floors do not hold")


# -- the loop ------------------------------------------------------------------------------
def test_baseline_then_kept_rejected_invalid_and_crashed(tmp_path: Path, recipe_path: Path) -> None:
    store = new_store(tmp_path)
    land = Landscape()
    agent = ScriptedAgent([SEQS_256, FP8, AgentError("no JSON in the answer"), CRASH, SEQS_64])
    tuner = make_tuner(recipe_path, store, agent, land)

    base = tuner.run_baseline()
    assert (base.exp, base.status, base.score) == (0, "baseline", 1.0)
    assert base.recipe_id == Recipe.load(recipe_path).content_hash
    assert base.generation == 3

    kept = tuner.run_slot(1)
    assert kept.status == "kept" and kept.score == pytest.approx(1.3)
    assert kept.generation == 4 and kept.parent_id == base.recipe_id
    assert "score 1.300 vs best 1.000: +30.0% >=" in kept.reason

    fp8 = tuner.run_slot(2)
    assert fp8.status == "rejected" and fp8.score == pytest.approx(1.95)
    assert "floors do not hold" in fp8.reason and "accuracy 0.700 < floor 0.9" in fp8.reason
    assert fp8.parent_id == kept.recipe_id  # mutations apply to the best so far

    invalid = tuner.run_slot(3)
    assert invalid.status == "invalid" and "no JSON in the answer" in invalid.reason

    crashed = tuner.run_slot(4)
    assert crashed.status == "crashed" and crashed.score is None
    assert (
        "vLLM exited with code 1" in crashed.reason and "ValueError: token budget" in crashed.reason
    )

    worse = tuner.run_slot(5)
    assert worse.status == "rejected" and "<" in worse.reason

    assert tuner.run_slot(6).status == "skipped"  # beyond the budget of 5

    records = store.experiments()
    assert [r["exp"] for r in records] == [0, 1, 2, 3, 4, 5]
    assert [r["status"] for r in records] == [
        "baseline", "kept", "rejected", "invalid", "crashed", "rejected"
    ]  # fmt: skip
    assert "ValueError: token budget" in records[4]["error"]
    assert tuner.best.config["max_num_seqs"] == 256
    assert "max_num_seqs: 256" in store.best_recipe_path.read_text()
    # The agent saw the history so far, including the crash, on its last call.
    last = agent.contexts[-1]
    assert [h.status for h in last.history] == [
        "baseline",
        "kept",
        "rejected",
        "invalid",
        "crashed",
    ]
    assert last.recipe.content_hash == kept.recipe_id
    assert kept.recipe_id in last.tried_hashes and base.recipe_id in last.tried_hashes
    assert "exp 1 [kept]" in kept.summary() and "raise the batching cap" in kept.summary()


def test_a_proposal_already_measured_is_invalid_not_rerun(
    tmp_path: Path, recipe_path: Path
) -> None:
    land = Landscape()
    agent = ScriptedAgent([SEQS_256, P("back to 128", config__max_num_seqs=128), SEQS_256])
    tuner = make_tuner(recipe_path, new_store(tmp_path), agent, land)
    tuner.run_baseline()
    assert tuner.run_slot(1).status == "kept"
    again = tuner.run_slot(2)
    assert again.status == "invalid" and "already measured as exp 0" in again.reason
    noop = tuner.run_slot(3)  # 256 again on a best that already has 256: no change at all
    assert noop.status == "invalid" and "already measured as exp 1" in noop.reason
    assert len(land.calls) == 2  # baseline + slot 1 only


def test_the_noise_band_keeps_out_a_one_percent_gain(tmp_path: Path, recipe_path: Path) -> None:
    noisy = make_tuner(
        recipe_path, new_store(tmp_path), ScriptedAgent([PREFIX]), Landscape(cv=0.03),
        min_improvement=0.005,
    )  # fmt: skip
    noisy.run_baseline()
    out = noisy.run_slot(1)
    assert out.status == "rejected"
    assert out.score == pytest.approx(1.01)
    assert "noise 4.3%" in out.reason

    steady = make_tuner(
        recipe_path, new_store(tmp_path), ScriptedAgent([PREFIX]), Landscape(cv=0.0),
        min_improvement=0.005,
    )  # fmt: skip
    steady.run_baseline()
    assert steady.run_slot(1).status == "kept"  # the same gain, measured without noise


def test_convergence_skips_the_remaining_slots(tmp_path: Path, recipe_path: Path) -> None:
    store = new_store(tmp_path)
    agent = ScriptedAgent([SEQS_64, PREFIX, SEQS_256])
    tuner = make_tuner(recipe_path, store, agent, Landscape(cv=0.03), patience=2)
    tuner.run_baseline()
    assert [tuner.run_slot(s).status for s in (1, 2)] == ["rejected", "rejected"]
    skipped = tuner.run_slot(3)
    assert skipped.status == "skipped" and skipped.exp is None
    assert skipped.reason.startswith("converged: 2 experiments in a row without a keep")
    assert tuner.run_slot(4).status == "skipped"
    assert len(store.experiments()) == 3 and len(agent.contexts) == 2


def test_a_dollar_budget_stops_the_tune(tmp_path: Path, recipe_path: Path) -> None:
    store = new_store(tmp_path)
    agent = ScriptedAgent([SEQS_256, SEQS_512, SEQS_64], cost=0.6)
    tuner = make_tuner(recipe_path, store, agent, Landscape(), max_dollars=1.0)
    tuner.run_baseline()
    assert tuner.run_slot(1).usage["cost_usd"] == pytest.approx(0.6)
    assert tuner.run_slot(2).status == "kept"
    out = tuner.run_slot(3)
    assert out.status == "skipped" and out.reason == "budget of $1.00 spent ($1.20 on agent calls)"
    assert len(agent.contexts) == 2

    # The spend is in the store: a resumed tune (fresh agent at $0) still stops.
    resumed = make_tuner(
        recipe_path, store, ScriptedAgent([], cost=0.6), Landscape(), max_dollars=1.0
    )
    assert resumed.run_slot(3).reason == "budget of $1.00 spent ($1.20 on agent calls)"


def test_a_time_limit_counts_time_used_before_a_resume(tmp_path: Path, recipe_path: Path) -> None:
    now = [0.0]

    def tick() -> None:
        now[0] += 1000.0

    store = new_store(tmp_path)
    land = Landscape(tick=tick)
    tuner = make_tuner(
        recipe_path, store, ScriptedAgent([SEQS_256]), land, clock=lambda: now[0], max_hours=0.5
    )
    tuner.run_baseline()  # 1000 s
    assert tuner.run_slot(1).status == "kept"  # starts at 1000 s < 1800 s
    out = tuner.run_slot(2)
    assert out.status == "skipped" and out.reason.startswith("time limit of 0.5 h reached")

    later = [50_000.0]  # a new process: its clock starts anywhere
    resumed = make_tuner(recipe_path, store, NoAgent(), land, clock=lambda: later[0], max_hours=0.5)
    assert resumed.elapsed_s() == pytest.approx(2000.0)
    assert resumed.run_slot(2).status == "skipped"


def test_a_failed_baseline_skips_every_slot(tmp_path: Path, recipe_path: Path) -> None:
    def broken(recipe: Recipe) -> Evaluation:
        raise ServerError("vLLM did not become ready in 900 s", log_tail="RuntimeError: OOM")

    store = new_store(tmp_path)
    original = recipe_path.read_bytes()
    tuner = make_tuner(recipe_path, store, ScriptedAgent([SEQS_256]), broken)
    base = tuner.run_baseline()
    assert base.status == "error" and "RuntimeError: OOM" in base.reason
    slot = tuner.run_slot(1)
    assert slot.status == "skipped" and "did not become ready" in slot.reason
    result = tuner.finalize()
    assert result.winner is None and "recipes/ untouched" in result.message
    assert store.experiments() == []  # a resume measures the baseline again
    assert recipe_path.read_bytes() == original


# -- resume --------------------------------------------------------------------------------
def test_resume_returns_stored_outcomes_without_evaluating(
    tmp_path: Path, recipe_path: Path
) -> None:
    store = new_store(tmp_path)
    first = make_tuner(recipe_path, store, ScriptedAgent([SEQS_256, SEQS_64]), Landscape())
    first.run_baseline()
    s1, s2 = first.run_slot(1), first.run_slot(2)

    land = Landscape()
    second = make_tuner(recipe_path, store, ScriptedAgent([SEQS_512]), land)
    assert second.best.content_hash == s1.recipe_id
    assert second.best_score == pytest.approx(s1.score)
    base = second.run_baseline()
    r1, r2 = second.run_slot(1), second.run_slot(2)
    assert base.resumed and r1.resumed and r2.resumed
    assert (r1.status, r1.recipe_id, r1.score) == ("kept", s1.recipe_id, s1.score)
    assert (r2.status, r2.reason) == ("rejected", s2.reason)
    assert land.calls == []

    s3 = second.run_slot(3)
    assert not s3.resumed and s3.exp == 3 and s3.status == "kept"
    # Scored against the stored reference: 512 -> 1.4 x the baseline.
    assert s3.score == pytest.approx(1.4)
    assert [r["exp"] for r in store.experiments()] == [0, 1, 2, 3]


def test_measurements_round_trip_through_the_store() -> None:
    m = fake_measurement("chat", [97.0, 100.0, 103.0])
    back = Measurement.from_dict(json.loads(json.dumps(m.to_dict())))
    assert back.median("output_throughput") == m.median("output_throughput")
    assert back.cv("output_throughput") == pytest.approx(m.cv("output_throughput"))
    assert back.headline() == m.headline()


def test_resume_refuses_a_recipe_edited_since_the_run(tmp_path: Path, recipe_path: Path) -> None:
    store = new_store(tmp_path)
    make_tuner(recipe_path, store, ScriptedAgent([]), Landscape()).run_baseline()
    recipe_path.write_text(RECIPE_YAML.replace("max_num_seqs: 128", "max_num_seqs: 96"))
    with pytest.raises(ForgeError, match="the recipe changed since tune run"):
        make_tuner(recipe_path, store, NoAgent(), Landscape())


def _child(store_path: str, recipe_path: str, budget: int) -> None:
    """Run in a subprocess by the kill test: a slow tune that gets SIGKILLed."""
    agent = ScriptedAgent([SEQS_256, SEQS_64, SEQS_512, PREFIX, FP8][:budget])
    tuner = make_tuner(
        Path(recipe_path), RunStore.open(Path(store_path)), agent, Landscape(delay_s=0.3),
        budget=budget,
    )  # fmt: skip
    tuner.run_baseline()
    for slot in range(1, budget + 1):
        tuner.run_slot(slot)
    tuner.finalize(remeasure=False)


def test_sigkill_loses_at_most_the_experiment_in_flight(tmp_path: Path, recipe_path: Path) -> None:
    store = new_store(tmp_path)
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import test_tuner; "
        "test_tuner._child(sys.argv[2], sys.argv[3], 5)"
    )
    argv = [
        sys.executable,
        "-c",
        code,
        str(Path(__file__).parent),
        str(store.path),
        str(recipe_path),
    ]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while len(store.experiments()) < 3:  # the baseline and 2 experiments
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            assert time.monotonic() < deadline, "the child tune made no progress"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=10)
        if proc.stdout:
            proc.stdout.close()
        if proc.stderr:
            proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    stored = len(store.experiments())
    assert stored in (3, 4)  # the kill may land just after exp 3 was stored
    assert not store.is_completed

    land = Landscape()
    agent = ScriptedAgent([SEQS_256, SEQS_64, SEQS_512, PREFIX, FP8][stored - 1 :])
    tuner = make_tuner(recipe_path, store, agent, land, budget=5)
    outcomes = [tuner.run_baseline()] + [tuner.run_slot(s) for s in range(1, 6)]
    assert [o.resumed for o in outcomes] == [True] * stored + [False] * (6 - stored)
    assert len(land.calls) == 6 - stored  # only the experiments never stored ran
    records = store.experiments()
    assert [r["exp"] for r in records] == list(range(6))
    assert [r["slot"] for r in records] == [None, 1, 2, 3, 4, 5]


# -- finalize ------------------------------------------------------------------------------
def test_finalize_writes_the_confirmed_winner_into_the_recipe(
    tmp_path: Path, recipe_path: Path
) -> None:
    committed = Recipe.load(recipe_path)
    store = new_store(tmp_path)
    land = Landscape(cv=0.01)
    agent = ScriptedAgent([SEQS_256, SEQS_64, SEQS_512])
    tuner = make_tuner(recipe_path, store, agent, land, budget=3)
    tuner.run_baseline()
    assert [tuner.run_slot(s).status for s in (1, 2, 3)] == ["kept", "rejected", "kept"]

    calls = len(land.calls)
    result = tuner.finalize()
    assert len(land.calls) == calls + 1  # the confirmation run
    assert result.path == recipe_path and result.winner is not None
    assert result.confirmed_score == pytest.approx(1.4)
    assert result.confirmation is not None  # the summary table shows the confirmation run
    assert set(result.confirmation.measurements) == set(WORKLOADS)
    assert "written to" in result.message

    text = recipe_path.read_text()
    assert text.startswith("# The CPU recipe CI gates on. Keep this comment")
    assert "# the committed batching cap" in text
    written = Recipe.load(recipe_path)
    assert written.id == "tiny"
    assert written.config["max_num_seqs"] == 512
    assert written.lineage.generation == committed.lineage.generation + 1
    assert written.lineage.parent_id == committed.content_hash
    assert written.lineage.rationale == "raise the batching cap; raise it further"
    assert set(written.baselines) == {"chat", "rag"}
    assert written.baselines["chat"].output_throughput == pytest.approx(140.0)
    assert written.baselines["rag"].output_throughput == pytest.approx(70.0)
    assert written.baselines["chat"].accuracy == pytest.approx(0.99)
    assert written.baselines["chat"].repeats == 3
    assert written.baselines["chat"].cv == pytest.approx(0.01)
    assert written.baselines["chat"].measured_with.hardware == "test cpu"
    done = json.loads((store.path / "completed.json").read_text())
    assert done["winner"] == written.content_hash and done["confirmed_score"] == pytest.approx(1.4)
    assert tuner.finalize() is result  # idempotent: no second confirmation or write
    assert len(land.calls) == calls + 1


def test_finalize_without_a_winner_leaves_the_file_byte_identical(
    tmp_path: Path, recipe_path: Path
) -> None:
    original = recipe_path.read_bytes()
    store = new_store(tmp_path)
    tuner = make_tuner(recipe_path, store, ScriptedAgent([SEQS_64, FP8]), Landscape(), budget=2)
    tuner.run_baseline()
    tuner.run_slot(1)
    tuner.run_slot(2)
    result = tuner.finalize()
    assert result.winner is None and result.path is None
    assert result.message == "tiny: no candidate beat the committed baseline; recipes/ untouched"
    assert recipe_path.read_bytes() == original
    assert store.is_completed


def test_finalize_writes_nothing_when_the_win_does_not_hold_up(
    tmp_path: Path, recipe_path: Path
) -> None:
    original = recipe_path.read_bytes()
    land = Landscape()
    tuner = make_tuner(recipe_path, new_store(tmp_path), ScriptedAgent([SEQS_256]), land, budget=1)
    tuner.run_baseline()
    kept = tuner.run_slot(1)
    assert kept.status == "kept"
    land.override[kept.recipe_id] = 1.01  # the re-measurement finds the gain was luck
    result = tuner.finalize()
    assert result.winner is None and result.confirmed_score == pytest.approx(1.01)
    assert "did not hold up on re-measurement" in result.message
    assert recipe_path.read_bytes() == original


def test_finalize_after_a_kill_between_write_and_completed(
    tmp_path: Path, recipe_path: Path
) -> None:
    store = new_store(tmp_path)
    tuner = make_tuner(recipe_path, store, ScriptedAgent([SEQS_256]), Landscape(), budget=1)
    tuner.run_baseline()
    tuner.run_slot(1)
    tuner.finalize(remeasure=False)
    written = recipe_path.read_bytes()
    (store.path / "completed.json").unlink()  # as if killed right after the write

    land = Landscape()
    again = make_tuner(recipe_path, store, NoAgent(), land, budget=1)
    assert again.run_slot(1).resumed
    result = again.finalize()
    assert "already written" in result.message and land.calls == []
    assert recipe_path.read_bytes() == written and store.is_completed


# -- Claude through the SDK against a local Messages API ----------------------------------
class _FakeMessagesAPI(BaseHTTPRequestHandler):
    """POST /v1/messages on 127.0.0.1: answers the scripted texts in turn, records bodies."""

    answers: ClassVar[list[str]] = []
    bodies: ClassVar[list[dict[str, Any]]] = []
    keys: ClassVar[list[str]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        type(self).bodies.append(body)
        # The SDK sends the key as x-api-key or, in newer releases, a bearer token.
        auth = self.headers.get("authorization", "").removeprefix("Bearer ")
        type(self).keys.append(self.headers.get("x-api-key") or auth)
        text = type(self).answers.pop(0)
        reply = json.dumps(
            {
                "id": "msg_1",
                "type": "message",
                "role": "assistant",
                "model": body["model"],
                "content": [{"type": "text", "text": text}],
                "stop_reason": "end_turn",
                "stop_sequence": None,
                "usage": {"input_tokens": 1000, "output_tokens": 50},
            }
        ).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args: Any) -> None:
        pass


def test_claude_through_the_sdk_proposes_and_a_malformed_answer_is_rejected(
    tmp_path: Path, recipe_path: Path
) -> None:
    from pytest_forge.hardware import HostHardware
    from pytest_forge.tune.agent import make_agent
    from pytest_forge.tune.playbook import load_playbook

    good = (
        '{"rationale": "bigger batches amortise the step", "changes": {"config.max_num_seqs": 64}}'
    )
    _FakeMessagesAPI.answers = ["Raise max_num_seqs, I think."] * 3 + [good]
    _FakeMessagesAPI.bodies, _FakeMessagesAPI.keys = [], []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeMessagesAPI)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        env = {
            "ANTHROPIC_API_KEY": "sk-ant-test-secret",
            "ANTHROPIC_BASE_URL": f"http://127.0.0.1:{server.server_address[1]}",
        }
        playbook = load_playbook()
        agent = make_agent("anthropic/claude-sonnet-4-6", playbook, env)
        store = new_store(tmp_path)
        land = Landscape()
        tuner = Tuner(
            Recipe.load(recipe_path),
            agent,
            store,
            TuneOptions(budget=2, patience=10),
            hardware=HostHardware("cpu", [], "AMD EPYC", 2),
            hardware_class="CPU",
            search_space=playbook.search_space("CPU"),
            evaluate=land,
            measured_with=measured_with,
        )
        tuner.run_baseline()
        bad = tuner.run_slot(1)  # three answers that are not JSON: refused, re-asked, given up
        applied = tuner.run_slot(2)
    finally:
        server.shutdown()
        server.server_close()

    assert bad.status == "invalid" and "not valid JSON" in (bad.reason or "")
    assert applied.status in ("kept", "rejected") and applied.exp == 2
    assert (
        land.calls[-1]
        == Recipe.load(recipe_path).with_changes({"config.max_num_seqs": 64}).content_hash
    )  # the mutation Claude answered is what was measured
    first = _FakeMessagesAPI.bodies[0]
    assert "What to try first" in first["system"]  # the playbook
    assert "Hardware class: CPU" in first["messages"][0]["content"]
    history = _FakeMessagesAPI.bodies[3]["messages"][0]["content"]
    assert "not valid JSON" in history  # the failed experiment is in the next prompt
    assert set(_FakeMessagesAPI.keys) == {"sk-ant-test-secret"}
    records = store.experiments()
    assert records[-1]["rationale"] == "bigger batches amortise the step"
    assert "sk-ant-test-secret" not in "".join(
        p.read_text() for p in store.path.rglob("*") if p.is_file()
    )


# -- nothing is lost to a concurrent writer -----------------------------------------------
def _tune_to_a_winner(tmp_path: Path, recipe_path: Path) -> Tuner:
    tuner = make_tuner(
        recipe_path, new_store(tmp_path), ScriptedAgent([SEQS_256]), Landscape(), budget=1
    )
    tuner.run_baseline()
    assert tuner.run_slot(1).status == "kept"
    return tuner


def test_write_back_keeps_an_edit_made_to_another_field_during_the_tune(
    tmp_path: Path, recipe_path: Path
) -> None:
    committed = Recipe.load(recipe_path)
    tuner = _tune_to_a_winner(tmp_path, recipe_path)
    # Meanwhile someone edits the recipe: a gate and a comment, nothing the tune changed.
    recipe_path.write_text(
        recipe_path.read_text().replace(
            "gates:\n  accuracy_floor: 0.9",
            "gates:\n  accuracy_floor: 0.85  # lowered during the tune\n  "
            "throughput_tolerance: 0.07",
        )
    )
    result = tuner.finalize(remeasure=False)
    assert not result.failed and result.path == recipe_path
    written = Recipe.load(recipe_path)
    assert written.config["max_num_seqs"] == 256  # the tune's change
    # Before: the whole tuned recipe was merged over the file, reverting the edit.
    assert written.gates.accuracy_floor == 0.85
    assert written.gates.throughput_tolerance == 0.07
    assert "# lowered during the tune" in recipe_path.read_text()
    assert written.lineage.parent_id == committed.content_hash
    assert set(written.baselines) == set(WORKLOADS)
    assert result.winner is not None and result.winner.gates.accuracy_floor == 0.85


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (
            ("max_num_seqs: 128", "max_num_seqs: 200"),
            "config.max_num_seqs changed in the file while the tune ran (128 when it "
            "started, 200 now; the winner has 256)",
        ),
        (
            ('VLLM_CPU_KVCACHE_SPACE: "1"', 'VLLM_CPU_KVCACHE_SPACE: "2"'),
            "env.VLLM_CPU_KVCACHE_SPACE changed in the file while the tune ran ('1' when it "
            "started, '2' now): the winner was measured without that edit",
        ),
    ],
)
def test_write_back_refuses_to_revert_a_serving_edit_made_during_the_tune(
    tmp_path: Path, recipe_path: Path, edit: tuple[str, str], expected: str
) -> None:
    tuner = _tune_to_a_winner(tmp_path, recipe_path)
    recipe_path.write_text(recipe_path.read_text().replace(*edit))
    edited = recipe_path.read_bytes()
    result = tuner.finalize(remeasure=False)
    assert result.failed and result.winner is None
    assert expected in result.message
    assert str(tuner.store.best_recipe_path) in result.message  # where the winner is
    assert recipe_path.read_bytes() == edited  # nothing reverted, nothing half-applied
    assert tuner.store.is_completed


def _resume_slot_child(store_path: str, recipe_path: str, barrier: str) -> None:
    """In a child process: resume the run and measure slot 1, as `--forge-resume` does."""
    from tests.unit.concurrency import wait_for

    tuner = make_tuner(
        Path(recipe_path), RunStore.open(Path(store_path)), ScriptedAgent([SEQS_256]),
        Landscape(delay_s=0.3), budget=2,
    )  # fmt: skip
    wait_for(Path(barrier))
    try:
        outcome = tuner.run_slot(1)
    except ForgeError as exc:
        print(f"refused: {exc}")
        sys.exit(3)
    print(f"stored exp {outcome.exp}")


def test_two_resumes_of_one_run_store_one_experiment_and_the_run_stays_resumable(
    tmp_path: Path, recipe_path: Path
) -> None:
    from tests.unit.concurrency import run_together

    store = new_store(tmp_path)
    make_tuner(recipe_path, store, NoAgent(), Landscape(), budget=2).run_baseline()
    args = [str(store.path), str(recipe_path), str(tmp_path / "go")]
    results = run_together(
        "tests.unit.test_tuner", "_resume_slot_child", [args, args], tmp_path / "go"
    )
    codes = sorted(r.returncode for r in results)
    assert codes == [0, 3], [r.stderr for r in results]
    refused = next(r for r in results if r.returncode == 3).stdout
    assert "experiment 1 cannot be stored: the run already holds 2" in refused
    assert "another process wrote to this run" in refused
    assert [r["exp"] for r in store.experiments()] == [0, 1]
    # Before: both stored "exp 1", and every later resume failed "out of sequence".
    again = make_tuner(recipe_path, store, ScriptedAgent([SEQS_512]), Landscape(), budget=2)
    assert again.run_slot(1).resumed
    assert again.run_slot(2).exp == 2
