"""The LLM agents' transports, through the real SDKs: the OpenAI-compatible agent (``openai``)
against scripted transports and the fake OpenAI-compatible server, and the Claude agent
(``anthropic``) against scripted transports. Re-asks, retries (the SDKs'), Retry-After,
usage and cost, and that no key shows in an error or a log. No network, no vLLM."""

from __future__ import annotations

import base64
import json
import logging
import socket
from collections.abc import Callable
from typing import Any

import anthropic
import httpx2  # both SDKs ship their own httpx fork and insist on it
import pytest

from pytest_forge.errors import AgentError
from pytest_forge.recipe import Recipe
from pytest_forge.tune.agent import AnthropicAgent, HistoryEntry, OpenAICompatibleAgent
from tests.fakes.fake_openai_server import running_fake_server
from tests.unit.agent_fixtures import CPU_RECIPE, GOOD, PLAYBOOK, SECRET, cpu_ctx

# ------------------------------------------------------------------ OpenAI-compatible


def _chat(content: str, prompt_tokens: int = 100, completion_tokens: int = 20) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 0,
        "model": "test-model",
        "choices": [
            {
                "index": 0,
                "finish_reason": "stop",
                "message": {"role": "assistant", "content": content},
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


# Keeps the SDK's own backoff out of the tests' time where a test is not about it.
FAST = {"retry-after-ms": "1"}


class Script:
    """A MockTransport handler replaying scripted responses and recording requests."""

    def __init__(
        self, *responses: httpx2.Response | Callable[[httpx2.Request], httpx2.Response]
    ) -> None:
        self.responses = list(responses)
        self.requests: list[httpx2.Request] = []

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        self.requests.append(request)
        item = self.responses.pop(0) if len(self.responses) > 1 else self.responses[0]
        return item(request) if callable(item) else item

    def bodies(self) -> list[dict[str, Any]]:
        return [json.loads(r.content) for r in self.requests]


def openai_agent(script: Script, **kw: Any) -> OpenAICompatibleAgent:
    return OpenAICompatibleAgent(
        kw.pop("base_url", "http://127.0.0.1:9/v1"),
        "test-model",
        kw.pop("api_key", SECRET),
        playbook=PLAYBOOK,
        key_env="OPENAI_API_KEY",
        http_client=httpx2.Client(transport=httpx2.MockTransport(script)),
        **kw,
    )


def json_answer(text: str) -> Callable[[str, int], list[str]]:
    """The fake server's output: ``text`` as the whole answer, whatever was asked."""
    return lambda prompt, n_tokens: [text]


def test_openai_agent_sends_prompt_and_counts_usage() -> None:
    script = Script(httpx2.Response(200, json=_chat(GOOD, 1200, 30)))
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
    agent = openai_agent(Script(httpx2.Response(200, json=answer)))
    agent.propose(cpu_ctx())
    assert agent.usage.cost_usd == pytest.approx(0.0123)
    assert agent.cost_note is None


def test_json_mode_asks_for_a_json_object() -> None:
    script = Script(httpx2.Response(200, json=_chat(GOOD)))
    openai_agent(script, json_mode=True).propose(cpu_ctx())
    assert script.bodies()[0]["response_format"] == {"type": "json_object"}
    script = Script(httpx2.Response(200, json=_chat(GOOD)))
    openai_agent(script).propose(cpu_ctx())
    assert "response_format" not in script.bodies()[0]


def test_refused_answer_is_reasked_with_the_reason() -> None:
    script = Script(
        httpx2.Response(200, json=_chat("Let me think about max_num_seqs first.")),
        httpx2.Response(200, json=_chat(GOOD)),
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
    script = Script(httpx2.Response(200, json=_chat(bad)))
    agent = openai_agent(script)
    with pytest.raises(AgentError) as info:
        agent.propose(cpu_ctx())
    assert "after 3 attempts" in str(info.value)
    assert "config.max_num_seqs=100 is not allowed" in str(info.value)
    assert len(script.requests) == 3
    assert "allowed: [16, 64]" in script.bodies()[-1]["messages"][-1]["content"]


def test_overload_and_timeouts_are_retried_by_the_sdk() -> None:
    def timeout(request: httpx2.Request) -> httpx2.Response:
        raise httpx2.ReadTimeout("slow", request=request)

    script = Script(
        httpx2.Response(429, headers=FAST, json={"error": {"message": "slow down"}}),
        httpx2.Response(503, headers=FAST, text="overloaded"),
        timeout,
        httpx2.Response(200, json=_chat(GOOD)),
    )
    agent = openai_agent(script, max_retries=3)
    assert agent.propose(cpu_ctx()).changes == {"config.max_num_seqs": 64}
    assert len(script.requests) == 4
    assert agent.usage.calls == 1  # one answer: the SDK's retries are not re-asks


def test_persistent_5xx_gives_up_without_the_key() -> None:
    # A hostile server echoing the credentials back must not leak them into our error.
    echo = Script(
        lambda r: httpx2.Response(500, headers=FAST, text=f"boom {r.headers['authorization']}")
    )
    agent = openai_agent(echo, max_retries=2)
    with pytest.raises(AgentError) as info:
        agent.propose(cpu_ctx())
    assert "after 3 attempts" in str(info.value) and "HTTP 500" in str(info.value)
    assert SECRET not in str(info.value) and SECRET not in repr(info.value)
    assert SECRET not in repr(agent)
    assert len(echo.requests) == 3


def test_persistent_timeouts_give_up_naming_the_timeout() -> None:
    def timeout(request: httpx2.Request) -> httpx2.Response:
        raise httpx2.ReadTimeout("slow", request=request)

    script = Script(timeout)
    with pytest.raises(AgentError, match=r"no answer after 2 attempts: timed out after 7 s"):
        openai_agent(script, max_retries=1, timeout=7.0).propose(cpu_ctx())
    assert len(script.requests) == 2


def test_a_server_that_is_not_there_is_an_agent_error() -> None:
    with socket.socket() as sock:  # a free loopback port, closed again: nothing listens
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    agent = OpenAICompatibleAgent(
        f"http://127.0.0.1:{port}/v1", "m", SECRET, playbook=PLAYBOOK, max_retries=0
    )
    with pytest.raises(AgentError, match=r"no answer after 1 attempt: cannot connect") as info:
        agent.propose(cpu_ctx())
    assert SECRET not in str(info.value)


def test_client_errors_are_not_retried_and_name_the_key_variable(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)  # the SDK logs its requests at DEBUG
    script = Script(lambda r: httpx2.Response(401, text=f"bad key {r.headers['authorization']}"))
    with pytest.raises(AgentError) as info:
        openai_agent(script).propose(cpu_ctx())
    assert len(script.requests) == 1
    assert "HTTP 401" in str(info.value) and "OPENAI_API_KEY" in str(info.value)
    assert "attempts" not in str(info.value)
    assert SECRET not in str(info.value)
    assert caplog.records and SECRET not in caplog.text


def test_an_answer_that_is_not_a_chat_completion_is_an_agent_error() -> None:
    script = Script(httpx2.Response(200, json={"choices": []}))
    with pytest.raises(AgentError, match="not an OpenAI chat completion"):
        openai_agent(script).propose(cpu_ctx())


def test_the_sdk_adds_nothing_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # The openai SDK reads these itself; a key meant for one provider must not reach another.
    monkeypatch.setenv("OPENAI_API_KEY", "sk-ambient-openai-key")
    monkeypatch.setenv("OPENAI_BASE_URL", "https://elsewhere.example/v1")
    monkeypatch.setenv("OPENAI_ORG_ID", "org-ambient")
    monkeypatch.setenv("OPENAI_PROJECT_ID", "proj-ambient")
    monkeypatch.setenv(
        "OPENAI_CUSTOM_HEADERS", "X-Api-Key: ambient-header-key\nAuthorization: Bearer ambient"
    )
    for api_key, expected in ((SECRET, f"Bearer {SECRET}"), (None, None)):
        script = Script(httpx2.Response(200, json=_chat(GOOD)))
        openai_agent(script, base_url="https://api.groq.com/openai/v1", api_key=api_key).propose(
            cpu_ctx()
        )
        (request,) = script.requests
        assert str(request.url) == "https://api.groq.com/openai/v1/chat/completions"
        assert request.headers.get("authorization") == expected
        for name in ("x-api-key", "openai-organization", "openai-project"):
            assert name not in request.headers
        assert "ambient" not in str(request.headers)


def test_url_credentials_are_sent_as_basic_auth_never_in_the_url() -> None:
    script = Script(httpx2.Response(200, json=_chat(GOOD)))
    agent = openai_agent(script, base_url=f"https://bob:{SECRET}@llm.example/v1", api_key=None)
    assert agent.base_url == "https://llm.example/v1"
    assert SECRET not in agent.name and SECRET not in repr(agent)
    agent.propose(cpu_ctx())
    (request,) = script.requests
    assert request.url == "https://llm.example/v1/chat/completions" and not request.url.userinfo
    basic = base64.b64encode(f"bob:{SECRET}".encode()).decode()
    assert request.headers["authorization"] == f"Basic {basic}"


# ------------------------------------------------------------------ against the fake server


def test_the_sdk_path_against_the_fake_openai_server() -> None:
    with running_fake_server(api_key=SECRET, output_text=json_answer(GOOD)) as srv:
        agent = OpenAICompatibleAgent(
            f"{srv.url}/v1", "fake-model", SECRET, playbook=PLAYBOOK, key_env="OPENAI_API_KEY"
        )
        assert agent.propose(cpu_ctx()).changes == {"config.max_num_seqs": 64}
    assert srv.stats.paths == ["/v1/chat/completions"]
    assert srv.stats.auth_headers == [f"Bearer {SECRET}"]
    (payload,) = srv.stats.payloads
    assert payload["model"] == "fake-model" and not payload.get("stream")
    assert agent.usage.calls == 1 and agent.usage.input_tokens > 100


def test_a_429_with_retry_after_is_waited_out_then_the_answer_is_used() -> None:
    knobs = {"fail_first": 1, "fail_status": 429, "retry_after": "1"}
    with running_fake_server(output_text=json_answer(GOOD), **knobs) as srv:
        agent = OpenAICompatibleAgent(f"{srv.url}/v1", "m", playbook=PLAYBOOK, max_retries=2)
        assert agent.propose(cpu_ctx()).changes == {"config.max_num_seqs": 64}
    assert srv.stats.requests == 2 and srv.stats.failed == 1
    # The server asked for 1 s; the SDK's own first backoff would be at most 0.5 s.
    first, second = srv.stats.arrivals
    assert second - first >= 0.9
    assert srv.stats.auth_headers == [None, None]  # no key given: none sent


def test_a_429_that_persists_is_an_agent_error_after_the_retries() -> None:
    knobs = {"fail_first": 10, "fail_status": 429, "retry_after": "0.01"}
    with running_fake_server(**knobs) as srv:
        agent = OpenAICompatibleAgent(f"{srv.url}/v1", "m", playbook=PLAYBOOK, max_retries=1)
        with pytest.raises(AgentError, match=r"no answer after 2 attempts: HTTP 429"):
            agent.propose(cpu_ctx())
    assert srv.stats.requests == 2


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
