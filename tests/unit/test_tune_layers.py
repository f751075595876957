"""Tuning layers: 1 serving config -> 2 quantization -> 3 kernels (scaffolded).

Which key is in which layer, the plan the options ask for, which layer a slot runs in
(decided from the stored records alone, so a resume continues in the same layer), the
Tuner moving from layer 1 to layer 2 with a scripted agent and a fake bench, the options
checked at start-up, and ``--forge-dry-run`` printing the plan without booting anything.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pytest_forge.errors import ForgeError
from pytest_forge.recipe import Recipe
from pytest_forge.session import ForgeConfig
from pytest_forge.tune.dry_run import PlanInputs, render_plan
from pytest_forge.tune.layer_spaces import (
    LAYERS_FILE,
    RunLayerSpaces,
    config_layer,
    kernels_layer,
    quant_layer,
)
from pytest_forge.tune.layers import (
    LayerPlan,
    LayerSpace,
    decide_layer,
    layer_of,
    layer_problem,
    unrestricted_spaces,
)
from pytest_forge.tune.options import TuneOptions
from pytest_forge.tune.playbook import load_playbook
from pytest_forge.tune.search_space import ParamSpec, SearchSpace
from pytest_forge.tune.settings import fresh_settings, resumed_settings
from pytest_forge.tune.store import RunStore
from pytest_forge.tune.tuner import Tuner
from tests.unit.test_plugin import CACHE, RECIPE, SIDE, _workload
from tests.unit.test_tuner import (
    FP8,
    SEQS_64,
    SEQS_256,
    Landscape,
    P,
    ScriptedAgent,
    measured_with,
    new_store,
)

pytest_plugins = ["pytester"]


def space(**params: list[Any]) -> SearchSpace:
    return SearchSpace(
        params={
            k.replace("__", "."): ParamSpec(values=v, priority=i)
            for i, (k, v) in enumerate(params.items())
        }
    )


CONFIG_SPACE = space(config__max_num_seqs=[64, 128, 256, 512])
QUANT_SPACE = space(quant__kv_cache_quant=["none", "fp8"])
EMPTY = SearchSpace(params={})


@dataclass
class FakeSpaces:
    """Layer spaces as tune_items builds them, counting which layers were asked for."""

    quant: LayerSpace
    asked: list[int]

    def __call__(self, layer: int) -> LayerSpace:
        self.asked.append(layer)
        if layer == 1:
            return LayerSpace(CONFIG_SPACE)
        if layer == 2:
            return self.quant
        return LayerSpace(EMPTY, ("scaffolded: no proposals",))


def spaces(quant: SearchSpace = QUANT_SPACE, *notes: str) -> FakeSpaces:
    return FakeSpaces(LayerSpace(quant, notes), [])


def rec(layer: int | None, status: str = "rejected") -> dict[str, Any]:
    record: dict[str, Any] = {"status": status}
    if layer is not None:
        record["layer"] = layer
    return record


def plan(**options: Any) -> LayerPlan:
    return LayerPlan.from_options(TuneOptions(**{"budget": 10, "patience": 2, **options}))


# -- which key is in which layer -----------------------------------------------------------
@pytest.mark.parametrize(
    ("key", "layer"),
    [
        ("config.max_num_seqs", 1),
        ("compilation.cudagraph_mode", 1),
        ("env.VLLM_CPU_KVCACHE_SPACE", 1),
        ("quant.method", 2),
        ("quant.kv_cache_quant", 2),
        ("model", 2),
        ("env.VLLM_ROCM_USE_AITER", 3),
        ("env.VLLM_ROCM_USE_AITER_MOE", 3),
        ("kernels", 3),
    ],
)
def test_layer_of(key: str, layer: int) -> None:
    assert layer_of(key) == layer


def test_the_playbook_spaces_split_into_layers() -> None:
    playbook = load_playbook()
    h100 = playbook.search_space("H100")
    one = config_layer(h100)
    assert one.space is not None and one.space.params
    assert all(layer_of(k) == 1 for k in one.space.params)
    assert "quant.method (layer 2 (quant))" in one.notes[0]
    # Without the quantization layer's builder: the playbook's quant.* keys as they are.
    two = quant_layer(h100, None)
    assert two.space is not None
    assert set(two.space.params) == {"quant.method", "quant.kv_cache_quant"}
    three = kernels_layer(playbook.search_space("MI300X"))
    assert three.empty and "scaffolded" in three.notes[0]
    assert "env.VLLM_ROCM_USE_AITER" in three.notes[1]


@dataclass(frozen=True)
class FakeQuantLayer:
    params: dict[str, ParamSpec]
    notes: list[str]


def test_layer_two_takes_the_gated_params_with_their_notes() -> None:
    h100 = load_playbook().search_space("H100")
    gated = FakeQuantLayer(
        params={
            "quant.kv_cache_quant": h100.params["quant.kv_cache_quant"],
            "model": ParamSpec(values=["org/model-AWQ"], priority=6),
            "quant.method": ParamSpec(values=["none", "fp8"], priority=6),
        },
        notes=["Hub lookup skipped: offline"],
    )
    layer = quant_layer(h100, gated)
    assert layer.space is not None
    # The playbook's order first, then what it does not list.
    assert list(layer.space.params) == ["quant.method", "quant.kv_cache_quant", "model"]
    assert layer.notes == ("Hub lookup skipped: offline",)
    assert layer.space.params["quant.method"].values == ["none", "fp8"]  # gated, not the playbook's
    cpu = quant_layer(h100, FakeQuantLayer({}, ["no quantization on CPU"]))
    assert cpu.empty and cpu.notes == ("no quantization on CPU",)


# -- the plan ------------------------------------------------------------------------------
def test_the_plan_from_the_options() -> None:
    default = plan()
    assert [(s.layer, s.cap, s.excluded) for s in default.steps] == [
        (1, None, None),
        (2, None, None),
        (3, None, None),
    ]
    capped = plan(max_config_experiments=3, max_quant_experiments=2)
    assert [s.cap for s in capped.steps] == [3, 2, None]
    assert capped.describe()[0] == "layer 1 (config): until converged (patience 2) or 3 experiments"
    skipped = plan(skip_config=True)
    assert skipped.steps[0].excluded == "skipped (--forge-skip-config)"
    assert plan(skip_quant=True).steps[1].excluded == "skipped (--forge-skip-quant)"
    started = plan(start_layer=2)
    assert started.steps[0].excluded == "skipped (--forge-start-layer 2)"
    assert started.steps[1].excluded is None


# -- which layer a slot runs in ------------------------------------------------------------
def test_layer_one_until_it_converges_then_layer_two_lazily() -> None:
    fake = spaces()
    assert decide_layer(plan(), [], fake).layer == 1
    assert decide_layer(plan(), [rec(1, "kept"), rec(1)], fake).layer == 1
    assert 2 not in fake.asked  # layer 2's space (a Hub lookup) is not built before it is due
    moved = decide_layer(plan(), [rec(1, "kept"), rec(1), rec(1, "invalid")], fake, best_score=1.2)
    assert moved.layer == 2
    assert moved.passed[0].startswith(
        "converged: 2 experiments in a row without a keep in layer 1 (config)"
    )
    assert "best score 1.200" in moved.passed[0]


def test_patience_counts_per_layer() -> None:
    # Layer 1 converged; layer 2's single rejection is no streak of 2.
    done = [rec(1), rec(1), rec(2, "kept"), rec(2)]
    assert decide_layer(plan(), done, spaces()).layer == 2
    done.append(rec(2, "crashed"))
    over = decide_layer(plan(), done, spaces())
    assert over.layer is None and over.reason is not None
    assert over.reason.startswith("converged: 2 experiments in a row without a keep in layer 1")
    assert "converged: 2 experiments in a row without a keep in layer 2 (quant)" in over.reason
    assert "layer 3 (kernels) skipped: scaffolded: no proposals" in over.reason


def test_a_cap_moves_on_before_convergence() -> None:
    capped = plan(max_config_experiments=2, patience=5)
    decision = decide_layer(capped, [rec(1, "kept"), rec(1, "kept")], spaces())
    assert decision.layer == 2
    assert decision.passed == ("layer 1 (config) used its cap of 2 experiments",)
    quant_capped = plan(max_config_experiments=1, max_quant_experiments=1, patience=5)
    done = decide_layer(quant_capped, [rec(1, "kept"), rec(2, "kept")], spaces())
    assert done.layer is None and done.reason is not None
    assert "layer 2 (quant) used its cap of 1 experiments" in done.reason


def test_skip_flags_and_the_start_layer() -> None:
    fake = spaces()
    decision = decide_layer(plan(skip_config=True), [], fake)
    assert decision.layer == 2
    assert decision.passed == ("layer 1 (config) skipped (--forge-skip-config)",)
    assert 1 not in fake.asked  # a skipped layer's space is never built
    assert decide_layer(plan(start_layer=2), [], spaces()).layer == 2
    no_quant = decide_layer(plan(skip_quant=True), [rec(1), rec(1)], spaces())
    assert no_quant.layer is None and no_quant.reason is not None
    assert "layer 2 (quant) skipped (--forge-skip-quant)" in no_quant.reason


def test_an_empty_quant_layer_is_skipped_with_its_note() -> None:
    cpu = spaces(EMPTY, "no quantization on CPU")
    decision = decide_layer(plan(), [rec(1), rec(1)], cpu)
    assert decision.layer is None and decision.reason is not None
    assert "layer 2 (quant) skipped: no quantization on CPU" in decision.reason
    # Started at layer 2 on a CPU: nothing to do, and the note says why.
    started = decide_layer(plan(start_layer=2), [], cpu)
    assert started.layer is None and started.reason is not None
    assert started.reason.startswith("layer 1 (config) skipped (--forge-start-layer 2); layer 2")


def test_records_stored_before_layers_count_as_layer_one() -> None:
    assert decide_layer(plan(), [rec(None), rec(None)], spaces()).layer == 2


def test_a_change_outside_the_layer_is_a_problem_only_when_the_space_is_known() -> None:
    problem = layer_problem(["quant.kv_cache_quant"], 1, LayerSpace(CONFIG_SPACE))
    assert problem == (
        "this experiment is in layer 1 (config): quant.kv_cache_quant is a layer 2 (quant) key"
    )
    assert layer_problem(["config.max_num_seqs"], 1, LayerSpace(CONFIG_SPACE)) is None
    assert layer_problem(["quant.method"], 1, unrestricted_spaces(1)) is None


# -- the Tuner climbing the layers ---------------------------------------------------------
def make_tuner(
    recipe_path: Path, store: RunStore, agent: Any, layer_spaces: Callable[[int], LayerSpace]
) -> Tuner:
    return Tuner(
        Recipe.load(recipe_path),
        agent,
        store,
        TuneOptions(budget=6, patience=2),
        hardware=None,
        hardware_class="CPU",
        search_space=None,
        evaluate=Landscape(),
        measured_with=measured_with,
        layer_spaces=layer_spaces,
    )


@pytest.fixture
def recipe_path(tmp_path: Path) -> Path:
    from tests.unit.test_tuner import RECIPE_YAML

    path = tmp_path / "recipes" / "tiny.yaml"
    path.parent.mkdir()
    path.write_text(RECIPE_YAML)
    return path


def test_the_tuner_moves_from_layer_one_to_layer_two(tmp_path: Path, recipe_path: Path) -> None:
    store = new_store(tmp_path)
    agent = ScriptedAgent([SEQS_256, FP8, SEQS_64, FP8])
    fake = spaces()
    tuner = make_tuner(recipe_path, store, agent, fake)
    tuner.run_baseline()
    assert tuner.run_slot(1).status == "kept"  # layer 1
    refused = tuner.run_slot(2)  # a quant.* change in a layer-1 slot
    assert refused.status == "invalid"
    assert "quant.kv_cache_quant is a layer 2 (quant) key" in refused.reason
    assert tuner.run_slot(3).status == "rejected"  # the second miss in a row: converged
    assert [c.layer for c in agent.contexts] == [1, 1, 1]
    assert agent.contexts[0].search_space is CONFIG_SPACE
    quant = tuner.run_slot(4)
    ctx = agent.contexts[-1]
    assert ctx.layer == 2 and ctx.search_space is QUANT_SPACE
    assert quant.status == "rejected" and "accuracy 0.700 < floor 0.9" in quant.reason
    assert "[first experiment of layer 2 (quant): converged: 2 experiments" in quant.reason
    records = store.experiments()
    assert [r["layer"] for r in records] == [0, 1, 1, 1, 2]
    # The spaces and their notes are kept with the run.
    kept = json.loads((store.path / LAYERS_FILE).read_text())["layers"]
    assert set(kept) == {"1", "2"} and "quant.kv_cache_quant" in kept["2"]["params"]


def test_a_resumed_run_continues_in_its_layer(tmp_path: Path, recipe_path: Path) -> None:
    store = new_store(tmp_path)
    first = make_tuner(recipe_path, store, ScriptedAgent([SEQS_64, SEQS_64, FP8]), spaces())
    first.run_baseline()
    statuses = [first.run_slot(s).status for s in (1, 2, 3)]
    assert statuses == ["rejected", "invalid", "rejected"]  # the 2nd: measured already
    agent = ScriptedAgent([P("config in layer 2", config__max_num_seqs=512)])
    # Another builder now: the spaces kept in layers.json are read back, not rebuilt.
    rebuilt = FakeSpaces(LayerSpace(SearchSpace(params={})), [])
    resumed = make_tuner(recipe_path, store, agent, rebuilt)
    out = resumed.run_slot(4)
    assert agent.contexts[0].layer == 2
    assert agent.contexts[0].search_space.params.keys() == {"quant.kv_cache_quant"}
    assert rebuilt.asked == []
    assert out.status == "invalid"
    assert "this experiment is in layer 2 (quant): config.max_num_seqs" in out.reason
    # Layer 2 converged too (patience 2): nothing is left, and the reason names each layer.
    over = resumed.run_slot(5)
    assert over.status == "skipped"
    assert "in layer 2 (quant)" in over.reason and "layer 3 (kernels) skipped" in over.reason


def test_run_layer_spaces_are_built_once_and_a_dry_run_writes_none(tmp_path: Path) -> None:
    fake = spaces()
    kept = RunLayerSpaces(fake, tmp_path)
    assert kept(2) is kept(2) and fake.asked == [2]
    assert (tmp_path / LAYERS_FILE).is_file()
    dry = RunLayerSpaces(spaces(), tmp_path / "dry", keep=False)
    dry(1)
    assert not (tmp_path / "dry").exists()


def test_a_plan_for_an_llm_agent_shows_its_first_proposal_of_the_layer_due(
    recipe_path: Path,
) -> None:
    agent = ScriptedAgent([FP8, SEQS_64])
    text = render_plan(
        PlanInputs(
            recipe=Recipe.load(recipe_path),
            agent=agent,
            agent_spec="openai/gpt-x",
            agent_why="set by --forge-agent",
            options=TuneOptions(budget=6, patience=2, max_quant_experiments=2),
            hardware="test host",
            hardware_class="H100",
            spaces=spaces(QUANT_SPACE, "quant.method=awq left out: not an AWQ checkpoint"),
            records=[rec(0, "baseline"), rec(1), rec(1)],  # a resume: layer 1 converged
            run_dir="runs/001_x",
        )
    )
    assert "resumes run runs/001_x (3 experiments stored)" in text
    assert "layer 2 (quant): until converged (patience 2) or 2 experiments" in text
    assert 'quant.kv_cache_quant: ["none", "fp8"] (priority 0)' in text
    assert "      - quant.method=awq left out: not an AWQ checkpoint" in text
    assert "the next experiment runs in layer 2 (quant) (converged: 2 experiments" in text
    assert "first proposal of openai/gpt-x in layer 2 (quant) (one agent call;" in text
    assert "    1. quant.kv_cache_quant='fp8': fp8 kv cache" in text
    assert "2." not in text.split("first proposal of")[1]  # one call only
    assert len(agent.contexts) == 1 and agent.contexts[0].layer == 2


# -- the options ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"start_layer": 4}, "--forge-start-layer must be 1 (config), 2 (quantization) or 3"),
        ({"max_config_experiments": 0}, "--forge-max-config-experiments must be an integer >= 1"),
        ({"max_quant_experiments": -1}, "--forge-max-quant-experiments must be an integer >= 1"),
        ({"skip_config": True, "skip_quant": True}, "skips every layer"),
        ({"start_layer": 3}, "--forge-start-layer 3 skips every layer"),
        ({"start_layer": 2, "skip_quant": True}, "--forge-skip-quant with --forge-start-layer 2"),
    ],
)
def test_bad_layer_options_are_refused_naming_the_option(
    options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ForgeError, match=message.replace("(", r"\(").replace(")", r"\)")):
        TuneOptions(budget=4, **options)


def _forge_config(tmp_path: Path, **kw: Any) -> ForgeConfig:
    return ForgeConfig(
        recipes_dir=tmp_path / "recipes",
        workloads_dir=tmp_path / "workloads",
        run_root=tmp_path / ".forge",
        **kw,
    )


def test_a_resumed_run_keeps_its_layer_options(tmp_path: Path) -> None:
    config = _forge_config(tmp_path, skip_config=True, max_quant_experiments=2)
    fresh = fresh_settings(config, "playbook").options
    assert (fresh.skip_config, fresh.max_quant_experiments) == (True, 2)
    stored = {"budget": 4, "skip_quant": True, "start_layer": 1, "max_config_experiments": 3}
    plain = _forge_config(tmp_path)
    resumed = resumed_settings(plain, stored, tmp_path / "r", "playbook", "cpu", None).options
    assert (resumed.skip_quant, resumed.max_config_experiments, resumed.skip_config) == (
        True,
        3,
        False,
    )
    again = _forge_config(
        tmp_path, skip_quant=False, start_layer=1, explicit=frozenset({"forge_start_layer"})
    )
    resumed_settings(again, stored, tmp_path / "r", "playbook", "cpu", None)  # the same: fine
    conflict = _forge_config(tmp_path, skip_config=True, explicit=frozenset({"forge_skip_config"}))
    stored["skip_config"] = False
    with pytest.raises(ForgeError, match="--forge-skip-config True on this command line"):
        resumed_settings(conflict, stored, tmp_path / "r", "playbook", "cpu", None)


# -- end to end: the options at start-up and --forge-dry-run -------------------------------
@pytest.fixture
def project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    monkeypatch.setenv("FORGE_CACHE_DIR", CACHE)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the quant layer's Hub lookup: none here
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)  # the default agent: playbook
    (pytester.path / "recipes").mkdir()
    (pytester.path / "workloads").mkdir()
    (pytester.path / "recipes" / "alpha.yaml").write_text(RECIPE.format(id="alpha"))
    (pytester.path / "workloads" / "short.jsonl").write_text(_workload(4))
    (pytester.path / "workloads" / "short.yaml").write_text(SIDE)
    return pytester


def test_layer_options_are_checked_at_start_up(project: pytest.Pytester) -> None:
    bad = project.runpytest_subprocess("--forge-tune", "--forge-start-layer=5")
    assert bad.ret == pytest.ExitCode.USAGE_ERROR
    assert "--forge-start-layer must be 1 (config)" in bad.stderr.str()
    every = project.runpytest_subprocess(
        "--forge-tune", "--forge-skip-config", "--forge-skip-quant"
    )
    assert every.ret == pytest.ExitCode.USAGE_ERROR
    assert "--forge-skip-config with --forge-skip-quant skips every layer" in every.stderr.str()
    alone = project.runpytest_subprocess("--forge-dry-run")
    assert alone.ret == pytest.ExitCode.USAGE_ERROR
    assert "--forge-dry-run shows a tune's plan: add --forge-tune" in alone.stderr.str()


def test_dry_run_prints_the_plan_and_boots_nothing(project: pytest.Pytester) -> None:
    recipe = project.path / "recipes" / "alpha.yaml"
    before = recipe.read_bytes()
    result = project.runpytest_subprocess(
        "-p", "no:cacheprovider", "-v", "--forge-tune", "--forge-dry-run",
        "--forge-max-config-experiments=4",
    )  # fmt: skip
    out = result.stdout.str()
    assert result.ret == 0, out + result.stderr.str()
    assert "tune[plan] PASSED" in out and "tune[baseline]" not in out
    assert "forge tune plan for alpha" in out
    assert "budget: 8 experiments over all layers; patience 3 per layer" in out
    assert "layer 1 (config): until converged (patience 3) or 4 experiments" in out
    assert "layer 1 (config) search space (5 keys" in out
    assert "config.max_num_seqs: [16, 64] (priority 1)" in out
    assert "layer 2 (quant): nothing to propose on this hardware: skipped" in out
    assert "layer 3 (kernels): nothing to propose" in out and "scaffolded" in out
    assert "the next experiment runs in layer 1 (config)" in out
    assert "first 3 proposals of the playbook agent in layer 1 (config)" in out
    for n in (1, 2, 3):
        assert f"    {n}. config." in out
    # Nothing booted, no run store, the recipe untouched.
    assert "vLLM server boot" not in out
    assert not (project.path / ".forge" / "runs").exists()
    assert recipe.read_bytes() == before

    quiet = project.runpytest_subprocess(
        "-p", "no:cacheprovider", "-p", "no:terminal", "--forge-tune", "--forge-dry-run"
    )
    assert quiet.ret == 0, quiet.stderr.str()
