"""The Claude agent: Anthropic's Messages API through the official ``anthropic`` SDK.

The SDK retries timeouts, 429 and 5xx with backoff and Retry-After; what is left when it
gives up becomes an AgentError without the key. Cost is counted from the token usage and
the prices below.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

from pytest_forge.errors import AgentError
from pytest_forge.tune.agent_chat import MAX_ANSWER_TOKENS, ChatAgent, redact
from pytest_forge.tune.agent_spec import DEFAULT_ANTHROPIC_MODEL, anthropic_base_url
from pytest_forge.tune.agent_types import AgentUsage
from pytest_forge.tune.playbook import load_playbook

if TYPE_CHECKING:
    import anthropic

    from pytest_forge.tune.playbook import Playbook

__all__ = ["ANTHROPIC_PRICES", "AnthropicAgent", "model_price"]

log = logging.getLogger(__name__)

# USD per million tokens (input, output). Longest matching prefix wins, so dated model
# ids ("claude-sonnet-4-5-20250929") price like their family.
ANTHROPIC_PRICES: dict[str, tuple[float, float]] = {
    "claude-opus-4-6": (5.0, 25.0),
    "claude-opus-4-5": (5.0, 25.0),
    "claude-opus-4-1": (15.0, 75.0),
    "claude-opus-4": (15.0, 75.0),
    "claude-sonnet-4": (3.0, 15.0),
    "claude-3-7-sonnet": (3.0, 15.0),
    "claude-3-5-sonnet": (3.0, 15.0),
    "claude-haiku-4-5": (1.0, 5.0),
    "claude-3-5-haiku": (0.8, 4.0),
    "claude-3-haiku": (0.25, 1.25),
}


def model_price(model: str, table: Mapping[str, tuple[float, float]]) -> tuple[float, float] | None:
    """(input, output) USD per million tokens of ``model``: its longest prefix in ``table``."""
    matches = [prefix for prefix in table if model.startswith(prefix)]
    return table[max(matches, key=len)] if matches else None


class AnthropicAgent(ChatAgent):
    """Claude through the official SDK, at ANTHROPIC_BASE_URL when set (https or loopback)."""

    def __init__(
        self,
        model: str = DEFAULT_ANTHROPIC_MODEL,
        playbook: Playbook | None = None,
        api_key: str | None = None,
        client: anthropic.Anthropic | None = None,
        *,
        env: Mapping[str, str] = os.environ,
        max_retries: int = 3,
        timeout: float = 120.0,
        max_tokens: int = MAX_ANSWER_TOKENS,
    ) -> None:
        self.model = model
        self.name = f"anthropic/{model}"
        self.playbook = playbook or load_playbook()
        self.usage = AgentUsage()
        self.max_tokens = max_tokens
        if client is None:
            import anthropic  # deferred: the SDK takes over a second to import

            key = api_key or env.get("ANTHROPIC_API_KEY")
            if not key:
                raise AgentError(f"{self.name}: set ANTHROPIC_API_KEY in the environment")
            # The SDK retries 408/409/429/5xx and timeouts itself, with backoff and
            # Retry-After; we only translate what is left when it gives up.
            client = anthropic.Anthropic(
                api_key=key,
                # Explicit, so the SDK never reads a different ANTHROPIC_BASE_URL itself.
                base_url=anthropic_base_url(env),
                max_retries=max_retries,
                timeout=timeout,
            )
        self._client = client
        self._secrets = tuple(s for s in (api_key, getattr(client, "api_key", None)) if s)
        price = model_price(model, ANTHROPIC_PRICES)
        self._price = price or (0.0, 0.0)
        self.cost_note = None if price else f"no price known for {model}: its cost is counted as $0"
        if self.cost_note:
            log.warning(self.cost_note)

    def _complete(self, system: str, messages: list[dict[str, str]]) -> str:
        import anthropic

        try:
            response = self._client.messages.create(
                model=self.model,
                max_tokens=self.max_tokens,
                system=system,
                # Plain role/content dicts; the SDK types them as a TypedDict union.
                messages=messages,  # type: ignore[arg-type]
            )
        except anthropic.APIStatusError as e:
            hint = " (check ANTHROPIC_API_KEY)" if e.status_code in (401, 403) else ""
            raise AgentError(
                redact(f"{self.name}: HTTP {e.status_code}{hint}: {e.message}", self._secrets)
            ) from None
        except anthropic.APITimeoutError:
            raise AgentError(f"{self.name}: the request timed out after retries") from None
        except anthropic.APIConnectionError as e:
            raise AgentError(
                redact(f"{self.name}: cannot reach the API after retries: {e}", self._secrets)
            ) from None
        except anthropic.AnthropicError as e:
            raise AgentError(redact(f"{self.name}: {e}", self._secrets)) from None
        usage = response.usage
        tokens_in = int(usage.input_tokens or 0) + int(
            (usage.cache_creation_input_tokens or 0) + (usage.cache_read_input_tokens or 0)
        )
        tokens_out = int(usage.output_tokens or 0)
        cost = (tokens_in * self._price[0] + tokens_out * self._price[1]) / 1e6
        self.usage.add(tokens_in, tokens_out, cost)
        return "".join(
            getattr(block, "text", "") for block in response.content if block.type == "text"
        )
