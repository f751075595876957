"""Tuning agents: answer parsing, proposal validation, the prompt and the offline playbook
agent. No network, no vLLM (the LLM transports: test_agent_llm.py; specs, providers and
where keys may go: test_agent_spec.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from pytest_forge.errors import AgentError
from pytest_forge.recipe import Recipe
from pytest_forge.tune.agent import (
    HistoryEntry,
    PlaybookAgent,
    Proposal,
    ProposalContext,
    build_prompt,
    parse_answer,
    validate_proposal,
)
from pytest_forge.tune.playbook import Playbook
from pytest_forge.tune.search_space import ParamSpec, SearchSpace
from tests.unit.agent_fixtures import (
    CPU_HOST,
    CPU_RECIPE,
    CPU_SPACE,
    GATE_SPACE,
    GOOD,
    GPU_RECIPE,
    H100_HOST,
    PLAYBOOK,
    T4_HOST,
    cpu_ctx,
    gpu_ctx,
)

# ------------------------------------------------------------------ parse_answer


def test_parse_answer_accepts_strict_and_fenced_json() -> None:
    assert parse_answer(GOOD) == Proposal("more batching", {"config.max_num_seqs": 64})
    fenced = f"```json\n{GOOD}\n```"
    assert parse_answer(fenced).changes == {"config.max_num_seqs": 64}
    assert parse_answer(f"  ```\n{GOOD}```\n").rationale == "more batching"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "empty"),
        ("I think you should raise max_num_seqs.", "not valid JSON"),
        (f"Sure! Here it is: {GOOD}", "not valid JSON"),
        (f"```json\n{GOOD}\n```\nHope this helps", "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        ('{"changes": {"config.max_num_seqs": 64}}', "lacks 'rationale'"),
        ('{"rationale": 5, "changes": {}}', "'rationale' must be a non-empty string"),
        (
            '{"rationale": "x", "changes": [["config.max_num_seqs", 64]]}',
            "'changes' must be an object",
        ),
        (
            '{"rationale": "x", "changes": {"config.max_num_seqs": [64]}}',
            "'config.max_num_seqs' must be",
        ),
        ('{"rationale": "x", "changes": {}, "confidence": 0.9}', "unexpected key(s) 'confidence'"),
    ],
)
def test_parse_answer_rejects_wrong_shapes(text: str, expected: str) -> None:
    with pytest.raises(AgentError) as info:
        parse_answer(text)
    assert expected in str(info.value)


# ------------------------------------------------------------------ validate_proposal


def test_validate_refuses_what_is_outside_the_space() -> None:
    ctx = cpu_ctx()
    assert "not in the CPU search space" in validate_proposal(
        ctx, Proposal("x", {"config.block_size": 32})
    )
    refusal = validate_proposal(ctx, Proposal("x", {"config.max_num_seqs": 100}))
    assert refusal is not None and "allowed: [16, 64]" in refusal
    assert validate_proposal(ctx, Proposal("x", {})) is not None
    assert validate_proposal(ctx, Proposal("x", {"config.max_num_seqs": 64})) is None
    assert validate_proposal(ctx, Proposal("x", {"env.VLLM_CPU_KVCACHE_SPACE": "2"})) is not None


def test_fp8_gate_refuses_t4_and_allows_h100() -> None:
    for change in ({"quant.method": "fp8"}, {"quant.kv_cache_quant": "fp8"}):
        refusal = validate_proposal(gpu_ctx(T4_HOST, "T4"), Proposal("x", change))
        assert refusal is not None and "SM >= 9" in refusal
        assert validate_proposal(gpu_ctx(H100_HOST, "H100"), Proposal("x", change)) is None
    # AWQ is allowed on a T4 (seeds/001's table).
    assert validate_proposal(gpu_ctx(T4_HOST, "T4"), Proposal("x", {"quant.method": "awq"})) is None


def test_tensor_parallel_cannot_exceed_the_gpus() -> None:
    two = Recipe.from_yaml_text(GPU_RECIPE.replace("count: 1", "count: 2"))
    ctx = ProposalContext(two, H100_HOST, "H100", GATE_SPACE, [], "output_throughput", set())
    assert validate_proposal(ctx, Proposal("x", {"config.tensor_parallel_size": 2})) is None
    refusal = validate_proposal(ctx, Proposal("x", {"config.tensor_parallel_size": 4}))
    assert refusal is not None and "2 GPU(s)" in refusal
    # A 1-GPU recipe stays on 1 GPU on a 2-GPU host: its winner must run where it says.
    one = gpu_ctx(H100_HOST, "H100")
    refusal = validate_proposal(one, Proposal("x", {"config.tensor_parallel_size": 2}))
    assert refusal is not None and "1 GPU(s) of the recipe's hardware" in refusal


def test_duplicates_no_ops_and_known_crashes_are_refused() -> None:
    recipe = Recipe.from_yaml_text(CPU_RECIPE)
    change = {"config.max_num_seqs": 64}
    tried = recipe.with_changes(change).content_hash
    history = [
        HistoryEntry(0, recipe.content_hash, {}, "", "baseline", 1.0),
        HistoryEntry(1, tried, change, "r", "rejected", 0.9),
        HistoryEntry(
            2,
            "deadbeef",
            {"config.enforce_eager": False},
            "r",
            "crashed",
            None,
            reason="RuntimeError: torch.compile failed: out of memory",
        ),
    ]
    ctx = cpu_ctx(recipe=recipe, history=history, tried_hashes={recipe.content_hash, tried})
    refusal = validate_proposal(ctx, Proposal("again", change))
    assert refusal is not None and "already tried in experiment 1" in refusal
    refusal = validate_proposal(ctx, Proposal("same", {"config.max_num_seqs": 16}))
    assert refusal is not None and "no actual change" in refusal
    refusal = validate_proposal(ctx, Proposal("retry", {"config.enforce_eager": False}))
    assert (
        refusal is not None and "crashed in experiment 2" in refusal and "out of memory" in refusal
    )


def test_settings_vllm_refuses_at_startup_are_refused() -> None:
    recipe = Recipe.from_yaml_text(CPU_RECIPE).with_changes({"config.max_model_len": 4096})
    ctx = cpu_ctx(recipe=recipe)
    refusal = validate_proposal(ctx, Proposal("x", {"config.enable_chunked_prefill": False}))
    assert refusal is not None and "below max_model_len (4096)" in refusal
    # With the recipe's own max_model_len (unset here: vLLM's default) it may run.
    assert (
        validate_proposal(cpu_ctx(), Proposal("x", {"config.enable_chunked_prefill": False}))
        is None
    )
    small = recipe.with_changes({"config.max_num_batched_tokens": 32})
    refusal = validate_proposal(cpu_ctx(recipe=small), Proposal("x", {"config.max_num_seqs": 64}))
    assert refusal is not None and "below max_num_seqs (64)" in refusal


# ------------------------------------------------------------------ prompt


def test_prompt_carries_space_recipe_history_and_format() -> None:
    recipe = Recipe.from_yaml_text(CPU_RECIPE)
    history = [
        HistoryEntry(0, recipe.content_hash, {}, "", "baseline", 1.0),
        HistoryEntry(
            1,
            "abcd1234",
            {"config.max_num_seqs": 64},
            "batch more",
            "rejected",
            0.93,
            metrics={"chat": {"output_throughput": 700.0, "ttft_p99_ms": 41.0}},
            reason="score 0.93 below best 1.00",
        ),
    ]
    system, user = build_prompt(cpu_ctx(recipe=recipe, history=history), PLAYBOOK)
    assert PLAYBOOK.text.strip() in system and '"rationale"' in system
    assert "Hardware class: CPU" in user and "AMD EPYC" in user
    assert "values: [16, 64]" in user  # the legal space
    assert "enforce_eager: true" in user  # the best recipe
    assert "batch more" in user and "below best" in user and "ttft_p99_ms: 41.0" in user
    assert "output_throughput" in user


# ------------------------------------------------------------------ offline agent


def landscape(recipe: Recipe) -> float:
    """A smooth synthetic throughput surface over the CPU space (higher is better)."""
    c, env = recipe.config, recipe.env
    score = 100.0
    score *= {16: 1.0, 64: 1.45}[c["max_num_seqs"]]
    # Chunked prefill off pays off, more so with the bigger token budget.
    chunked_off = not c["enable_chunked_prefill"]
    score *= 1.0 + 0.06 * chunked_off + 0.05 * chunked_off * (c["max_num_batched_tokens"] == 8192)
    score *= 1.0 if c["enable_prefix_caching"] else 0.97
    score *= 1.0 if c["enforce_eager"] else 1.08
    score *= {"1": 1.0, "2": 1.015, "4": 1.005}[env.get("VLLM_CPU_KVCACHE_SPACE", "1")]
    return score


def simulate(
    agent: PlaybookAgent,
    budget: int,
    crashes: Callable[[Recipe], bool] = lambda r: False,
    stop_when_exhausted: bool = True,
    start: dict[str, Any] | None = None,
    measured: list[str] | None = None,
) -> tuple[Recipe, float, list[Proposal]]:
    """The tuner loop in miniature: propose, score, record, keep if better."""
    best = Recipe.from_yaml_text(CPU_RECIPE).with_changes(start or {})
    best_score = landscape(best)
    history = [HistoryEntry(0, best.content_hash, {}, "baseline", "baseline", best_score)]
    tried = {best.content_hash}
    proposals: list[Proposal] = []
    for exp in range(1, budget + 1):
        ctx = cpu_ctx(recipe=best, history=list(history), tried_hashes=set(tried))
        try:
            proposal = agent.propose(ctx)
        except AgentError as e:
            if stop_when_exhausted and "exhausted" in str(e):
                break
            raise
        proposals.append(proposal)
        candidate = best.with_changes(proposal.changes)
        tried.add(candidate.content_hash)
        if measured is not None:
            measured.append(candidate.content_hash)
        if crashes(candidate):
            history.append(
                HistoryEntry(
                    exp,
                    candidate.content_hash,
                    proposal.changes,
                    proposal.rationale,
                    "crashed",
                    None,
                    reason="boom",
                )
            )
            continue
        score = landscape(candidate)
        kept = score > best_score
        history.append(
            HistoryEntry(
                exp,
                candidate.content_hash,
                proposal.changes,
                proposal.rationale,
                "kept" if kept else "rejected",
                score,
                metrics={"chat": {"output_throughput": score}},
            )
        )
        if kept:
            best, best_score = candidate, score
    return best, best_score, proposals


@pytest.mark.parametrize(
    "start",
    [
        {},
        {"config.enforce_eager": False, "env.VLLM_CPU_KVCACHE_SPACE": "4"},
        {"config.max_num_seqs": 64, "config.enable_prefix_caching": False},
        {"config.max_num_batched_tokens": 8192, "config.enable_chunked_prefill": False},
    ],
)
def test_playbook_agent_gets_within_5_percent_of_the_optimum_in_8_experiments(
    start: dict[str, Any],
) -> None:
    base = Recipe.from_yaml_text(CPU_RECIPE).with_changes(start)
    optimum = max(landscape(base.with_changes(point)) for point in CPU_SPACE.iter_grid())
    assert landscape(base) < 0.9 * optimum  # the start is well away from it

    measured: list[str] = []
    _, best_score, proposals = simulate(
        PlaybookAgent(PLAYBOOK), budget=8, start=start, measured=measured
    )
    assert best_score >= 0.95 * optimum
    assert 0 < len(proposals) <= 8
    assert all(1 <= len(p.changes) <= 2 for p in proposals)  # single moves, then pairs
    assert all(CPU_SPACE.contains(k, v) for p in proposals for k, v in p.changes.items())
    assert len(measured) == len(set(measured)) and base.content_hash not in measured
    # The rationale cites the playbook heuristic behind the parameter it moves.
    first_key = next(iter(proposals[0].changes))
    assert f"Playbook, CPU: {CPU_SPACE.params[first_key].why}" in proposals[0].rationale


def test_playbook_agent_is_deterministic() -> None:
    first = simulate(PlaybookAgent(PLAYBOOK), budget=6)[2]
    second = simulate(PlaybookAgent(PLAYBOOK), budget=6)[2]
    assert first == second
    # Same context, fresh agent (a resumed run) -> same proposal.
    recipe = Recipe.from_yaml_text(CPU_RECIPE).with_changes({"config.max_num_seqs": 64})
    history = [
        HistoryEntry(0, "00000000", {}, "", "baseline", 1.0),
        HistoryEntry(1, recipe.content_hash, {"config.max_num_seqs": 64}, "", "kept", 1.4),
    ]
    ctx_a = cpu_ctx(recipe=recipe, history=history, tried_hashes={"00000000", recipe.content_hash})
    ctx_b = cpu_ctx(
        recipe=recipe, history=list(history), tried_hashes={"00000000", recipe.content_hash}
    )
    assert PlaybookAgent(PLAYBOOK).propose(ctx_a) == PlaybookAgent(PLAYBOOK).propose(ctx_b)


def test_playbook_agent_walks_a_parameter_until_it_stops_improving() -> None:
    space = SearchSpace(
        params={
            "config.max_num_seqs": ParamSpec(values=[8, 16, 32, 64, 128], priority=1),
            "config.enable_prefix_caching": ParamSpec(values=[True, False], priority=2),
        }
    )
    peak = {8: 1.0, 16: 1.2, 32: 1.5, 64: 1.6, 128: 1.3}
    best = Recipe.from_yaml_text(CPU_RECIPE)
    best_score = peak[16]
    history = [HistoryEntry(0, best.content_hash, {}, "", "baseline", best_score)]
    tried = {best.content_hash}
    agent = PlaybookAgent(Playbook(text="", path=PLAYBOOK.path, spaces={"CPU": space}))
    steps = []
    for exp in range(1, 7):
        ctx = ProposalContext(best, CPU_HOST, "CPU", space, list(history), "tput", set(tried))
        try:
            changes = agent.propose(ctx).changes
        except AgentError as e:
            steps.append(str(e))
            break
        steps.append(changes)
        candidate = best.with_changes(changes)
        tried.add(candidate.content_hash)
        score = peak[candidate.config["max_num_seqs"]] * (
            1.0 if candidate.config["enable_prefix_caching"] else 0.9
        )
        status = "kept" if score > best_score else "rejected"
        history.append(HistoryEntry(exp, candidate.content_hash, changes, "", status, score))
        if status == "kept":
            best, best_score = candidate, score
    assert steps[:5] == [
        {"config.max_num_seqs": 32},  # up from 16: better
        {"config.max_num_seqs": 64},  # up again: better
        {"config.max_num_seqs": 128},  # up again: worse; down (32) was the previous best
        {"config.enable_prefix_caching": False},  # next priority: worse
        # No single move left (64 -> 16 is the baseline again, 256 is off the list): pairs,
        # the one whose moves lost least alone first (32 scored 1.5, 128 only 1.3).
        {"config.max_num_seqs": 32, "config.enable_prefix_caching": False},
    ]


def test_playbook_agent_avoids_crashes_and_reports_exhaustion() -> None:
    def crashes(recipe: Recipe) -> bool:
        return recipe.config["enforce_eager"] is False  # say torch.compile dies on this box

    _, _, proposals = simulate(PlaybookAgent(PLAYBOOK), budget=40, crashes=crashes)
    assert 0 < len(proposals) < CPU_SPACE.grid_size()
    # The crashing change was proposed once, never again.
    assert [p.changes for p in proposals].count({"config.enforce_eager": False}) == 1
    with pytest.raises(AgentError, match="search space exhausted for CPU"):
        simulate(PlaybookAgent(PLAYBOOK), 40, crashes, stop_when_exhausted=False)
