"""The OpenAI-compatible agent: any ``/chat/completions`` endpoint through the ``openai`` SDK.

OpenAI itself, the named providers of :data:`pytest_forge.tune.agent_spec.PROVIDERS`
(Groq, Together, OpenRouter, a local Ollama, …) and any URL given as
``http(s)://host/v1#<model>``. The SDK retries timeouts, 429 and 5xx with backoff and
honours Retry-After; what is left when it gives up becomes an AgentError without the key.

Credentials are this module's to send, never the SDK's to find: the Authorization header
(a bearer key, a URL's user:password as Basic auth, or none) is set on every request, and
what the SDK would add from ``os.environ`` (OPENAI_ORG_ID, OPENAI_PROJECT_ID,
OPENAI_CUSTOM_HEADERS) is removed, so a key meant for one provider never reaches another.
"""

from __future__ import annotations

import base64
import logging
import os
from typing import TYPE_CHECKING, Any

from pytest_forge.endpoint import (
    Credentials,
    redact_url,
    require_secure_transport,
    split_credentials,
)
from pytest_forge.errors import AgentError, ForgeError
from pytest_forge.tune.agent_chat import ChatAgent, redact
from pytest_forge.tune.agent_types import AgentUsage, snippet
from pytest_forge.tune.playbook import load_playbook

if TYPE_CHECKING:
    import httpx2
    import openai
    from openai.types.chat import ChatCompletion

    from pytest_forge.tune.playbook import Playbook

__all__ = ["OpenAICompatibleAgent"]

log = logging.getLogger(__name__)

# Headers the SDK fills from os.environ; each agent says itself what it sends.
_AMBIENT_HEADERS = ("OpenAI-Organization", "OpenAI-Project")
# The SDK refuses to start without a key; the Authorization header of every request is
# set (or removed) by the agent, so this one is never sent.
_NO_KEY = "unused"


def _basic(credentials: Credentials) -> str:
    raw = f"{credentials.username}:{credentials.password}".encode()
    return "Basic " + base64.b64encode(raw).decode("ascii")


def _custom_header_names() -> list[str]:
    """The header names OPENAI_CUSTOM_HEADERS (``Name: value`` lines) makes the SDK send."""
    text = os.environ.get("OPENAI_CUSTOM_HEADERS") or ""
    return [line.partition(":")[0].strip() for line in text.splitlines() if ":" in line]


def _attempts(request: Any) -> int | None:
    """How many times the SDK sent the request (it counts retries in a header)."""
    try:
        return int(request.headers.get("x-stainless-retry-count", "")) + 1
    except (AttributeError, TypeError, ValueError):
        return None


class OpenAICompatibleAgent(ChatAgent):
    """Any OpenAI-compatible ``/chat/completions`` endpoint, through the ``openai`` SDK."""

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        *,
        playbook: Playbook | None = None,
        name: str | None = None,
        key_env: str | None = None,
        credentials: Credentials | None = None,
        http_client: httpx2.Client | None = None,
        max_retries: int = 2,
        timeout: float = 120.0,
        json_mode: bool = False,
    ) -> None:
        try:
            # user:password never stays in the URL (nor in names, messages, tracebacks):
            # it is sent as Basic auth, in the Authorization header.
            clean, found = split_credentials(base_url, "agent URL")
        except ForgeError as e:
            raise AgentError(str(e)) from None
        credentials = credentials or found
        self.base_url = clean.rstrip("/")
        self.model = model
        self.name = name or f"{redact_url(self.base_url)}#{model}"
        if api_key and credentials is not None:
            raise AgentError(
                f"{self.name}: an API key and the URL's user:password would both be the "
                "Authorization header: give one"
            )
        if api_key:
            require_secure_transport(self.base_url, self.name, key_env or "an API key", key_env)
        if credentials is not None:
            require_secure_transport(self.base_url, self.name, "the URL's user:password")
        self.playbook = playbook or load_playbook()
        self.usage = AgentUsage()
        self.timeout = timeout
        self.max_retries = max_retries
        self.json_mode = json_mode
        self._key_env = key_env
        self._secrets = tuple(
            s for s in (api_key, credentials and credentials.password) if isinstance(s, str) and s
        )
        self._headers = self._request_headers(api_key, credentials)
        self._client = self._make_client(api_key, http_client)
        # Set once an answer carries no `usage.cost` (only OpenRouter reports one).
        self.cost_note: str | None = None

    @staticmethod
    def _request_headers(api_key: str | None, credentials: Credentials | None) -> dict[str, Any]:
        from openai import Omit  # deferred: the SDK takes a second to import

        headers: dict[str, Any] = {name: Omit() for name in _AMBIENT_HEADERS}
        headers.update({name: Omit() for name in _custom_header_names()})
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        elif credentials is not None:
            headers["Authorization"] = _basic(credentials)
        else:
            headers["Authorization"] = Omit()  # a keyless server (Ollama, a LAN vLLM)
        return headers

    def _make_client(self, api_key: str | None, http_client: httpx2.Client | None) -> openai.OpenAI:
        import openai

        return openai.OpenAI(
            api_key=api_key or _NO_KEY,
            # Explicit, so the SDK never reads OPENAI_BASE_URL itself.
            base_url=self.base_url,
            max_retries=self.max_retries,
            timeout=self.timeout,
            http_client=http_client,
        )

    def _complete(self, system: str, messages: list[dict[str, str]]) -> str:
        import openai

        extra: dict[str, Any] = {}
        if self.json_mode:
            extra["response_format"] = {"type": "json_object"}
        try:
            response = self._client.chat.completions.create(
                model=self.model,
                # Plain role/content dicts; the SDK types them as a TypedDict union.
                messages=[{"role": "system", "content": system}, *messages],  # type: ignore[list-item]
                extra_headers=self._headers,
                **extra,
            )
        except openai.APIStatusError as e:
            raise self._status_error(e) from None
        except openai.APIConnectionError as e:  # APITimeoutError included
            attempts = _attempts(e.request)
            what = (
                f"timed out after {self.timeout:g} s"
                if isinstance(e, openai.APITimeoutError)
                else f"cannot connect ({type(e.__cause__ or e).__name__})"
            )
            tries = "1 attempt" if attempts == 1 else f"{attempts or 'several'} attempts"
            raise self._error(f"no answer after {tries}: {what}") from None
        except openai.OpenAIError as e:
            raise self._error(str(e)) from None
        return self._read(response)

    def _error(self, text: str) -> AgentError:
        return AgentError(redact(f"{self.name}: {text}", self._secrets))

    def _status_error(self, e: openai.APIStatusError) -> AgentError:
        status = e.status_code
        hint = f" (check {self._key_env})" if status in (401, 403) and self._key_env else ""
        text = f"HTTP {status}{hint}: {snippet(e.message, 300)}"
        attempts = _attempts(e.request)
        if attempts and attempts > 1:
            text = f"no answer after {attempts} attempts: {text}"
        return self._error(text)

    def _read(self, response: ChatCompletion) -> str:
        try:
            content = response.choices[0].message.content or ""
        except (AttributeError, IndexError, TypeError):
            raise self._error(
                f"not an OpenAI chat completion: {snippet(str(response), 200)}"
            ) from None
        usage = getattr(response, "usage", None)
        cost = getattr(usage, "cost", None)  # OpenRouter reports the charge; others do not
        if not isinstance(cost, (int, float)) and self.cost_note is None:
            self.cost_note = (
                f"{self.name} reports no cost: its spend is counted as $0, so "
                "--forge-max-dollars cannot stop this agent (tokens are still counted)"
            )
            log.warning(self.cost_note)
        self.usage.add(
            int(getattr(usage, "prompt_tokens", 0) or 0),
            int(getattr(usage, "completion_tokens", 0) or 0),
            float(cost) if isinstance(cost, (int, float)) else 0.0,
        )
        return str(content)
