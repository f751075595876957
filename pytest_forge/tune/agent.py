"""The tuning agents' front door: :func:`make_agent` builds the agent a spec names.

Each agent proposes ONE validated mutation of the best recipe so far, behind one contract
(:class:`Agent`, in :mod:`~pytest_forge.tune.agent_types`). The kinds live in their own
modules: Claude through the ``anthropic`` SDK (:mod:`~pytest_forge.tune.agent_anthropic`),
any OpenAI-compatible endpoint or named provider through the ``openai`` SDK
(:mod:`~pytest_forge.tune.agent_openai`), and the offline ``playbook`` search
(:mod:`~pytest_forge.tune.agent_playbook`). Whatever an agent proposes passes
:func:`validate_proposal` (:mod:`~pytest_forge.tune.agent_check`) before the tuner sees it;
an LLM that proposes something illegal is told why and asked again, at most twice
(:mod:`~pytest_forge.tune.agent_chat`).

API keys come from the environment, live only inside the SDK clients, and are scrubbed
from every error message. The names below are this package's agent API: import them
from here.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from pytest_forge.tune.agent_anthropic import AnthropicAgent
from pytest_forge.tune.agent_check import validate_proposal
from pytest_forge.tune.agent_openai import OpenAICompatibleAgent
from pytest_forge.tune.agent_playbook import PlaybookAgent
from pytest_forge.tune.agent_prompt import build_prompt, parse_answer
from pytest_forge.tune.agent_spec import (
    DEFAULT_ANTHROPIC_MODEL,
    PROVIDERS,
    default_agent_spec,
    parse_agent_spec,
    public_agent_spec,
)
from pytest_forge.tune.agent_types import (
    Agent,
    AgentUsage,
    HistoryEntry,
    Proposal,
    ProposalContext,
)
from pytest_forge.tune.playbook import Playbook, load_playbook

__all__ = [
    "DEFAULT_ANTHROPIC_MODEL",
    "PROVIDERS",
    "Agent",
    "AgentUsage",
    "AnthropicAgent",
    "HistoryEntry",
    "OpenAICompatibleAgent",
    "PlaybookAgent",
    "Proposal",
    "ProposalContext",
    "build_prompt",
    "default_agent_spec",
    "make_agent",
    "parse_answer",
    "public_agent_spec",
    "validate_proposal",
]


def make_agent(
    spec: str, playbook: Playbook | None = None, env: Mapping[str, str] = os.environ
) -> Agent:
    """An agent from a spec string; keys come from ``env`` and are never stored on disk.

    - ``playbook``: the offline agent (no network).
    - ``anthropic/<model>``: Claude; needs ANTHROPIC_API_KEY (ANTHROPIC_BASE_URL honoured).
    - ``<provider>/<model>``: a provider of :data:`PROVIDERS` (openai, openrouter, together,
      groq, fireworks, deepinfra, mistral, deepseek, cerebras, xai; ollama and lmstudio
      locally, without a key), at its OpenAI-compatible base URL with the key from its
      variable (``groq`` → GROQ_API_KEY); ``<PROVIDER>_BASE_URL`` overrides the URL. The
      model may contain '/' (``openrouter/meta-llama/llama-3.1-70b``).
    - ``http(s)://[user:password@]host[:port]/v1#<model>``: any OpenAI-compatible endpoint;
      the model follows '#'. user:password is sent as Basic auth, else OPENAI_API_KEY
      when set.

    Keys and user:password travel only over https or to a loopback host: anything else
    raises InsecureCredentialsError (see :mod:`pytest_forge.tune.agent_spec`).
    """
    target = parse_agent_spec(spec, env)
    playbook = playbook or load_playbook()
    if target.kind == "playbook":
        return PlaybookAgent(playbook)
    if target.kind == "anthropic":
        return AnthropicAgent(target.model, playbook, env=env)
    assert target.base_url is not None
    return OpenAICompatibleAgent(
        target.base_url,
        target.model,
        target.api_key,
        playbook=playbook,
        name=target.name,
        key_env=target.key_env,
        credentials=target.credentials,
        json_mode=target.json_mode,
    )
