"""Agent specs and the factory: which agent a spec names, the named OpenAI-compatible
providers (base URL and key variable), and where keys may go (https or loopback only, URL
credentials as Basic auth and never shown). No network, no vLLM."""

from __future__ import annotations

import base64

import pytest

from pytest_forge.endpoint import SECRET_ENV_VARS, InsecureCredentialsError
from pytest_forge.errors import AgentError
from pytest_forge.tune.agent import (
    PROVIDERS,
    AnthropicAgent,
    OpenAICompatibleAgent,
    PlaybookAgent,
    default_agent_spec,
    make_agent,
    public_agent_spec,
)
from pytest_forge.tune.agent_spec import check_agent_transport, parse_agent_spec
from tests.fakes.fake_openai_server import running_fake_server
from tests.unit.agent_fixtures import GOOD, PLAYBOOK, SECRET, cpu_ctx

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


# As each provider's OpenAI-compatibility docs give them.
NAMED = [
    ("openai/gpt-4o", "https://api.openai.com/v1", "OPENAI_API_KEY"),
    ("openrouter/meta-llama/llama-3.1-70b", "https://openrouter.ai/api/v1", "OPENROUTER_API_KEY"),
    ("together/openai/gpt-oss-20b", "https://api.together.ai/v1", "TOGETHER_API_KEY"),
    ("groq/llama-3.3-70b-versatile", "https://api.groq.com/openai/v1", "GROQ_API_KEY"),
    (
        "fireworks/accounts/fireworks/models/gpt-oss-120b",
        "https://api.fireworks.ai/inference/v1",
        "FIREWORKS_API_KEY",
    ),
    (
        "deepinfra/meta-llama/Meta-Llama-3.1-8B-Instruct",
        "https://api.deepinfra.com/v1/openai",
        "DEEPINFRA_API_KEY",
    ),
    ("mistral/mistral-large-latest", "https://api.mistral.ai/v1", "MISTRAL_API_KEY"),
    ("deepseek/deepseek-chat", "https://api.deepseek.com", "DEEPSEEK_API_KEY"),
    ("cerebras/gpt-oss-120b", "https://api.cerebras.ai/v1", "CEREBRAS_API_KEY"),
    ("xai/grok-4", "https://api.x.ai/v1", "XAI_API_KEY"),
]


@pytest.mark.parametrize(("spec", "base_url", "key_env"), NAMED)
def test_named_providers_resolve_to_their_base_url_and_key(
    spec: str, base_url: str, key_env: str
) -> None:
    provider, _, model = spec.partition("/")
    agent = make_agent(spec, PLAYBOOK, {key_env: SECRET})
    assert isinstance(agent, OpenAICompatibleAgent)
    assert (agent.base_url, agent.model, agent.name) == (base_url, model, spec)
    assert SECRET not in repr(agent)
    target = parse_agent_spec(spec, {"OPENAI_API_KEY": "sk-other", key_env: SECRET})
    assert (target.key_env, target.api_key) == (key_env, SECRET)
    if key_env != "OPENAI_API_KEY":  # another provider's key is never used instead
        with pytest.raises(AgentError, match=f"set {key_env} in the environment"):
            make_agent(spec, PLAYBOOK, {"OPENAI_API_KEY": SECRET})
    url_env = f"{provider.upper()}_BASE_URL"
    proxy = {key_env: SECRET, url_env: "https://proxy.example/v1/"}
    assert make_agent(spec, PLAYBOOK, proxy).base_url == "https://proxy.example/v1"
    with pytest.raises(InsecureCredentialsError, match=f"{url_env} .for --forge-agent") as info:
        make_agent(spec, PLAYBOOK, {key_env: SECRET, url_env: "http://10.0.0.5/v1"})
    assert SECRET not in str(info.value)


def test_every_provider_is_tested_and_its_key_is_scrubbed_from_reports() -> None:
    keyed = {name for name, provider in PROVIDERS.items() if provider.key_env}
    assert keyed == {spec.partition("/")[0] for spec, _, _ in NAMED}
    for provider in PROVIDERS.values():
        if provider.key_env:
            assert provider.key_env in SECRET_ENV_VARS, provider.name
            assert provider.base_url.startswith("https://"), provider.name
        else:  # keyless: a server on this machine
            assert provider.base_url.startswith("http://127.0.0.1:"), provider.name


def test_a_named_provider_reaches_its_server_with_its_own_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-ambient-openai-key")  # read by the SDK itself
    with running_fake_server(api_key=SECRET, output_text=lambda prompt, n: [GOOD]) as srv:
        env = {"GROQ_API_KEY": SECRET, "GROQ_BASE_URL": f"{srv.url}/v1"}  # loopback: allowed
        agent = make_agent("groq/llama-3.3-70b-versatile", PLAYBOOK, env)
        assert agent.propose(cpu_ctx()).changes == {"config.max_num_seqs": 64}
    assert srv.stats.auth_headers == [f"Bearer {SECRET}"]
    assert srv.stats.payloads[0]["model"] == "llama-3.3-70b-versatile"


def test_local_providers_need_no_key_and_take_a_bare_host() -> None:
    agent = make_agent("lmstudio/qwen2.5-7b-instruct", PLAYBOOK, {})
    assert (agent.base_url, agent.model) == ("http://127.0.0.1:1234/v1", "qwen2.5-7b-instruct")
    agent = make_agent("lmstudio/m", PLAYBOOK, {"LMSTUDIO_BASE_URL": "http://gpu-box:1234"})
    assert agent.base_url == "http://gpu-box:1234/v1"
    with running_fake_server(output_text=lambda prompt, n: [GOOD]) as srv:
        agent = make_agent("ollama/qwen3:8b", PLAYBOOK, {"OLLAMA_BASE_URL": srv.url})
        assert agent.base_url == f"{srv.url}/v1"
        assert agent.propose(cpu_ctx()).changes == {"config.max_num_seqs": 64}
    assert srv.stats.auth_headers == [None]
    assert srv.stats.payloads[0]["response_format"] == {"type": "json_object"}


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


def test_url_credentials_replace_the_ambient_key_and_obey_the_transport_rule() -> None:
    with running_fake_server(output_text=lambda prompt, n: [GOOD]) as srv:
        spec = srv.url.replace("://", f"://bob:{SECRET}@") + "/v1#m"
        agent = make_agent(spec, PLAYBOOK, {"OPENAI_API_KEY": "sk-ambient-key"})
        assert isinstance(agent, OpenAICompatibleAgent)
        agent.propose(cpu_ctx())
    basic = base64.b64encode(f"bob:{SECRET}".encode()).decode()
    assert srv.stats.auth_headers == [f"Basic {basic}"]  # not the ambient OPENAI_API_KEY
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
