"""Agreement that travels: in a tune, candidates are judged against experiment 0's outputs
of the same run, and a recording from other hardware judges nothing. No vLLM: a fake host
whose greedy outputs depend on the recipe, scored through the pipeline's own scorer."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from pytest_forge import pipeline
from pytest_forge.accuracy import load_recorded_outputs, save_recorded_outputs
from pytest_forge.hardware import HostHardware
from pytest_forge.metrics import Measurement, RequestRecord
from pytest_forge.pipeline import GateOptions, floors_for
from pytest_forge.recipe import MeasuredWith, Recipe
from pytest_forge.results import CaseResult, Evaluation, baseline_from
from pytest_forge.tune.options import TuneOptions
from pytest_forge.tune.reference_outputs import EXP0_OUTPUTS
from pytest_forge.tune.store import EXPERIMENTS, RunStore
from pytest_forge.tune.tuner import Tuner
from pytest_forge.verdict import judge, tolerances
from pytest_forge.workload import AccuracySpec, Replay, Workload, WorkloadRequest
from tests.unit.test_tuner import RECIPE_YAML, SEQS_256, SEQS_512, ScriptedAgent, fake_measurement

HOST = HostHardware("cpu", [], "Intel Xeon", 2, "avx2")
AVX512 = "cpu: Intel Xeon (2 cores, avx512f)"
# What the avx512 host recorded; this host's greedy outputs differ on r3 (near-tied logits).
RECORDED = {"r1": "alpha beta gamma delta", "r2": "one two three four", "r3": "red green blue"}
HERE = {**RECORDED, "r3": "zzz"}  # agreement with RECORDED: about 0.67, below the 0.9 floor
GARBLED = {"r1": "qqqq", "r2": "xxxx", "r3": "zzz"}


def workload(scorer: str = "agreement", references: Mapping[str, str] | None = None) -> Workload:
    requests = []
    for line, rid in enumerate(sorted(RECORDED), start=1):
        ref = (references or {}).get(rid)
        request = WorkloadRequest(id=rid, prompt="q", expected_output_tokens=4, reference=ref)
        request._line = line
        requests.append(request)
    replay = Replay(accuracy=AccuracySpec(scorer=scorer))  # type: ignore[arg-type]
    return Workload(name="chat", path=Path("chat.jsonl"), requests=requests, replay=replay)


def measurement_with(texts: Mapping[str, str], throughput: float) -> Measurement:
    m = fake_measurement("chat", [throughput] * 3)
    m.records = [
        [RequestRecord(rid, 0.0, [0.1], 0.1, 0.2, 4, 4, text, None) for rid, text in texts.items()]
    ]
    return m


class FakeHost:
    """Measures a recipe on "this host": its outputs and speed depend on max_num_seqs;
    accuracy and floors come from the pipeline's own scorer and verdict."""

    def __init__(self) -> None:
        self.references: list[Mapping[str, Mapping[str, str]] | None] = []

    def __call__(
        self, recipe: Recipe, reference_outputs: Mapping[str, Mapping[str, str]] | None = None
    ) -> Evaluation:
        self.references.append(reference_outputs)
        seqs = recipe.config.get("max_num_seqs", 128)
        texts = GARBLED if seqs == 512 else HERE
        m = measurement_with(texts, {128: 100.0, 256: 130.0, 512: 160.0}[seqs])
        w = workload()
        options = GateOptions(reference_outputs=reference_outputs)
        accuracy, _ = pipeline._score(recipe, w, m, options)
        floor, slo = floors_for(recipe, w, options)
        verdict = judge(
            recipe.id,
            "chat",
            m,
            accuracy,
            baseline=None,
            accuracy_floor=floor,
            tolerance=tolerances(recipe.gates, None),
            slo=slo,
            vllm_now="0.32.0",
        )
        case = CaseResult(recipe.id, "chat", m, accuracy, verdict)
        return Evaluation({"chat": m}, {"chat": verdict}, cases=[case])


def measured_with() -> MeasuredWith:
    return MeasuredWith(
        vllm="0.32.0", pytest_forge="0.1.0", hardware=HOST.describe(), backend="cpu",
        date="2026-11-22",
    )  # fmt: skip


def committed(tmp_path: Path, recorded_on: str) -> Path:
    """The recipe file, its baseline measured on ``recorded_on``, and that host's outputs."""
    path = tmp_path / "recipes" / "tiny.yaml"
    path.parent.mkdir()
    path.write_text(RECIPE_YAML)
    with_ = measured_with().model_copy(update={"hardware": recorded_on})
    baseline = baseline_from(measurement_with(RECORDED, 100.0), 1.0, with_)
    Recipe.load(path).with_baselines({"chat": baseline}).save(path)
    save_recorded_outputs(path, "chat", RECORDED)
    return path


def tuner(
    path: Path, store: RunStore, script: list[Any], evaluate: Callable[..., Evaluation]
) -> Tuner:
    return Tuner(
        Recipe.load(path),
        ScriptedAgent(script),
        store,
        TuneOptions(budget=3, patience=10),
        hardware=HOST,
        hardware_class="CPU",
        search_space=None,
        evaluate=evaluate,
        measured_with=measured_with,
        clock=time.monotonic,
    )


def new_store(tmp_path: Path) -> RunStore:
    return RunStore.create(tmp_path / ".forge" / "runs", {"recipe_id": "tiny", "budget": 3})


# -- the tune ------------------------------------------------------------------------------
def test_a_recording_from_other_hardware_does_not_block_the_tune(tmp_path: Path) -> None:
    path = committed(tmp_path, AVX512)
    host = FakeHost()
    t = tuner(path, new_store(tmp_path), [SEQS_256], host)

    base = t.run_baseline()
    assert base.accuracy["chat"] == pytest.approx(2 / 3, abs=0.05)  # vs the avx512 recording
    assert base.floors_hold is True
    assert (
        f"chat: recording from {AVX512}, this host is {HOST.describe()}: agreement judged "
        "against this run's experiment 0" in base.reason
    )
    assert "breaks a floor" not in base.reason
    assert host.references == [None]  # exp 0 itself: the recording

    kept = t.run_slot(1)
    assert kept.status == "kept", kept.summary()
    assert kept.accuracy["chat"] == 1.0  # same outputs as exp 0 on this host
    assert host.references[1] == {"chat": HERE}
    # Against the recording the same candidate would have broken the floor.
    assert pipeline._score(t.best, workload(), measurement_with(HERE, 130.0), GateOptions())[
        0
    ].value == pytest.approx(base.accuracy["chat"])  # type: ignore[union-attr]


def test_a_candidate_whose_outputs_differ_from_exp0_breaks_the_floor(tmp_path: Path) -> None:
    path = committed(tmp_path, AVX512)
    t = tuner(path, new_store(tmp_path), [SEQS_512], FakeHost())
    t.run_baseline()
    out = t.run_slot(1)
    assert out.status == "rejected"
    assert out.floors_hold is False
    assert "chat accuracy: accuracy" in out.reason and "< floor 0.9" in out.reason


def test_a_recording_from_this_hardware_is_a_floor_for_exp0(tmp_path: Path) -> None:
    path = committed(tmp_path, HOST.describe())
    t = tuner(path, new_store(tmp_path), [SEQS_256], FakeHost())
    base = t.run_baseline()
    assert base.floors_hold is False
    assert "the committed recipe itself breaks a floor (chat accuracy" in base.reason
    assert "recording from" not in base.reason
    # Candidates are still judged against exp 0 of this run.
    assert t.run_slot(1).status == "kept"


def test_resume_keeps_exp0_outputs(tmp_path: Path) -> None:
    path = committed(tmp_path, AVX512)
    store = new_store(tmp_path)
    tuner(path, store, [], FakeHost()).run_baseline()
    # The stored measurement keeps summaries only: the texts live beside the record.
    (record,) = [json.loads(line) for line in (store.path / EXPERIMENTS).read_text().splitlines()]
    assert "records" not in record["measurements"]["chat"]
    assert (store.path / EXP0_OUTPUTS / "chat.jsonl").is_file()

    host = FakeHost()
    resumed = tuner(path, RunStore.open(store.path), [SEQS_256], host)
    assert resumed.reference_outputs == {"chat": HERE}
    assert resumed.run_slot(1).status == "kept"
    assert host.references == [{"chat": HERE}]  # no baseline re-run, exp 0's reference


def test_a_run_without_stored_outputs_falls_back_to_the_recording(tmp_path: Path) -> None:
    path = committed(tmp_path, AVX512)
    store = new_store(tmp_path)
    tuner(path, store, [], FakeHost()).run_baseline()
    for file in (store.path / EXP0_OUTPUTS).iterdir():
        file.unlink()  # a run begun before exp 0's outputs were kept
    host = FakeHost()
    resumed = tuner(path, RunStore.open(store.path), [SEQS_256], host)
    assert resumed.reference_outputs is None
    assert resumed.run_slot(1).status == "rejected"  # judged against the avx512 recording
    assert host.references == [None]


def test_the_written_winner_records_exp0_outputs_for_the_next_gate(tmp_path: Path) -> None:
    path = committed(tmp_path, AVX512)
    host = FakeHost()
    t = tuner(path, new_store(tmp_path), [SEQS_256], host)
    t.run_baseline()
    assert t.run_slot(1).status == "kept"
    result = t.finalize(remeasure=True)
    assert result.winner is not None, result.message
    assert host.references[-1] == {"chat": HERE}  # the confirmation, judged like the tune
    # The recording now comes from this host, as the written baseline says, and is what
    # the winner's agreement was judged against: the next gate here sees the same value.
    assert load_recorded_outputs(path, "chat") == HERE
    written = Recipe.load(path)
    assert written.baselines["chat"].measured_with.hardware == HOST.describe()
    assert written.baselines["chat"].accuracy == 1.0
    again, _ = pipeline._score(written, workload(), measurement_with(HERE, 130.0), GateOptions())
    assert again is not None and again.value == 1.0


# -- the pipeline's scorer -----------------------------------------------------------------
def test_score_uses_reference_outputs_instead_of_the_recording(tmp_path: Path) -> None:
    path = committed(tmp_path, AVX512)
    recipe = Recipe.load(path)
    m = measurement_with(HERE, 100.0)
    by_recording, _ = pipeline._score(recipe, workload(), m, GateOptions())
    assert by_recording is not None and by_recording.value is not None
    assert by_recording.value < 0.9
    given = GateOptions(reference_outputs={"chat": HERE})
    by_reference, _ = pipeline._score(recipe, workload(), m, given)
    assert by_reference is not None and by_reference.value == 1.0
    # A workload the reference lacks is not measured (reported, not failed), and says why.
    other, _ = pipeline._score(recipe, workload(), m, GateOptions(reference_outputs={}))
    assert other is not None and other.value is None
    assert other.note == pipeline.NO_REFERENCE_OUTPUTS_NOTE
    # Reference scorers score against the workload's references, whatever is given.
    refs = {"r1": "alpha", "r2": "nine", "r3": "zzz"}
    contains, _ = pipeline._score(recipe, workload("contains", refs), m, given)
    assert contains is not None and contains.value == pytest.approx(2 / 3)


def test_make_evaluate_passes_the_reference_to_the_pipeline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pytest_forge import tune_items

    (tmp_path / "workloads").mkdir()
    (tmp_path / "workloads" / "chat.jsonl").write_text(
        '{"id": "r1", "prompt": "q", "expected_output_tokens": 4}\n'
    )
    seen: list[GateOptions] = []

    def fake_evaluate_recipe(recipe: Recipe, workloads: Any, log_dir: Path, options: GateOptions,
                             **kw: Any) -> Evaluation:  # fmt: skip
        seen.append(options)
        return Evaluation({}, {})

    class Printer:
        def phase(self, text: str) -> None: ...
        def done(self) -> None: ...

    monkeypatch.setattr(tune_items, "evaluate_recipe", fake_evaluate_recipe)
    monkeypatch.setattr(tune_items, "_progress", lambda config, label: Printer())
    session = SimpleNamespace(boots=0, vllm_version="0.32.0", device_env=lambda r: {})
    settings = SimpleNamespace(
        workloads_dir=tmp_path / "workloads", workloads=["chat"], repeats=1,
        accuracy_floor=None, boot_timeout_s=1.0,
    )  # fmt: skip
    evaluate = tune_items._make_evaluate(session, None, tmp_path, settings)  # type: ignore[arg-type]
    recipe = Recipe.from_yaml_text(RECIPE_YAML)
    evaluate(recipe)
    evaluate(recipe, reference_outputs={"chat": {"r1": "x"}})
    assert [o.reference_outputs for o in seen] == [None, {"chat": {"r1": "x"}}]
    assert all(o.max_repeats == 1 for o in seen)
