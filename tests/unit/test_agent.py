"""Tuning agents: answer parsing, proposal validation, re-asks, the two LLM transports
(against fakes through the real SDK / httpx), key hygiene, the offline playbook agent
and the agent factory. No network, no vLLM."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import anthropic
import httpx
import httpx2  # the anthropic SDK 2.x ships its own httpx fork and insists on it
import pytest

from pytest_forge.endpoint import InsecureCredentialsError
from pytest_forge.errors import AgentError
from pytest_forge.hardware import GpuInfo, HostHardware
from pytest_forge.recipe import Recipe
from pytest_forge.tune.agent import (
    AnthropicAgent,
    HistoryEntry,
    OpenAICompatibleAgent,
    PlaybookAgent,
    Proposal,
    ProposalContext,
    build_prompt,
    default_agent_spec,
    make_agent,
    parse_answer,
    public_agent_spec,
    validate_proposal,
)
from pytest_forge.tune.agent_spec import check_agent_transport
from pytest_forge.tune.playbook import ParamSpec, Playbook, SearchSpace, load_playbook

PLAYBOOK = load_playbook()
CPU_SPACE = PLAYBOOK.spaces["CPU"]
SECRET = "sk-test-5ecr3t-DO-NOT-LEAK"

CPU_RECIPE = """\
id: tiny-cpu
model: forge:tiny-llama
hardware: {vendor: cpu}
config:
  max_num_seqs: 16
  max_num_batched_tokens: 2048
  enable_prefix_caching: true
  enable_chunked_prefill: true
  enforce_eager: true
env: {VLLM_CPU_KVCACHE_SPACE: "1"}
"""
GPU_RECIPE = """\
id: llama-gpu
model: meta-llama/Llama-3.2-1B-Instruct
hardware: {vendor: nvidia, count: 1}
config: {max_num_seqs: 256}
"""

CPU_HOST = HostHardware("cpu", [], "AMD EPYC", 2)
T4_HOST = HostHardware("nvidia", [GpuInfo("Tesla T4", 15.0, "550.54", "7.5")], "Xeon", 8)
H100_HOST = HostHardware(
    "nvidia", [GpuInfo("NVIDIA H100 80GB HBM3", 79.6, "550.54", "9.0")] * 2, "Xeon", 64
)
GATE_SPACE = SearchSpace(
    params={
        "config.max_num_seqs": ParamSpec(values=[128, 256, 512], priority=1),
        "quant.method": ParamSpec(values=["none", "fp8", "awq"], priority=2),
        "quant.kv_cache_quant": ParamSpec(values=["none", "fp8"], priority=2),
        "config.tensor_parallel_size": ParamSpec(values=[1, 2, 4], priority=3),
    }
)


def cpu_ctx(**kw: Any) -> ProposalContext:
    recipe = kw.pop("recipe", None) or Recipe.from_yaml_text(CPU_RECIPE)
    return ProposalContext(
        recipe=recipe,
        hardware=CPU_HOST,
        hardware_class="CPU",
        search_space=CPU_SPACE,
        history=kw.pop("history", [HistoryEntry(0, recipe.content_hash, {}, "", "baseline", 1.0)]),
        objective="output_throughput",
        tried_hashes=kw.pop("tried_hashes", {recipe.content_hash}),
    )


def gpu_ctx(host: HostHardware, cls: str) -> ProposalContext:
    recipe = Recipe.from_yaml_text(GPU_RECIPE)
    return ProposalContext(recipe, host, cls, GATE_SPACE, [], "output_throughput", set())


GOOD = '{"rationale": "more batching", "changes": {"config.max_num_seqs": 64}}'


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


# ------------------------------------------------------------------ OpenAI-compatible


def _chat(content: str, prompt_tokens: int = 100, completion_tokens: int = 20) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens},
    }


class Script:
    """A MockTransport handler replaying scripted responses and recording requests."""

    def __init__(self, *responses: httpx.Response | Callable[[httpx.Request], httpx.Response]):
        self.responses = list(responses)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        item = self.responses.pop(0) if len(self.responses) > 1 else self.responses[0]
        return item(request) if callable(item) else item

    def bodies(self) -> list[dict[str, Any]]:
        return [json.loads(r.content) for r in self.requests]


def openai_agent(
    script: Script, sleeps: list[float] | None = None, **kw: Any
) -> OpenAICompatibleAgent:
    recorded = sleeps if sleeps is not None else []
    return OpenAICompatibleAgent(
        "http://127.0.0.1:9/v1",
        "test-model",
        kw.pop("api_key", SECRET),
        playbook=PLAYBOOK,
        key_env="OPENAI_API_KEY",
        client=httpx.Client(transport=httpx.MockTransport(script)),
        sleep=recorded.append,
        **kw,
    )


def test_openai_agent_sends_prompt_and_counts_usage() -> None:
    script = Script(httpx.Response(200, json=_chat(GOOD, 1200, 30)))
    agent = openai_agent(script)
    proposal = agent.propose(cpu_ctx())
    assert proposal.changes == {"config.max_num_seqs": 64}
    (request,) = script.requests
    assert request.url == "http://127.0.0.1:9/v1/chat/completions"
    assert request.headers["authorization"] == f"Bearer {SECRET}"
    body = script.bodies()[0]
    assert body["model"] == "test-model"
    assert body["messages"][0]["role"] == "system"
    assert "What to try first" in body["messages"][0]["content"]
    assert agent.usage.calls == 1
    assert (agent.usage.input_tokens, agent.usage.output_tokens) == (1200, 30)
    # No `usage.cost` in the answer: the spend cap cannot see this agent, and it says so.
    assert agent.cost_note and "--forge-max-dollars cannot stop" in agent.cost_note


def test_openai_compatible_agent_counts_a_reported_cost() -> None:
    answer = _chat(GOOD, 1200, 30)
    answer["usage"]["cost"] = 0.0123  # as OpenRouter reports it
    agent = openai_agent(Script(httpx.Response(200, json=answer)))
    agent.propose(cpu_ctx())
    assert agent.usage.cost_usd == pytest.approx(0.0123)
    assert agent.cost_note is None


def test_refused_answer_is_reasked_with_the_reason() -> None:
    script = Script(
        httpx.Response(200, json=_chat("Let me think about max_num_seqs first.")),
        httpx.Response(200, json=_chat(GOOD)),
    )
    agent = openai_agent(script)
    assert agent.propose(cpu_ctx()).changes == {"config.max_num_seqs": 64}
    first, second = script.bodies()
    assert len(second["messages"]) == len(first["messages"]) + 2
    assert second["messages"][-2] == {
        "role": "assistant",
        "content": "Let me think about max_num_seqs first.",
    }
    assert "Refused: the answer is not valid JSON" in second["messages"][-1]["content"]
    assert agent.usage.calls == 2


def test_an_illegal_value_is_reasked_then_given_up_after_three_attempts() -> None:
    bad = '{"rationale": "x", "changes": {"config.max_num_seqs": 100}}'
    script = Script(httpx.Response(200, json=_chat(bad)))
    agent = openai_agent(script)
    with pytest.raises(AgentError) as info:
        agent.propose(cpu_ctx())
    assert "after 3 attempts" in str(info.value)
    assert "config.max_num_seqs=100 is not allowed" in str(info.value)
    assert len(script.requests) == 3
    assert "allowed: [16, 64]" in script.bodies()[-1]["messages"][-1]["content"]


def test_openai_agent_honours_retry_after_and_backs_off() -> None:
    sleeps: list[float] = []
    script = Script(
        httpx.Response(429, headers={"Retry-After": "7"}, json={"error": "slow down"}),
        httpx.Response(503, text="overloaded"),
        httpx.Response(200, json=_chat(GOOD)),
    )
    agent = openai_agent(script, sleeps)
    assert agent.propose(cpu_ctx()).changes == {"config.max_num_seqs": 64}
    assert len(script.requests) == 3
    assert sleeps[0] == 7.0  # what the server asked for
    assert 1.0 <= sleeps[1] <= 2.0  # exponential backoff (2 s nominal) with jitter


def test_timeouts_are_retried_and_persistent_5xx_gives_up() -> None:
    def timeout(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    sleeps: list[float] = []
    script = Script(timeout, httpx.Response(200, json=_chat(GOOD)))
    assert openai_agent(script, sleeps).propose(cpu_ctx()).changes
    assert len(script.requests) == 2 and len(sleeps) == 1

    sleeps = []
    # A hostile server echoing the credentials back must not leak them into our error.
    echo = Script(lambda r: httpx.Response(500, text=f"boom {r.headers['authorization']}"))
    agent = openai_agent(echo, sleeps)
    with pytest.raises(AgentError) as info:
        agent.propose(cpu_ctx())
    assert "after 3 attempts" in str(info.value) and "HTTP 500" in str(info.value)
    assert SECRET not in str(info.value) and SECRET not in repr(info.value)
    assert SECRET not in repr(agent)
    assert len(echo.requests) == 3 and len(sleeps) == 2 and sleeps[1] > sleeps[0] * 0.9


def test_client_errors_are_not_retried_and_name_the_key_variable() -> None:
    script = Script(lambda r: httpx.Response(401, text=f"bad key {r.headers['authorization']}"))
    with pytest.raises(AgentError) as info:
        openai_agent(script).propose(cpu_ctx())
    assert len(script.requests) == 1
    assert "HTTP 401" in str(info.value) and "OPENAI_API_KEY" in str(info.value)
    assert SECRET not in str(info.value)


# ------------------------------------------------------------------ Anthropic


def _message(text: str, model: str, tokens_in: int = 1000, tokens_out: int = 100) -> dict[str, Any]:
    return {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": tokens_in, "output_tokens": tokens_out},
    }


def anthropic_agent(
    handler: Callable[[httpx2.Request], httpx2.Response], model: str, **kw: Any
) -> AnthropicAgent:
    client = anthropic.Anthropic(
        api_key=SECRET,
        base_url="http://127.0.0.1:9",
        max_retries=kw.pop("max_retries", 2),
        http_client=httpx2.Client(transport=httpx2.MockTransport(handler)),
    )
    return AnthropicAgent(model, PLAYBOOK, client=client)


def test_anthropic_agent_through_the_sdk() -> None:
    recipe = Recipe.from_yaml_text(CPU_RECIPE)
    history = [
        HistoryEntry(
            0,
            recipe.content_hash,
            {},
            "",
            "baseline",
            1.0,
            metrics={"chat": {"output_throughput": 812.5}},
        ),
        HistoryEntry(
            1,
            "0badc0de",
            {"config.enforce_eager": False},
            "compile it",
            "crashed",
            reason="torch._dynamo.exc.BackendCompilerFailed: inductor died",
        ),
    ]
    ctx = cpu_ctx(recipe=recipe, history=history)
    seen: list[dict[str, Any]] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        seen.append(json.loads(request.content))
        return httpx2.Response(200, json=_message(GOOD, "claude-sonnet-4-6"))

    agent = anthropic_agent(handler, "claude-sonnet-4-6")
    assert agent.propose(ctx).changes == {"config.max_num_seqs": 64}
    (body,) = seen
    assert body["model"] == "claude-sonnet-4-6"
    system = body["system"] if isinstance(body["system"], str) else body["system"][0]["text"]
    assert PLAYBOOK.text.strip() in system
    user = body["messages"][0]["content"]
    assert "BackendCompilerFailed: inductor died" in user and "compile it" in user
    assert "812.5" in user and "crashed" in user
    assert agent.usage.calls == 1 and agent.usage.input_tokens == 1000
    assert agent.usage.cost_usd == pytest.approx((1000 * 3 + 100 * 15) / 1e6)


def test_anthropic_overload_is_retried_by_the_sdk() -> None:
    calls: list[int] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        calls.append(1)
        if len(calls) == 1:
            # retry-after-ms keeps the SDK's own backoff out of the test's time.
            return httpx2.Response(
                529,
                headers={"retry-after-ms": "1"},
                json={
                    "type": "error",
                    "error": {"type": "overloaded_error", "message": "Overloaded"},
                },
            )
        if len(calls) == 2:
            return httpx2.Response(
                500,
                headers={"retry-after-ms": "1"},
                json={"type": "error", "error": {"type": "api_error", "message": "Internal"}},
            )
        return httpx2.Response(200, json=_message(GOOD, "claude-unknown-9"))

    agent = anthropic_agent(handler, "claude-unknown-9")
    assert agent.propose(cpu_ctx()).changes == {"config.max_num_seqs": 64}
    assert len(calls) == 3
    # An unknown model is counted at $0, with a note saying so.
    assert agent.usage.cost_usd == 0.0 and agent.cost_note and "claude-unknown-9" in agent.cost_note


def test_anthropic_persistent_500_becomes_agent_error_without_the_key() -> None:
    calls: list[int] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        calls.append(1)
        return httpx2.Response(
            500,
            headers={"retry-after-ms": "1"},
            json={
                "type": "error",
                "error": {
                    "type": "api_error",
                    "message": f"bad {request.headers.get('authorization')}",
                },
            },
        )

    agent = anthropic_agent(handler, "claude-sonnet-4-6", max_retries=2)
    with pytest.raises(AgentError) as info:
        agent.propose(cpu_ctx())
    assert len(calls) == 3
    assert "HTTP 500" in str(info.value)
    assert SECRET not in str(info.value) and SECRET not in repr(info.value)
    assert SECRET not in repr(agent)


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


# ------------------------------------------------------------------ factory


def test_public_agent_spec_drops_credentials_from_a_base_url() -> None:
    spec = f"https://user:{SECRET}@llm.example/v1#m"
    assert public_agent_spec(spec) == "https://llm.example/v1#m"
    assert public_agent_spec("anthropic/claude-sonnet-4-6") == "anthropic/claude-sonnet-4-6"


def test_default_agent_spec() -> None:
    assert default_agent_spec({"ANTHROPIC_API_KEY": SECRET}) == "anthropic/claude-sonnet-4-6"
    assert default_agent_spec({}) == "playbook"


def test_make_agent_specs() -> None:
    assert isinstance(make_agent("playbook", PLAYBOOK, {}), PlaybookAgent)

    agent = make_agent("anthropic/claude-sonnet-4-6", PLAYBOOK, {"ANTHROPIC_API_KEY": SECRET})
    assert isinstance(agent, AnthropicAgent) and agent.model == "claude-sonnet-4-6"
    assert SECRET not in repr(agent)

    agent = make_agent("openai/gpt-4o", PLAYBOOK, {"OPENAI_API_KEY": SECRET})
    assert isinstance(agent, OpenAICompatibleAgent)
    assert (agent.base_url, agent.model, agent.name) == (
        "https://api.openai.com/v1",
        "gpt-4o",
        "openai/gpt-4o",
    )
    assert SECRET not in repr(agent)
    env = {"OPENAI_API_KEY": SECRET, "OPENAI_BASE_URL": "https://proxy.example/v1/"}
    assert make_agent("openai/gpt-4o", PLAYBOOK, env).base_url == "https://proxy.example/v1"

    agent = make_agent(
        "openrouter/meta-llama/llama-3.1-70b", PLAYBOOK, {"OPENROUTER_API_KEY": SECRET}
    )
    assert (agent.base_url, agent.model) == (
        "https://openrouter.ai/api/v1",
        "meta-llama/llama-3.1-70b",
    )

    agent = make_agent("ollama/qwen3:8b", PLAYBOOK, {})
    assert (agent.base_url, agent.model) == ("http://127.0.0.1:11434/v1", "qwen3:8b")
    agent = make_agent("ollama/qwen3:8b", PLAYBOOK, {"OLLAMA_BASE_URL": "http://gpu-box:11434"})
    assert agent.base_url == "http://gpu-box:11434/v1"

    agent = make_agent("http://127.0.0.1:8000/v1#Qwen/Qwen2.5-7B-Instruct", PLAYBOOK, {})
    assert (agent.base_url, agent.model) == ("http://127.0.0.1:8000/v1", "Qwen/Qwen2.5-7B-Instruct")


@pytest.mark.parametrize(
    ("spec", "env_var"),
    [
        ("anthropic/claude-sonnet-4-6", "ANTHROPIC_API_KEY"),
        ("openai/gpt-4o", "OPENAI_API_KEY"),
        ("openrouter/x/y", "OPENROUTER_API_KEY"),
    ],
)
def test_make_agent_names_the_missing_key(spec: str, env_var: str) -> None:
    with pytest.raises(AgentError, match=env_var):
        make_agent(spec, PLAYBOOK, {})


@pytest.mark.parametrize(
    "spec", ["gpt-4o", "bard/gemini", "openai/", "http://127.0.0.1:8000/v1", ""]
)
def test_make_agent_rejects_bad_specs(spec: str) -> None:
    with pytest.raises(AgentError, match="playbook, anthropic/<model>"):
        make_agent(spec, PLAYBOOK, {"OPENAI_API_KEY": SECRET})


def test_url_credentials_never_show() -> None:
    agent = make_agent(f"https://user:{SECRET}@llm.example/v1#m", PLAYBOOK, {})
    assert SECRET not in agent.name and SECRET not in repr(agent)
    with pytest.raises(AgentError) as info:
        make_agent(f"https://user:{SECRET}@llm.example/v1", PLAYBOOK, {})
    assert SECRET not in str(info.value)


# ------------------------------------------------------------------ where keys may go


@pytest.mark.parametrize(
    "spec", ["http://10.0.0.5:8000/v1#m", "http://llm.example/v1#m", "http://localhost.evil/v1#m"]
)
def test_a_key_is_never_sent_over_plain_http_off_this_machine(spec: str) -> None:
    with pytest.raises(InsecureCredentialsError) as info:
        make_agent(spec, PLAYBOOK, {"OPENAI_API_KEY": SECRET})
    message = str(info.value)
    assert message.startswith(f"--forge-agent {spec.partition('#')[0]}: refusing to send ")
    assert "OPENAI_API_KEY" in message and SECRET not in message
    # The check is at the root: building the agent directly refuses it too.
    with pytest.raises(InsecureCredentialsError):
        OpenAICompatibleAgent(spec.partition("#")[0], "m", SECRET, playbook=PLAYBOOK)
    # Without a key, plain http is fine (a LAN vLLM without --api-key).
    assert make_agent(spec, PLAYBOOK, {}).base_url == spec.partition("#")[0]
    # With one: https anywhere, or plain http to this machine.
    for url in ("https://llm.example/v1", "http://127.3.2.1:8000/v1", "http://[::1]:8000/v1"):
        agent = make_agent(f"{url}#m", PLAYBOOK, {"OPENAI_API_KEY": SECRET})
        assert isinstance(agent, OpenAICompatibleAgent) and agent.base_url == url


@pytest.mark.parametrize(
    ("env", "var"),
    [
        ({"OPENAI_API_KEY": SECRET, "OPENAI_BASE_URL": "http://proxy.example/v1"}, "OPENAI"),
        ({"OPENROUTER_API_KEY": SECRET, "OPENROUTER_BASE_URL": "http://10.1.1.1/v1"}, "OPENROUTER"),
    ],
)
def test_provider_base_url_overrides_obey_the_same_rule(env: dict[str, str], var: str) -> None:
    spec = "openai/gpt-4o" if var == "OPENAI" else "openrouter/x/y"
    with pytest.raises(InsecureCredentialsError, match=f"{var}_BASE_URL .for --forge-agent"):
        make_agent(spec, PLAYBOOK, env)


def test_anthropic_base_url_must_be_https_or_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {"ANTHROPIC_API_KEY": SECRET, "ANTHROPIC_BASE_URL": "http://proxy.example"}
    with pytest.raises(InsecureCredentialsError, match="ANTHROPIC_BASE_URL") as info:
        make_agent("anthropic/claude-sonnet-4-6", PLAYBOOK, env)
    assert SECRET not in str(info.value)
    with pytest.raises(InsecureCredentialsError):
        AnthropicAgent("claude-sonnet-4-6", PLAYBOOK, env=env)
    env["ANTHROPIC_BASE_URL"] = f"https://bob:{SECRET}@proxy.example"
    with pytest.raises(AgentError, match="drop the user:password") as info2:
        make_agent("anthropic/claude-sonnet-4-6", PLAYBOOK, env)
    assert SECRET not in str(info2.value)
    # The SDK is given the URL checked here: it never falls back on os.environ's.
    monkeypatch.setenv("ANTHROPIC_BASE_URL", "http://elsewhere.example")
    agent = make_agent("anthropic/claude-sonnet-4-6", PLAYBOOK, {"ANTHROPIC_API_KEY": SECRET})
    assert str(agent._client.base_url).rstrip("/") == "https://api.anthropic.com"  # type: ignore[attr-defined]


def test_url_credentials_are_sent_as_basic_auth_never_in_the_url() -> None:
    script = Script(httpx.Response(200, json=_chat(GOOD)))
    agent = OpenAICompatibleAgent(
        f"https://bob:{SECRET}@llm.example/v1",
        "m",
        playbook=PLAYBOOK,
        client=httpx.Client(transport=httpx.MockTransport(script)),
    )
    assert agent.base_url == "https://llm.example/v1"
    assert SECRET not in agent.name and SECRET not in repr(agent)
    agent.propose(cpu_ctx())
    (request,) = script.requests
    assert request.url == "https://llm.example/v1/chat/completions" and not request.url.userinfo
    assert request.headers["authorization"] == httpx.BasicAuth("bob", SECRET)._auth_header


def test_url_credentials_replace_the_ambient_key_and_obey_the_transport_rule() -> None:
    agent = make_agent(f"https://bob:{SECRET}@llm.example/v1#m", PLAYBOOK, {"OPENAI_API_KEY": "k"})
    assert isinstance(agent, OpenAICompatibleAgent) and agent._headers == {}
    with pytest.raises(InsecureCredentialsError) as info:
        make_agent(f"http://bob:{SECRET}@10.0.0.5/v1#m", PLAYBOOK, {})
    assert "user:password" in str(info.value) and SECRET not in str(info.value)
    with pytest.raises(AgentError, match="give one"):
        OpenAICompatibleAgent(f"https://bob:{SECRET}@h/v1", "m", "key", playbook=PLAYBOOK)


@pytest.mark.parametrize(
    "spec", [f"https://bob:{SECRET}/x@h/v1#m", f"http://bob:{SECRET}#x@h/v1#m", "http://[::1/v1#m"]
)
def test_malformed_url_specs_fail_cleanly(spec: str) -> None:
    with pytest.raises(AgentError) as info:
        make_agent(spec, PLAYBOOK, {})
    assert SECRET not in str(info.value)
    assert check_agent_transport(spec, {}) is None  # not a transport problem: left to the tune
