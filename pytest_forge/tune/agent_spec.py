"""Agent specs: which LLM a tune asks, at which URL, with which credentials.

Parsing only: no agent classes and no SDK imports, so the plugin can refuse an unsafe spec
when pytest starts, and :func:`pytest_forge.tune.agent.make_agent` builds the agent from
the :class:`AgentTarget` parsed here. :data:`PROVIDERS` is the table of OpenAI-compatible
providers known by name (``groq/<model>``): base URL and key variable.

Keys come from the environment. A key, or a user:password in a URL, travels only over
https or to a loopback host (see :mod:`pytest_forge.endpoint`); a spec that would send one
over plain http elsewhere raises :class:`InsecureCredentialsError` naming the option and
the URL without its credentials.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import httpx

from pytest_forge.endpoint import (
    Credentials,
    InsecureCredentialsError,
    redact_url,
    require_secure_transport,
    split_credentials,
)
from pytest_forge.errors import AgentError, ForgeError

__all__ = [
    "ANTHROPIC_DEFAULT_URL",
    "DEFAULT_ANTHROPIC_MODEL",
    "PROVIDERS",
    "AgentTarget",
    "InsecureCredentialsError",
    "Provider",
    "check_agent_transport",
    "default_agent_spec",
    "parse_agent_spec",
    "public_agent_spec",
]

DEFAULT_ANTHROPIC_MODEL = "claude-sonnet-4-6"
ANTHROPIC_DEFAULT_URL = "https://api.anthropic.com"


@dataclass(frozen=True)
class Provider:
    """An OpenAI-compatible provider known by name: ``--forge-agent <name>/<model>``."""

    name: str
    base_url: str  # from the provider's docs: what its OpenAI SDK examples use
    key_env: str | None  # the variable holding its key; None: a local server, no key
    json_mode: bool = False  # sends response_format json_object (known to be supported)

    @property
    def url_env(self) -> str:
        """The variable that overrides the base URL (a proxy, another port)."""
        return f"{self.name.upper()}_BASE_URL"


# One row per provider; README.md's table lists the same. Base URLs as each provider's
# OpenAI-compatibility docs give them.
PROVIDERS: dict[str, Provider] = {
    p.name: p
    for p in (
        Provider("openai", "https://api.openai.com/v1", "OPENAI_API_KEY", json_mode=True),
        Provider("openrouter", "https://openrouter.ai/api/v1", "OPENROUTER_API_KEY"),
        Provider("together", "https://api.together.ai/v1", "TOGETHER_API_KEY"),
        Provider("groq", "https://api.groq.com/openai/v1", "GROQ_API_KEY"),
        Provider("fireworks", "https://api.fireworks.ai/inference/v1", "FIREWORKS_API_KEY"),
        Provider("deepinfra", "https://api.deepinfra.com/v1/openai", "DEEPINFRA_API_KEY"),
        Provider("mistral", "https://api.mistral.ai/v1", "MISTRAL_API_KEY"),
        Provider("deepseek", "https://api.deepseek.com", "DEEPSEEK_API_KEY"),
        Provider("cerebras", "https://api.cerebras.ai/v1", "CEREBRAS_API_KEY"),
        Provider("xai", "https://api.x.ai/v1", "XAI_API_KEY"),
        Provider("ollama", "http://127.0.0.1:11434/v1", None, json_mode=True),
        Provider("lmstudio", "http://127.0.0.1:1234/v1", None),
    )
}
SPEC_HELP = (
    "use playbook, anthropic/<model>, <provider>/<model> with a provider among "
    f"{', '.join(PROVIDERS)}, or an OpenAI-compatible base URL with the model after '#': "
    "https://host/v1#<model>"
)


@dataclass(frozen=True)
class AgentTarget:
    """What an agent spec resolves to; the URL never carries credentials."""

    kind: Literal["playbook", "anthropic", "openai"]
    model: str = ""
    base_url: str | None = None
    api_key: str | None = field(default=None, repr=False)
    credentials: Credentials | None = field(default=None, repr=False)
    key_env: str | None = None  # where api_key came from, named in 401/403 hints
    name: str | None = None  # None: derived from the URL and model
    json_mode: bool = False


def default_agent_spec(env: Mapping[str, str] = os.environ) -> str:
    """Claude when ANTHROPIC_API_KEY is set, else the offline playbook agent."""
    return f"anthropic/{DEFAULT_ANTHROPIC_MODEL}" if env.get("ANTHROPIC_API_KEY") else "playbook"


def public_agent_spec(spec: str) -> str:
    """The spec without any user:password in a base URL: what may be written to disk (and
    compared on --forge-resume)."""
    if spec.startswith(("http://", "https://")):
        base, sep, model = spec.rpartition("#") if "#" in spec else (spec, "", "")
        try:
            clean, _ = split_credentials(base)
        except ForgeError:
            return redact_url(spec)
        return clean + sep + model
    return spec


def _split(url: str, option: str) -> tuple[str, Credentials | None]:
    try:
        return split_credentials(url, option)
    except ForgeError as e:
        raise AgentError(str(e)) from None


def parse_agent_spec(
    spec: str, env: Mapping[str, str] = os.environ, option: str = "--forge-agent"
) -> AgentTarget:
    """Resolve ``spec`` against ``env`` (see :func:`pytest_forge.tune.agent.make_agent`).

    Raises AgentError for a spec that names no usable agent, and InsecureCredentialsError
    (a ForgeError) for one that would send a credential over plain http off this machine.
    """
    spec = (spec or "").strip()
    if spec == "playbook":
        return AgentTarget("playbook", name="playbook")
    if spec.startswith(("http://", "https://")):
        return _url_target(spec, env, option)
    provider, sep, model = spec.partition("/")
    model = model.strip()
    if not sep or not model:
        raise AgentError(f"agent spec {redact_url(spec)!r}: {SPEC_HELP}")
    if provider == "anthropic":
        key = env.get("ANTHROPIC_API_KEY")
        if not key:
            raise AgentError(f"agent {spec}: set ANTHROPIC_API_KEY in the environment")
        base = anthropic_base_url(env, f"ANTHROPIC_BASE_URL (for {option} {spec})")
        return AgentTarget("anthropic", model, base, key, key_env="ANTHROPIC_API_KEY", name=spec)
    if provider not in PROVIDERS:
        raise AgentError(f"agent spec {spec!r}: unknown provider {provider!r}; {SPEC_HELP}")
    return _provider_target(PROVIDERS[provider], model, spec, env, option)


def _provider_target(
    provider: Provider, model: str, spec: str, env: Mapping[str, str], option: str
) -> AgentTarget:
    """``<provider>/<model>``: the provider's URL (or its override) and key from ``env``."""
    key_env = provider.key_env
    where = f"{provider.url_env} (for {option} {spec})"
    base, credentials = _split(env.get(provider.url_env) or provider.base_url, where)
    if key_env is None and not httpx.URL(base).path.strip("/"):
        base = base.rstrip("/") + "/v1"  # OLLAMA_BASE_URL is often given as host:port
    key = env.get(key_env) if key_env else None
    if key_env and not key:
        raise AgentError(f"agent {spec}: set {key_env} in the environment")
    if key and credentials is not None:
        raise AgentError(
            f"{where}: its user:password and {key_env} would both be the Authorization "
            "header: give one"
        )
    if key:
        require_secure_transport(base, where, str(key_env), key_env)
    if credentials is not None:
        require_secure_transport(base, where, "the URL's user:password")
    return AgentTarget(
        "openai",
        model,
        base,
        key or None,
        credentials,
        key_env=key_env,
        name=spec,
        json_mode=provider.json_mode,
    )


def _url_target(spec: str, env: Mapping[str, str], option: str) -> AgentTarget:
    """``http(s)://host/v1#<model>``: the model after '#' (a URL fragment never reaches the
    server, and '@' would clash with user:password@host). user:password in the URL is sent
    as Basic auth; without one, OPENAI_API_KEY is sent when set."""
    # The last '#': a password may hold a raw one (a model name does not).
    base, sep, model = spec.rpartition("#") if "#" in spec else (spec, "", "")
    model = model.strip()
    if not sep or not model:
        raise AgentError(f"agent spec {redact_url(spec)!r}: {SPEC_HELP}")
    try:
        clean, credentials = split_credentials(base, option)
    except ForgeError:
        raise AgentError(
            f"{option} {redact_url(spec)}: not a valid URL (percent-encode '/', '?', '#' "
            "and '@' in a user:password)"
        ) from None
    key = None if credentials is not None else env.get("OPENAI_API_KEY") or None
    if key:
        require_secure_transport(clean, option, "OPENAI_API_KEY", "OPENAI_API_KEY")
    if credentials is not None:
        require_secure_transport(clean, option, "the URL's user:password")
    return AgentTarget("openai", model, clean, key, credentials, key_env="OPENAI_API_KEY")


def anthropic_base_url(env: Mapping[str, str], option: str = "ANTHROPIC_BASE_URL") -> str:
    """Where the Anthropic SDK sends ANTHROPIC_API_KEY: ANTHROPIC_BASE_URL or the API.

    Given to the SDK explicitly, so it never falls back on a different os.environ. It must
    carry no user:password (the key goes in its own header) and be https or loopback."""
    base = env.get("ANTHROPIC_BASE_URL") or ANTHROPIC_DEFAULT_URL
    clean, credentials = _split(base, option)
    if credentials is not None:
        raise AgentError(
            f"{option} {redact_url(base)}: drop the user:password; the key is sent from "
            "ANTHROPIC_API_KEY"
        )
    require_secure_transport(clean, option, "ANTHROPIC_API_KEY", "ANTHROPIC_API_KEY")
    return clean


def check_agent_transport(
    spec: str, env: Mapping[str, str] = os.environ, option: str = "--forge-agent"
) -> None:
    """Raise InsecureCredentialsError when ``spec`` would send a credential over plain http
    off this machine; other problems with the spec are left to the tune that uses it."""
    try:
        parse_agent_spec(spec, env, option)
    except InsecureCredentialsError:
        raise
    except ForgeError:
        pass
