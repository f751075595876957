"""Tuning agents: each proposes ONE validated mutation of the best recipe so far.

Three kinds share one contract (:class:`Agent`): Claude through the official
``anthropic`` SDK, any OpenAI-compatible chat endpoint through httpx, and the offline
``playbook`` strategy (a greedy coordinate search over the playbook's search space).
Whatever an agent proposes goes through :func:`validate_proposal` (search space,
hardware gates, duplicates, known crashes) before the tuner sees it; an LLM that
proposes something illegal is told why and asked again, at most twice.

API keys come from the environment, live only inside the HTTP clients, and are
scrubbed from every error message.
"""

from __future__ import annotations

import email.utils
import json
import logging
import os
import random
import re
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

import httpx
import yaml

from pytest_forge.endpoint import (
    Credentials,
    redact_url,
    require_secure_transport,
    split_credentials,
)
from pytest_forge.errors import AgentError, ForgeError, RecipeError
from pytest_forge.hardware import recipe_quant_problem
from pytest_forge.tune.agent_spec import (
    DEFAULT_ANTHROPIC_MODEL,
    anthropic_base_url,
    default_agent_spec,
    parse_agent_spec,
    public_agent_spec,
)
from pytest_forge.tune.playbook import (
    Playbook,
    SearchSpace,
    classify_hardware,
    load_playbook,
    same_value,
)

if TYPE_CHECKING:
    import anthropic

    from pytest_forge.hardware import HostHardware
    from pytest_forge.recipe import Recipe

__all__ = [
    "DEFAULT_ANTHROPIC_MODEL",
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

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 3  # one ask + two re-asks with the refusal reason
MAX_ANSWER_TOKENS = 1024
_SNIPPET_CHARS = 400

Status = Literal["baseline", "kept", "rejected", "invalid", "crashed"]


# ----------------------------------------------------------------------- data


@dataclass(frozen=True)
class Proposal:
    rationale: str
    changes: dict[str, Any]


@dataclass
class AgentUsage:
    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0

    def add(self, input_tokens: int = 0, output_tokens: int = 0, cost_usd: float = 0.0) -> None:
        self.calls += 1
        self.input_tokens += input_tokens
        self.output_tokens += output_tokens
        self.cost_usd += cost_usd


@dataclass(frozen=True)
class HistoryEntry:
    exp: int
    recipe_id: str  # the candidate's content hash
    changes: dict[str, Any]
    rationale: str
    status: Status
    score: float | None = None
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)  # per workload headline
    reason: str | None = None  # why rejected / the error snippet of a failure


@dataclass
class ProposalContext:
    recipe: Recipe  # the best so far: proposals are mutations of it
    hardware: HostHardware
    hardware_class: str
    search_space: SearchSpace
    history: list[HistoryEntry] = field(default_factory=list)
    objective: str = "output_throughput"
    tried_hashes: set[str] = field(default_factory=set)


@runtime_checkable
class Agent(Protocol):
    name: str
    usage: AgentUsage

    def propose(self, ctx: ProposalContext) -> Proposal:
        """A validated proposal, or AgentError(reason)."""
        ...


# ----------------------------------------------------------------------- validation


def _flatten(recipe: Recipe) -> dict[str, Any]:
    """The recipe's tunable values as dotted keys (``config.max_num_seqs``: 256)."""
    data = recipe.model_dump(mode="json", exclude_none=True)
    flat: dict[str, Any] = {}
    for section in ("config", "compilation", "quant", "env"):
        for key, value in (data.get(section) or {}).items():
            flat[f"{section}.{key}"] = value
    return flat


def _hardware_gate(
    host: HostHardware, changes: Mapping[str, Any], recipe_gpus: int | None = None
) -> str | None:
    # Quantization is gated on the whole candidate (_check): quant.* and config.* spell it.
    for key, value in changes.items():
        if key == "config.tensor_parallel_size":
            # The recipe declares its GPUs (hardware.count); the winner must run there,
            # not only on this (maybe bigger) host.
            gpus = max(1, min(host.count, recipe_gpus) if recipe_gpus else host.count)
            if not isinstance(value, int) or isinstance(value, bool) or value > gpus:
                return (
                    f"{key}={value!r} exceeds the {gpus} GPU(s) of the recipe's hardware "
                    "and this host"
                )
    return None


def _vllm_would_refuse(candidate: Recipe) -> str | None:
    """Scheduler settings vLLM 0.32 rejects at startup (SchedulerConfig.verify_max_model_len).

    Checked here because a refused boot costs minutes on a GPU and teaches nothing.
    Only values the recipe states are compared; vLLM's own defaults vary by hardware.
    """
    config = candidate.config
    tokens, seqs = config.get("max_num_batched_tokens"), config.get("max_num_seqs")
    model_len = config.get("max_model_len")
    if (
        config.get("enable_chunked_prefill") is False
        and isinstance(tokens, int)
        and isinstance(model_len, int)
        and tokens < model_len
    ):
        return (
            f"vLLM refuses to start with enable_chunked_prefill false and "
            f"max_num_batched_tokens ({tokens}) below max_model_len ({model_len})"
        )
    if isinstance(tokens, int) and isinstance(seqs, int) and tokens < seqs:
        return (
            f"vLLM refuses to start with max_num_batched_tokens ({tokens}) "
            f"below max_num_seqs ({seqs})"
        )
    return None


def _same_changes(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    return a.keys() == b.keys() and all(same_value(a[k], b[k]) for k in a)


def _check(ctx: ProposalContext, proposal: Proposal) -> tuple[Proposal | None, str | None]:
    """The proposal with values in their listed form, or why it is refused."""
    if not proposal.changes:
        return None, "the proposal has no changes: propose at least one"
    space = ctx.search_space
    canonical: dict[str, Any] = {}
    for key, value in proposal.changes.items():
        if key not in space.params:
            return None, (
                f"'{key}' is not in the {ctx.hardware_class} search space "
                f"(legal keys: {', '.join(space.ordered_keys())})"
            )
        try:
            canonical[key] = space.canonical(key, value)
        except ValueError as e:
            return None, str(e)
    gate = _hardware_gate(ctx.hardware, canonical, ctx.recipe.hardware.count)
    if gate:
        return None, gate
    current = _flatten(ctx.recipe)
    if all(k in current and same_value(current[k], v) for k, v in canonical.items()):
        return None, "no actual change: the best recipe already has these values"
    for entry in ctx.history:
        if entry.status == "crashed" and _same_changes(entry.changes, canonical):
            return None, (
                f"this change set crashed in experiment {entry.exp}"
                + (f": {_snippet(entry.reason, 160)}" if entry.reason else "")
            )
    try:
        candidate = ctx.recipe.with_changes(canonical)
    except ForgeError as e:
        return None, f"the recipe rejects it: {e}"
    quant = recipe_quant_problem(candidate, ctx.hardware)
    if quant:
        return None, f"{quant[0]} is not allowed on this hardware: {quant[1]}"
    refusal = _vllm_would_refuse(candidate)
    if refusal:
        return None, refusal
    digest = candidate.content_hash
    if digest == ctx.recipe.content_hash:
        return None, "no actual change: the resulting recipe equals the best recipe"
    if digest in ctx.tried_hashes:
        when = next((e.exp for e in ctx.history if e.recipe_id == digest), None)
        where = f" in experiment {when}" if when is not None else ""
        return None, f"that exact recipe ({digest}) was already tried{where}"
    return Proposal(rationale=proposal.rationale, changes=canonical), None


def validate_proposal(ctx: ProposalContext, proposal: Proposal) -> str | None:
    """None when the proposal may run, else the reason it is refused."""
    return _check(ctx, proposal)[1]


# ----------------------------------------------------------------------- prompt

_SYSTEM = """\
You are an expert vLLM performance engineer tuning a deployment recipe. Each turn you \
propose exactly ONE mutation of the best recipe so far (usually one knob; two only when \
they only make sense together). The mutation is booted and benchmarked; it is kept if it \
beats the best score and every accuracy floor and SLO holds, otherwise reverted.

Rules:
- Use only keys and values listed in the legal search space for this hardware.
- Never repeat an experiment from the history, never repeat a change set that crashed.
- Ground the rationale in the evidence (history metrics) and the playbook heuristics.

Answer with ONE JSON object and nothing else, exactly this shape:
{"rationale": "<one or two sentences>", "changes": {"config.max_num_seqs": 128}}

The playbook follows.

"""


def _yaml_block(data: Any, compact: bool = True) -> str:
    # Compact: leaf lists and maps in flow style, so value lists and change sets stay on
    # one line each; the recipe reads better as a plain block.
    flow = None if compact else False
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=flow, width=100).rstrip()


def _snippet(text: str | None, limit: int = _SNIPPET_CHARS) -> str:
    text = " ".join((text or "").split())
    # The end of an error log says what went wrong; keep that.
    return text if len(text) <= limit else "..." + text[-(limit - 3) :]


def _round(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 4 if abs(value) < 10 else 1)
    if isinstance(value, dict):
        return {k: _round(v) for k, v in value.items()}
    return value


def _history_data(history: list[HistoryEntry]) -> list[dict[str, Any]]:
    out = []
    for entry in history:
        item: dict[str, Any] = {"exp": entry.exp, "status": entry.status}
        item["score"] = _round(entry.score)
        item["changes"] = dict(entry.changes)
        if entry.rationale:
            item["rationale"] = entry.rationale
        if entry.metrics:
            item["metrics"] = _round(dict(entry.metrics))
        if entry.reason:
            item["reason"] = _snippet(entry.reason)
        out.append(item)
    return out


def build_prompt(ctx: ProposalContext, playbook: Playbook) -> tuple[str, str]:
    """The (system, user) messages asking for one mutation as strict JSON."""
    system = _SYSTEM + playbook.text.strip() + "\n"
    _, note = classify_hardware(ctx.hardware)
    data = ctx.recipe.model_dump(mode="json", exclude_none=True)
    recipe = {s: data[s] for s in ("model", "config", "compilation", "quant", "env") if data.get(s)}
    history = _history_data(ctx.history)
    parts = [
        f"Hardware: {ctx.hardware.describe()}",
        f"Hardware class: {ctx.hardware_class}" + (f" ({note})" if note else ""),
        f"Objective (higher score is better): {ctx.objective}",
        "",
        f"Legal search space for {ctx.hardware_class} (dotted recipe keys):",
        _yaml_block(ctx.search_space.to_prompt_dict()),
        "",
        f"Best recipe so far (content hash {ctx.recipe.content_hash}):",
        _yaml_block(recipe, compact=False),
        "",
        "Experiment history (oldest first; status baseline|kept|rejected|invalid|crashed):",
        _yaml_block(history) if history else "(none yet)",
        "",
        "Propose ONE mutation of the best recipe. Answer with the JSON object only: "
        '{"rationale": "...", "changes": {"<dotted key>": <value>}}',
    ]
    return system, "\n".join(parts)


# ----------------------------------------------------------------------- parsing

_FENCED_RE = re.compile(r"\A```(?:json|JSON)?[ \t]*\n(?P<body>.*?)\n?```\Z", re.S)


def parse_answer(text: str) -> Proposal:
    """A strict-JSON answer (optionally inside one ```json fence) as a Proposal."""
    stripped = (text or "").strip()
    if not stripped:
        raise AgentError("the answer is empty: expected a JSON object")
    fenced = _FENCED_RE.match(stripped)
    if fenced:
        stripped = fenced.group("body").strip()
    try:
        data = json.loads(stripped)
    except json.JSONDecodeError as e:
        raise AgentError(
            f"the answer is not valid JSON ({e.msg} at line {e.lineno} column {e.colno}): "
            "answer with the JSON object only, no prose"
        ) from None
    if not isinstance(data, dict):
        raise AgentError(f"the answer must be a JSON object, not {type(data).__name__}")
    missing = [k for k in ("rationale", "changes") if k not in data]
    if missing:
        raise AgentError(f"the answer lacks {', '.join(repr(k) for k in missing)}")
    extra = sorted(set(data) - {"rationale", "changes"})
    if extra:
        raise AgentError(
            f"unexpected key(s) {', '.join(repr(k) for k in extra)}: "
            "the answer has exactly 'rationale' and 'changes'"
        )
    rationale, changes = data["rationale"], data["changes"]
    if not isinstance(rationale, str) or not rationale.strip():
        raise AgentError("'rationale' must be a non-empty string")
    if not isinstance(changes, dict):
        raise AgentError(
            f"'changes' must be an object of dotted key -> value, not {type(changes).__name__}"
        )
    for key, value in changes.items():
        if value is not None and not isinstance(value, (str, int, float, bool)):
            raise AgentError(
                f"'changes'.'{key}' must be a string, number or boolean, not {type(value).__name__}"
            )
    return Proposal(rationale=rationale.strip(), changes=dict(changes))


# ----------------------------------------------------------------------- LLM agents


def _redact(text: str, secrets: tuple[str, ...]) -> str:
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "[redacted]")
    return text


class _ChatAgent:
    """The ask → validate → re-ask loop shared by the LLM agents."""

    name: str
    usage: AgentUsage
    playbook: Playbook
    _secrets: tuple[str, ...] = ()

    def _complete(self, system: str, messages: list[dict[str, str]]) -> str:
        raise NotImplementedError

    def propose(self, ctx: ProposalContext) -> Proposal:
        system, user = build_prompt(ctx, self.playbook)
        messages = [{"role": "user", "content": user}]
        reason = ""
        for attempt in range(1, MAX_ATTEMPTS + 1):
            text = self._complete(system, messages)
            try:
                proposal, refusal = _check(ctx, parse_answer(text))
            except AgentError as e:
                proposal, refusal = None, str(e)
            if proposal is not None:
                return proposal
            reason = refusal or "refused"
            log.info("%s: attempt %d refused: %s", self.name, attempt, reason)
            messages += [
                {"role": "assistant", "content": text or "(empty)"},
                {
                    "role": "user",
                    "content": f"Refused: {reason}\nPropose a different, legal mutation. "
                    "Answer with the JSON object only.",
                },
            ]
        raise AgentError(
            f"{self.name}: no acceptable proposal after {MAX_ATTEMPTS} attempts: {reason}"
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


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


def _price(model: str, table: Mapping[str, tuple[float, float]]) -> tuple[float, float] | None:
    matches = [prefix for prefix in table if model.startswith(prefix)]
    return table[max(matches, key=len)] if matches else None


class AnthropicAgent(_ChatAgent):
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
        price = _price(model, ANTHROPIC_PRICES)
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
                messages=messages,  # type: ignore[arg-type]
            )
        except anthropic.APIStatusError as e:
            hint = " (check ANTHROPIC_API_KEY)" if e.status_code in (401, 403) else ""
            raise AgentError(
                _redact(f"{self.name}: HTTP {e.status_code}{hint}: {e.message}", self._secrets)
            ) from None
        except anthropic.APITimeoutError:
            raise AgentError(f"{self.name}: the request timed out after retries") from None
        except anthropic.APIConnectionError as e:
            raise AgentError(
                _redact(f"{self.name}: cannot reach the API after retries: {e}", self._secrets)
            ) from None
        except anthropic.AnthropicError as e:
            raise AgentError(_redact(f"{self.name}: {e}", self._secrets)) from None
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


def _retry_after(response: httpx.Response) -> float | None:
    """Seconds the server asks us to wait (Retry-After: seconds or an HTTP date)."""
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


class OpenAICompatibleAgent(_ChatAgent):
    """Any OpenAI-compatible ``/chat/completions`` endpoint, over httpx."""

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
        client: httpx.Client | None = None,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
        max_attempts: int = 3,
        timeout: float = 120.0,
        backoff_s: float = 1.0,
        max_wait_s: float = 60.0,
        json_mode: bool = False,
    ) -> None:
        try:
            # user:password never stays in the URL (nor in names, messages, tracebacks):
            # it is sent as Basic auth, by httpx from ``auth=``.
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
        self._key_env = key_env
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._auth = credentials.auth() if credentials is not None else None
        self._secrets = tuple(
            s for s in (api_key, credentials and credentials.password) if isinstance(s, str) and s
        )
        self._client = client or httpx.Client(timeout=timeout)
        self._sleep = sleep
        self._rng = rng or random.Random()
        self.max_attempts = max_attempts
        self.timeout = timeout
        self.backoff_s = backoff_s
        self.max_wait_s = max_wait_s
        self.json_mode = json_mode
        # Set once an answer carries no `usage.cost` (only OpenRouter reports one).
        self.cost_note: str | None = None

    def _backoff(self, attempt: int) -> float:
        # Exponential with jitter, so parallel tuners do not retry in lockstep.
        delay = self.backoff_s * 2 ** (attempt - 1)
        return min(self.max_wait_s, delay * (0.5 + self._rng.random() * 0.5))

    def _complete(self, system: str, messages: list[dict[str, str]]) -> str:
        url = f"{self.base_url}/chat/completions"
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [{"role": "system", "content": system}, *messages],
        }
        if self.json_mode:
            body["response_format"] = {"type": "json_object"}
        last = ""
        for attempt in range(1, self.max_attempts + 1):
            wait: float | None = None
            try:
                response = self._client.post(
                    url, json=body, headers=self._headers, auth=self._auth, timeout=self.timeout
                )
            except httpx.TimeoutException:
                last = f"timed out after {self.timeout:g} s"
            except httpx.TransportError as e:
                last = f"cannot connect ({type(e).__name__})"
            else:
                status = response.status_code
                if status == 429 or status >= 500:
                    last = f"HTTP {status}: {_snippet(response.text, 200)}"
                    wait = _retry_after(response)
                elif status >= 400:
                    hint = (
                        f" (check {self._key_env})"
                        if status in (401, 403) and self._key_env
                        else ""
                    )
                    raise AgentError(
                        _redact(
                            f"{self.name}: HTTP {status}{hint}: {_snippet(response.text, 300)}",
                            self._secrets,
                        )
                    )
                else:
                    return self._read(response)
            if attempt < self.max_attempts:
                delay = self._backoff(attempt) if wait is None else min(wait, self.max_wait_s)
                log.info("%s: %s; retrying in %.1f s", self.name, last, delay)
                self._sleep(delay)
        raise AgentError(
            _redact(
                f"{self.name}: no answer after {self.max_attempts} attempts: {last}",
                self._secrets,
            )
        )

    def _read(self, response: httpx.Response) -> str:
        try:
            data = response.json()
            content = data["choices"][0]["message"].get("content") or ""
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            raise AgentError(
                _redact(
                    f"{self.name}: not an OpenAI chat completion: {_snippet(response.text, 200)}",
                    self._secrets,
                )
            ) from None
        usage = data.get("usage") or {}
        cost = usage.get("cost")  # OpenRouter reports the charge; others do not
        if not isinstance(cost, (int, float)) and self.cost_note is None:
            self.cost_note = (
                f"{self.name} reports no cost: its spend is counted as $0, so "
                "--forge-max-dollars cannot stop this agent (tokens are still counted)"
            )
            log.warning(self.cost_note)
        self.usage.add(
            int(usage.get("prompt_tokens") or 0),
            int(usage.get("completion_tokens") or 0),
            float(cost) if isinstance(cost, (int, float)) else 0.0,
        )
        return str(content)


# ----------------------------------------------------------------------- offline agent


def _neighbours(values: list[Any], current: Any, distance: int) -> Iterator[tuple[Any, str]]:
    """Values ``distance`` steps above, then below, the current one (booleans flip)."""
    if all(isinstance(v, bool) for v in values):
        if distance == 1:
            for v in values:
                if current is None or not same_value(v, current):
                    yield v, "flip" if current is not None else "set"
        return
    index = next((i for i, v in enumerate(values) if same_value(v, current)), None)
    if index is None and isinstance(current, str):
        index = next((i for i, v in enumerate(values) if str(v) == current), None)
    if index is not None:
        for i, direction in ((index + distance, "up"), (index - distance, "down")):
            if 0 <= i < len(values):
                yield values[i], direction
        return
    numeric = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if isinstance(current, (int, float)) and not isinstance(current, bool) and numeric:
        # An unlisted current value: its neighbours are the listed values around it.
        above = sorted(v for v in numeric if v > current)
        below = sorted((v for v in numeric if v < current), reverse=True)
        if len(above) >= distance:
            yield above[distance - 1], "up"
        if len(below) >= distance:
            yield below[distance - 1], "down"
        return
    if distance == 1:
        for v in values:
            yield v, "set"


_BEST = ("baseline", "kept")
_STEP_WORDS = {
    (1, "up"): "next value up",
    (1, "down"): "next value down",
    (1, "flip"): "flipped",
    (1, "set"): "unset so far",
    (2, "up"): "two-step jump up",
    (2, "down"): "two-step jump down",
}


class PlaybookAgent:
    """Offline, deterministic cyclic coordinate search over the playbook's space.

    Single-parameter moves from the best recipe, nearest values first, cycling through the
    parameters in priority order from the one the last experiment moved: a kept change
    moves the best, so a parameter keeps walking while it improves, and moves rejected
    from an older best are tried again from the new one (parameters interact). Then
    two-step jumps. When no single move is left untried, pairs of moves, the pair whose
    two moves lost least on their own first (e.g. chunked prefill off only pays with a
    bigger token budget). The tuner refuses anything already measured.

    Everything is derived from the context (history, tried hashes), so a resumed run
    makes the same proposal as the uninterrupted one would have.
    """

    def __init__(self, playbook: Playbook | None = None) -> None:
        self.name = "playbook"
        self.playbook = playbook or load_playbook()
        self.usage = AgentUsage()

    def __repr__(self) -> str:
        return "PlaybookAgent()"

    def propose(self, ctx: ProposalContext) -> Proposal:
        self.usage.add()
        refused = 0
        for proposal in self._candidates(ctx):
            checked, _ = _check(ctx, proposal)
            if checked is not None:
                return checked
            refused += 1
        raise AgentError(
            f"playbook: search space exhausted for {ctx.hardware_class} "
            f"({len(ctx.history)} experiments, {refused} remaining candidates refused)"
        )

    def _candidates(self, ctx: ProposalContext) -> Iterator[Proposal]:
        space = ctx.search_space
        keys = space.ordered_keys()
        current = _flatten(ctx.recipe)
        singles = [e for e in ctx.history if len(e.changes) == 1 and next(iter(e.changes)) in keys]
        start = keys.index(next(iter(singles[-1].changes))) if singles else 0
        order = keys[start:] + keys[:start]
        best = max(
            (e.score for e in ctx.history if e.score is not None and e.status in _BEST),
            default=None,
        )
        evidence = f"best score so far {best:.4g}" if best is not None else "no score yet"

        def rationale(key: str, value: Any, distance: int, direction: str) -> str:
            spec = space.params[key]
            cur = current.get(key, spec.default)
            shown = json.dumps(value)
            move = f"{json.dumps(cur)} -> {shown}" if cur is not None else f"set {shown}"
            return (
                f"{key}: {move} ({_STEP_WORDS[distance, direction]}, priority {spec.priority}; "
                f"{evidence}). Playbook, {ctx.hardware_class}: {spec.why or 'a listed value'}"
            )

        moves: list[tuple[str, Any, str]] = []  # distance-1 moves, for the pairs
        for distance in (1, 2):
            for key in order:
                spec = space.params[key]
                cur = current.get(key, spec.default)
                for value, direction in _neighbours(list(spec.values), cur, distance):
                    text = rationale(key, value, distance, direction)
                    if distance == 1:
                        moves.append((key, value, text))
                    yield Proposal(rationale=text, changes={key: value})

        # Pairs: what each move scored alone from this best (unmeasured: neutral).
        scores = {e.recipe_id: e.score for e in ctx.history if e.score is not None}
        neutral = best if best is not None else 0.0

        def alone(move: tuple[str, Any, str]) -> float:
            key, value, _ = move
            try:
                moved = ctx.recipe.with_changes({key: value}).content_hash
            except RecipeError:
                return neutral
            score = scores.get(moved)
            return neutral if score is None else score

        pairs = [(a, b) for i, a in enumerate(moves) for b in moves[i + 1 :] if a[0] != b[0]]
        # Stable sort: ties keep the priority order.
        pairs.sort(key=lambda ab: -(alone(ab[0]) + alone(ab[1])))
        for (ka, va, ta), (kb, vb, tb) in pairs:
            yield Proposal(
                rationale=f"together, as neither alone beat the best: {ta} | {tb}",
                changes={ka: va, kb: vb},
            )


# ----------------------------------------------------------------------- factory


def make_agent(
    spec: str, playbook: Playbook | None = None, env: Mapping[str, str] = os.environ
) -> Agent:
    """An agent from a spec string; keys come from ``env`` and are never stored on disk.

    - ``playbook``: the offline agent (no network).
    - ``anthropic/<model>``: Claude; needs ANTHROPIC_API_KEY (ANTHROPIC_BASE_URL honoured).
    - ``openai/<model>``: needs OPENAI_API_KEY; OPENAI_BASE_URL overrides the endpoint.
    - ``openrouter/<model>``: needs OPENROUTER_API_KEY (the model may contain '/').
    - ``ollama/<model>``: local Ollama, no key; OLLAMA_BASE_URL overrides the endpoint.
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
