"""The tune winner's A/B confirmation: finalize with a fake confirm, the combined interval
against scipy, and tune_confirm's round loop against stub servers and a fake bench."""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import pytest
from scipy import stats as sps

from pytest_forge import ab as ab_module
from pytest_forge import session as session_module
from pytest_forge.endpoint import Endpoint
from pytest_forge.errors import ServerError
from pytest_forge.metrics import Measurement, RepeatSummary, RequestRecord
from pytest_forge.recipe import Recipe
from pytest_forge.results import CaseResult
from pytest_forge.session import ForgeConfig, ForgeSession
from pytest_forge.stats import compare_paired
from pytest_forge.tune.confirmation import ABConfirmation, WorkloadAB, combine, settled_on
from pytest_forge.tune.options import TuneOptions
from pytest_forge.tune.run_report import render_report
from pytest_forge.tune.settings import TuneSettings
from pytest_forge.tune.store import RunStore
from pytest_forge.tune.tuner import Tuner
from pytest_forge.tune_confirm import make_confirm
from tests.unit.test_tuner import (
    BASE_TPUT,
    RECIPE_YAML,
    SEQS_256,
    WORKLOADS,
    Landscape,
    ScriptedAgent,
    fake_measurement,
    fake_verdict,
    measured_with,
    new_store,
)


# -- a fake confirm --------------------------------------------------------------------------
def _case(workload: str, a: Sequence[float], b: Sequence[float], accuracy: float) -> CaseResult:
    """What run_ab_case returns: B's measurement, A's as its reference, B's verdict."""
    m_a, m_b = fake_measurement(workload, a), fake_measurement(workload, b)
    verdict = fake_verdict("tiny", workload, accuracy)
    return CaseResult("tiny", workload, m_b, None, verdict, reference=m_a)


class FakeConfirm:
    """confirm(committed, winner): every workload's rounds drawn from a fixed B/A ratio."""

    def __init__(
        self,
        ratio: float,
        *,
        rounds: int = 6,
        spread: float = 0.03,
        accuracy: float = 0.99,
        error: str | None = None,
        raises: Exception | None = None,
    ) -> None:
        self.ratio, self.rounds, self.spread = ratio, rounds, spread
        self.accuracy, self.error, self.raises = accuracy, error, raises
        self.calls: list[tuple[str, str]] = []

    def __call__(self, committed: Recipe, winner: Recipe) -> ABConfirmation:
        self.calls.append((committed.content_hash, winner.content_hash))
        if self.raises is not None:
            raise self.raises
        if self.error is not None:
            return ABConfirmation("output_throughput", True, (), "repeat", self.error)
        rng = random.Random(7)
        workloads = []
        for w in WORKLOADS:
            drift = [BASE_TPUT[w] * rng.uniform(0.8, 1.2) for _ in range(self.rounds)]
            b = [x * self.ratio * rng.uniform(1 - self.spread, 1 + self.spread) for x in drift]
            case = _case(w, drift, b, self.accuracy)
            workloads.append(WorkloadAB.from_case(case, "output_throughput", True))
        return ABConfirmation("output_throughput", True, tuple(workloads), "repeat")


def _tuner(recipe_path: Path, store: RunStore, evaluate: Any, confirm: Any) -> Tuner:
    return Tuner(
        Recipe.load(recipe_path),
        ScriptedAgent([SEQS_256]),
        store,
        TuneOptions(budget=1, patience=10),
        hardware=None,
        hardware_class="CPU",
        search_space=None,
        evaluate=evaluate,
        measured_with=measured_with,
        confirm=confirm,
    )


@pytest.fixture
def recipe_path(tmp_path: Path) -> Path:
    path = tmp_path / "recipes" / "tiny.yaml"
    path.parent.mkdir()
    path.write_text(RECIPE_YAML)
    return path


def _tuned(tmp_path: Path, recipe_path: Path, confirm: Any) -> tuple[Tuner, Landscape, RunStore]:
    land, store = Landscape(cv=0.01), new_store(tmp_path)
    tuner = _tuner(recipe_path, store, land, confirm)
    tuner.run_baseline()
    assert tuner.run_slot(1).status == "kept"
    return tuner, land, store


def test_a_confirmed_winner_is_written_with_the_ab_numbers_and_baselines_from_b(
    tmp_path: Path, recipe_path: Path
) -> None:
    confirm = FakeConfirm(1.3)
    tuner, land, store = _tuned(tmp_path, recipe_path, confirm)
    calls = len(land.calls)
    result = tuner.finalize()
    assert len(land.calls) == calls  # no re-measurement: the A/B replaces it
    assert confirm.calls == [(tuner.recipe.content_hash, tuner.best.content_hash)]
    assert result.winner is not None and result.path == recipe_path
    ab = result.ab
    assert ab is not None and ab.confirmed
    combined = ab.combined
    assert combined is not None and combined.ci_low > 1.0
    assert result.confirmed_score == pytest.approx(combined.ratio)
    assert f"winner {combined.ratio:.2f}x [{combined.ci_low:.2f}, {combined.ci_high:.2f}]" in (
        result.message
    )
    assert "over the committed recipe in 6 interleaved rounds" in result.message
    assert "written to" in result.message

    written = Recipe.load(recipe_path)
    assert written.config["max_num_seqs"] == 256
    for w in WORKLOADS:  # baselines are side B's A/B rounds, not the tune's measurement
        b = ab.measurements[w]
        assert written.baselines[w].repeats == 6
        assert written.baselines[w].output_throughput == pytest.approx(
            b.median("output_throughput"), abs=0.01
        )
        assert written.baselines[w].accuracy == pytest.approx(0.99)
    # The summary table gets the A/B rows.
    assert result.confirmation is not None
    assert {c.workload for c in result.confirmation.cases} == set(WORKLOADS)

    done = json.loads((store.path / "completed.json").read_text())
    stored = done["ab_confirmation"]
    assert stored["confirmed"] is True and stored["ratio"] == pytest.approx(combined.ratio)
    assert stored["workloads"]["chat"]["rounds"] == 6
    assert len(stored["workloads"]["chat"]["ratios"]) == 6
    report = render_report(store.path)
    assert "A/B confirmation (output_throughput): " in report
    assert "chat: 1." in report and "in 6 rounds" in report


def test_an_interval_straddling_one_leaves_recipes_untouched(
    tmp_path: Path, recipe_path: Path
) -> None:
    original = recipe_path.read_bytes()
    confirm = FakeConfirm(1.02, rounds=4, spread=0.15)
    tuner, _, store = _tuned(tmp_path, recipe_path, confirm)
    result = tuner.finalize()
    assert result.winner is None and recipe_path.read_bytes() == original
    ab = result.ab
    assert ab is not None and not ab.confirmed
    c = ab.combined
    assert c is not None and c.ci_low <= 1.0 < c.ci_high
    assert f"not confirmed: {c.ratio:.2f}x [{c.ci_low:.2f}, {c.ci_high:.2f}]" in result.message
    assert "in 4 interleaved rounds" in result.message
    assert result.message.endswith("recipes/ untouched")
    done = json.loads((store.path / "completed.json").read_text())
    assert done["ab_confirmation"]["confirmed"] is False


def test_a_broken_floor_in_the_ab_leaves_recipes_untouched(
    tmp_path: Path, recipe_path: Path
) -> None:
    original = recipe_path.read_bytes()
    tuner, _, _ = _tuned(tmp_path, recipe_path, FakeConfirm(1.3, accuracy=0.7))
    result = tuner.finalize()
    assert result.winner is None and recipe_path.read_bytes() == original
    assert "breaks a floor in the A/B confirmation" in result.message
    assert "accuracy 0.700" in result.message


@pytest.mark.parametrize("how", ["returned", "raised"])
def test_a_boot_failure_in_the_ab_leaves_recipes_untouched_with_the_cause(
    tmp_path: Path, recipe_path: Path, how: str
) -> None:
    original = recipe_path.read_bytes()
    cause = "the server for recipe tiny failed to boot\n--- log ---\nValueError: no KV space"
    confirm = (
        FakeConfirm(1.3, error=cause)
        if how == "returned"
        else FakeConfirm(1.3, raises=ServerError(cause, "", None))
    )
    tuner, _, store = _tuned(tmp_path, recipe_path, confirm)
    result = tuner.finalize()
    assert result.winner is None and recipe_path.read_bytes() == original
    assert "the A/B confirmation of candidate" in result.message
    assert "failed to boot" in result.message and "no KV space" in result.message
    done = json.loads((store.path / "completed.json").read_text())
    assert "no KV space" in done["confirmation_error"]
    assert done["ab_confirmation"]["confirmed"] is False


def test_without_remeasure_the_tuned_numbers_are_trusted_and_no_ab_runs(
    tmp_path: Path, recipe_path: Path
) -> None:
    confirm = FakeConfirm(1.3)
    tuner, _, _ = _tuned(tmp_path, recipe_path, confirm)
    result = tuner.finalize(remeasure=False)
    assert confirm.calls == [] and result.ab is None and result.winner is not None


# -- the statistics ---------------------------------------------------------------------------
def _logs(rng: random.Random, n: int, mu: float, sd: float) -> list[float]:
    return [rng.gauss(mu, sd) for _ in range(n)]


def _ab(workload: str, logs: Sequence[float], higher_is_better: bool = True) -> WorkloadAB:
    a = [100.0 + 10 * i for i in range(len(logs))]
    if higher_is_better:
        b = [x * math.exp(d) for x, d in zip(a, logs, strict=True)]
    else:  # latency: the winner's is lower, and the oriented ratio is A/B
        b = [x / math.exp(d) for x, d in zip(a, logs, strict=True)]
    return WorkloadAB(workload, tuple(a), tuple(b), higher_is_better)


def test_one_workload_is_the_paired_t_interval() -> None:
    logs = _logs(random.Random(1), 7, 0.1, 0.05)
    w = _ab("chat", logs)
    conf = ABConfirmation("output_throughput", True, (w,))
    c = conf.combined
    assert c is not None
    low, high = sps.ttest_1samp(logs, 0.0).confidence_interval(0.95)
    assert (c.ci_low, c.ci_high) == pytest.approx((math.exp(low), math.exp(high)), rel=1e-9)
    assert c.ratio == pytest.approx(math.exp(sum(logs) / len(logs)))
    paired = compare_paired(w.a_values, w.b_values, higher_is_better=True, tolerance=0.0)
    assert (c.ci_low, c.ci_high) == pytest.approx((paired.ci_low, paired.ci_high), rel=1e-9)
    assert w.median_ratio == pytest.approx(math.exp(sorted(logs)[3]))


@pytest.mark.parametrize("higher_is_better", [True, False])
def test_two_workloads_combine_as_welch_on_the_summed_log_means(higher_is_better: bool) -> None:
    rng = random.Random(2)
    x, y = _logs(rng, 5, 0.2, 0.08), _logs(rng, 9, 0.05, 0.02)
    conf = ABConfirmation(
        "m", higher_is_better, (_ab("a", x, higher_is_better), _ab("b", y, higher_is_better))
    )
    c = conf.combined
    assert c is not None
    # L = (mean x + mean y) / 2; Welch's test of x against -y is the interval of 2L with the
    # same SE and Welch-Satterthwaite df.
    low, high = sps.ttest_ind(x, [-v for v in y], equal_var=False).confidence_interval(0.95)
    assert (c.ci_low, c.ci_high) == pytest.approx((math.exp(low / 2), math.exp(high / 2)), rel=1e-9)
    assert c.ratio == pytest.approx(math.exp((sum(x) / 5 + sum(y) / 9) / 2))
    assert conf.confirmed  # both workloads gained: the interval lies above 1


def test_degenerate_spreads() -> None:
    flat = combine([(math.log(1.2), 0.0, 4), (math.log(1.1), 0.0, 4)], 0.95)
    assert flat.ci_low == flat.ci_high == pytest.approx(math.sqrt(1.2 * 1.1))
    one_round = ABConfirmation("m", True, (_ab("a", [0.5]), _ab("b", [0.3, 0.31])))
    c = one_round.combined
    assert c is not None and c.ci_low == 0.0 and math.isinf(c.ci_high)
    assert not one_round.confirmed  # one round never confirms, however big its ratio
    assert one_round.to_dict()["ci_high"] is None  # JSON-safe


def test_a_workload_without_the_metric_is_a_problem_not_a_ratio() -> None:
    a = fake_measurement("chat", [100.0, 100.0])
    case = CaseResult("tiny", "chat", a, None, fake_verdict("tiny", "chat", 0.99), reference=a)
    w = WorkloadAB.from_case(case, "goodput", True)  # goodput: None in every repeat
    conf = ABConfirmation("goodput", True, (w,))
    assert conf.combined is None and not conf.confirmed
    assert "goodput was not measured" in (conf.problem or "")


def test_settled_stops_on_a_decided_interval_only() -> None:
    settled = settled_on("output_throughput", True)
    a = fake_measurement("chat", [100, 104, 98, 101])
    assert settled(a, fake_measurement("chat", [130, 135, 127, 131]))  # above 1
    assert settled(a, fake_measurement("chat", [70, 72, 69, 71]))  # below 1
    assert not settled(a, fake_measurement("chat", [104, 98, 103, 97]))  # straddles
    latency = settled_on("e2el_p99_ms", False)
    fast = fake_measurement("chat", [100, 100, 100, 100], p99_ms=100.0)
    assert latency(fake_measurement("chat", [100, 100, 100, 100], p99_ms=200.0), fast)


# -- tune_confirm's round loop against stub servers and a fake bench -------------------------
class StubServer:
    """Stands in for VllmServer: records boots and stops; the URL names the recipe."""

    events: ClassVar[list[str]] = []
    fail_seqs: ClassVar[int | None] = None

    def __init__(self, recipe: Recipe, run_dir: Path, **kwargs: Any) -> None:
        self.seqs = recipe.config["max_num_seqs"]
        self.up = False

    def start(self) -> Endpoint:
        StubServer.events.append(f"boot {self.seqs}")
        if self.seqs == StubServer.fail_seqs:
            raise ServerError(f"vLLM exited with code 1 (max_num_seqs {self.seqs})", "tail", None)
        self.up = True
        return Endpoint(f"http://127.0.0.1:1/seqs{self.seqs}")

    def stop(self) -> None:
        if self.up:
            StubServer.events.append(f"stop {self.seqs}")
        self.up = False

    def check_alive(self) -> None:
        pass

    def wait_until_idle(self) -> float:
        return 0.0


class FakeBench:
    """run_bench: one repeat whose throughput is the recipe's speed times a drift."""

    def __init__(self, speed: dict[int, float], noise: float) -> None:
        self.speed, self.rng, self.noise = speed, random.Random(3), noise
        self.sides: list[int] = []

    def __call__(self, endpoint: Endpoint, workload: Any, bench: Any, **kw: Any) -> Measurement:
        seqs = int(endpoint.url.rsplit("seqs", 1)[1])
        self.sides.append(seqs)
        t = self.speed[seqs] * self.rng.uniform(1 - self.noise, 1 + self.noise)
        records = [
            RequestRecord(r.id, 0.0, [0.1], 0.1, 0.5, 4, 8, f"text {r.id}", None)
            for r in workload.requests
        ]
        repeat = RepeatSummary(len(records), 0, 1.0, 40, int(t), 2.0, t, t + 40, None)
        return Measurement(workload.name, [repeat], [records], [None], "0.32.0", False)


def _recipe(tmp_path: Path, seqs: int) -> Recipe:
    path = tmp_path / "recipes" / "tiny.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(
        f"id: tiny\nmodel: m\nhardware: {{vendor: cpu}}\nconfig: {{max_num_seqs: {seqs}}}\n"
    )
    return Recipe.load(path)


def _confirm(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, level: str, bench: FakeBench
) -> tuple[Callable[[Recipe, Recipe], ABConfirmation], ForgeSession]:
    StubServer.events, StubServer.fail_seqs = [], None
    monkeypatch.setattr(session_module, "VllmServer", StubServer)
    monkeypatch.setattr(ab_module, "run_bench", bench)
    workloads = tmp_path / "workloads"
    workloads.mkdir()
    for name in ("chat", "rag"):
        (workloads / f"{name}.jsonl").write_text(
            "".join(
                json.dumps({"id": f"r{i}", "prompt": f"p{i}", "expected_output_tokens": 8}) + "\n"
                for i in range(3)
            )
        )
    config = ForgeConfig(
        recipes_dir=tmp_path / "recipes",
        workloads_dir=workloads,
        run_root=tmp_path / ".forge",
        ab_level=level,  # type: ignore[arg-type]
        max_repeats=8,
    )
    session = ForgeSession(config)
    settings = TuneSettings(
        options=TuneOptions(budget=1),
        agent="playbook",
        playbook=None,
        repeats=None,
        accuracy_floor=0.9,
        workloads_dir=workloads,
        workloads=("chat", "rag"),
        boot_timeout_s=10.0,
    )
    return make_confirm(session, settings), session


def test_repeat_level_keeps_both_up_runs_abba_and_stops_once_decided(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bench = FakeBench({128: 100.0, 256: 130.0}, noise=0.03)
    confirm, session = _confirm(tmp_path, monkeypatch, "repeat", bench)
    committed, winner = _recipe(tmp_path, 128), _recipe(tmp_path, 256)
    result = confirm(committed, winner)
    assert result.error is None and result.level == "repeat"
    assert [w.workload for w in result.workloads] == ["chat", "rag"]
    # Decided at the minimum: ab.MIN_ROUNDS rounds per workload, in ABBA order.
    assert [w.rounds for w in result.workloads] == [ab_module.MIN_ROUNDS] * 2
    assert bench.sides[:8] == [128, 256, 256, 128, 128, 256, 256, 128]
    assert result.confirmed and result.combined is not None
    assert result.combined.ratio == pytest.approx(1.3, rel=0.05)
    # Accuracy by agreement with side A's outputs of the same rounds.
    assert [w.accuracy for w in result.workloads] == [1.0, 1.0]
    # One boot per side for every workload, both stopped at the end.
    assert StubServer.events[:2] == ["boot 128", "boot 256"]
    assert sorted(StubServer.events[2:]) == ["stop 128", "stop 256"]
    assert session.live_servers == set()


def test_an_undecided_ab_adds_rounds_up_to_the_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bench = FakeBench({128: 100.0, 256: 100.0}, noise=0.2)
    confirm, _ = _confirm(tmp_path, monkeypatch, "repeat", bench)
    result = confirm(_recipe(tmp_path, 128), _recipe(tmp_path, 256))
    assert [w.rounds for w in result.workloads] == [8, 8]  # --forge-max-repeats 8
    assert not result.confirmed


def test_boot_level_runs_one_side_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bench = FakeBench({128: 100.0, 256: 150.0}, noise=0.01)
    confirm, session = _confirm(tmp_path, monkeypatch, "boot", bench)
    result = confirm(_recipe(tmp_path, 128), _recipe(tmp_path, 256))
    assert result.confirmed
    up: set[str] = set()
    for event in StubServer.events:  # never both servers up at once
        verb, seqs = event.split()
        (up.add if verb == "boot" else up.discard)(seqs)
        assert len(up) <= 1
    assert session.live_servers == set()


def test_a_boot_failure_is_the_confirmations_error_and_stops_the_other_side(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bench = FakeBench({128: 100.0, 256: 150.0}, noise=0.01)
    confirm, session = _confirm(tmp_path, monkeypatch, "repeat", bench)
    StubServer.fail_seqs = 256
    result = confirm(_recipe(tmp_path, 128), _recipe(tmp_path, 256))
    assert result.error is not None and "vLLM exited with code 1" in result.error
    assert not result.confirmed and result.workloads == ()
    assert StubServer.events == ["boot 128", "boot 256", "stop 128"]
    assert session.live_servers == set()
