"""One benchmark run's HTTP side: the requests it sends, timed streams, control endpoints.

Every workload request is serialised once (``/v1/completions`` for prompts,
``/v1/chat/completions`` for messages) and streamed on one ``httpx.AsyncClient``, its token
chunks timed the way vLLM's ``vllm bench serve`` does (see metrics.py). A failed request
(HTTP error, connection error, timeout, a stream without token chunks, usage or ``[DONE]``)
becomes a record with its error text, never an exception. After a connection error the
caller's health check runs: if it raises (the server died), the run stops with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx

from pytest_forge.bench_sse import SSEParser
from pytest_forge.bench_transport import fast_transport
from pytest_forge.errors import BenchError
from pytest_forge.metrics import RequestRecord, ServerMetrics

if TYPE_CHECKING:
    from pytest_forge.bench_plan import Plan
    from pytest_forge.endpoint import Endpoint
    from pytest_forge.workload import Workload, WorkloadRequest

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 30.0
_JSON_HEADERS = {"content-type": "application/json"}

HealthCheck = Callable[[], None]


@dataclass(frozen=True)
class Prepared:
    """One workload request, ready to send."""

    request_id: str
    url: str
    body: bytes  # serialised once per run: repeats resend the same bytes
    chat: bool


def prepare(
    base_url: str, model: str, workload: Workload, requests: Sequence[WorkloadRequest]
) -> list[Prepared]:
    """Each request's URL and JSON body (model, limits, streaming with usage, seed)."""
    replay = workload.replay
    out: list[Prepared] = []
    for index, req in enumerate(requests):
        chat = req.messages is not None
        payload: dict[str, Any] = {"model": model}
        if chat:
            payload["messages"] = req.messages
            # Chat's current name for the limit (vLLM's benchmark client sends this one).
            payload["max_completion_tokens"] = req.expected_output_tokens
        else:
            payload["prompt"] = req.prompt
            payload["max_tokens"] = req.expected_output_tokens
        payload.update(
            stream=True,
            stream_options={"include_usage": True},
            ignore_eos=replay.ignore_eos,
            temperature=replay.temperature,
            # Per-request seeds make sampled runs reproducible request by request.
            seed=replay.seed + index,
        )
        path = "/v1/chat/completions" if chat else "/v1/completions"
        out.append(Prepared(req.id, base_url + path, json.dumps(payload).encode(), chat))
    return out


def error_message(body: bytes) -> str:
    """The message of an HTTP error body (OpenAI-style JSON or text), at most 300 chars."""
    text = body.decode("utf-8", "replace").strip()
    try:
        data = json.loads(text)
    except ValueError:
        return text[:300] or "(empty body)"
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])[:300]
        for key in ("message", "detail", "error"):
            if data.get(key):
                return str(data[key])[:300]
    return text[:300]


def exc_text(exc: BaseException) -> str:
    """``Type: detail`` of an exception, at most 300 chars."""
    detail = str(exc).strip()
    return f"{type(exc).__name__}: {detail}"[:300] if detail else type(exc).__name__


class Aborted(Exception):
    """Internal: the health check raised; carries its exception out of the workers."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


class Client:
    """One run's HTTP side: streaming requests, control endpoints, /metrics."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        base_url: str,
        timeout_s: float,
        health_check: HealthCheck | None,
    ) -> None:
        self.http = client
        self.base_url = base_url
        self.timeout_s = timeout_s
        self.health_check = health_check
        self.metrics_supported = True
        self.reset_supported = True

    def _check_health(self) -> None:
        if self.health_check is None:
            return
        try:
            self.health_check()
        except BaseException as exc:
            raise Aborted(exc) from exc

    async def stream(self, prep: Prepared) -> RequestRecord:
        """Send one streaming request and time its token chunks (vLLM's definitions)."""
        sse = SSEParser(prep.chat)
        error: str | None = None
        connection_lost = False
        send = time.perf_counter()
        deadline = send + self.timeout_s
        try:
            async with self.http.stream(
                "POST", prep.url, content=prep.body, headers=_JSON_HEADERS
            ) as resp:
                if resp.status_code != 200:
                    error = f"HTTP {resp.status_code}: {error_message(await resp.aread())}"
                else:
                    async for data in resp.aiter_raw():
                        # One timestamp per network read: every event in it arrived then.
                        now = time.perf_counter()
                        sse.feed(data, now)
                        if now > deadline:
                            error = f"timed out after {self.timeout_s:g} s (still streaming)"
                            break
        except httpx.TimeoutException as exc:
            error = f"timed out after {self.timeout_s:g} s ({type(exc).__name__})"
        except (httpx.NetworkError, httpx.RemoteProtocolError) as exc:
            error = exc_text(exc)
            connection_lost = True
        except httpx.HTTPError as exc:
            error = exc_text(exc)
        except (ValueError, AttributeError, TypeError) as exc:  # not UTF-8 / JSON objects
            error = f"malformed stream: {exc_text(exc)}"
        finish = time.perf_counter()
        times, usage = sse.chunk_times, sse.usage
        if error is None:
            error = sse.problem()
        if connection_lost:
            self._check_health()
        return RequestRecord(
            request_id=prep.request_id,
            send_time=send,
            chunk_times=times,
            ttft=times[0] - send if times else None,
            e2el=times[-1] - send if times else None,
            prompt_tokens=usage.get("prompt_tokens") if usage else None,
            output_tokens=usage.get("completion_tokens") if usage else None,
            output_text="".join(sse.texts),
            error=error,
            finish_time=finish,
        )

    async def get_json(self, path: str, check_health: bool = True) -> Any:
        """GET ``path`` as JSON; BenchError when unreachable, not 200 or not JSON."""
        url = self.base_url + path
        try:
            resp = await self.http.get(url, timeout=CONNECT_TIMEOUT_S)
        except httpx.TransportError as exc:
            if check_health and isinstance(exc, httpx.NetworkError):
                self._check_health()
            raise BenchError(f"cannot reach {url}: {exc_text(exc)}") from exc
        if resp.status_code != 200:
            raise BenchError(f"GET {url}: HTTP {resp.status_code}: {error_message(resp.content)}")
        try:
            return resp.json()
        except ValueError as exc:
            raise BenchError(f"GET {url}: the answer is not JSON: {exc}") from exc

    async def discover_model(self) -> str:
        """The first model /v1/models lists (BenchError when none)."""
        data = await self.get_json("/v1/models")
        models = data.get("data") if isinstance(data, dict) else None
        if not models or not isinstance(models[0], dict) or not models[0].get("id"):
            raise BenchError(f"GET {self.base_url}/v1/models: the server lists no model")
        return str(models[0]["id"])

    async def version(self) -> str | None:
        """vLLM's version from /version, or None when the server does not say."""
        with contextlib.suppress(BenchError, AttributeError):
            data = await self.get_json("/version", check_health=False)
            return str(data["version"]) if data.get("version") else None
        return None

    async def reset_prefix_cache(self) -> bool:
        """POST /reset_prefix_cache; False (and never again) when the server lacks it."""
        if not self.reset_supported:
            return False
        try:
            resp = await self.http.post(self.base_url + "/reset_prefix_cache", timeout=60)
        except httpx.TransportError as exc:
            log.warning("prefix cache reset failed: %s", exc_text(exc))
            return False
        if resp.status_code in (404, 405):
            # Only vLLM's dev mode (VLLM_SERVER_DEV_MODE=1) serves it.
            self.reset_supported = False
            return False
        return 200 <= resp.status_code < 300

    async def scrape(self) -> ServerMetrics | None:
        """One /metrics snapshot; None when unavailable (and never asked again after 404)."""
        if not self.metrics_supported:
            return None
        try:
            resp = await self.http.get(self.base_url + "/metrics", timeout=CONNECT_TIMEOUT_S)
        except httpx.TransportError:
            return None
        if resp.status_code in (404, 405):
            self.metrics_supported = False
            return None
        if resp.status_code != 200:
            return None
        try:
            return ServerMetrics.parse(resp.text)
        except ValueError as exc:
            log.warning("unparseable /metrics from %s: %s", self.base_url, exc)
            return None


def make_http_client(endpoint: Endpoint, plan: Plan) -> httpx.AsyncClient:
    """The run's httpx client: pool sized to the plan, no proxies, redirects or compression."""
    endpoint.check_transport()  # no key or user:password over plain http off this machine
    # Compressed SSE would have to be inflated before parsing: ask for none.
    headers = {"accept-encoding": "identity"}
    if endpoint.api_key:
        headers["authorization"] = f"Bearer {endpoint.api_key}"
    timeout = httpx.Timeout(plan.timeout_s, connect=min(plan.timeout_s, CONNECT_TIMEOUT_S))
    pool = plan.pool_size
    limits = httpx.Limits(
        max_connections=pool, max_keepalive_connections=pool, keepalive_expiry=60.0
    )
    transport = fast_transport(pool) if endpoint.url.startswith("http://") else None
    return httpx.AsyncClient(
        headers=headers,
        # user:password from the URL: never in the URL httpx (or aiohttp) is given.
        auth=endpoint.auth,
        timeout=timeout,
        limits=limits,
        transport=transport,
        # Proxies from the environment would distort what we measure.
        trust_env=False,
        follow_redirects=False,
    )


async def sample_kv(client: Client, interval_s: float, out: list[float]) -> None:
    """Append vLLM's KV-cache usage to ``out`` every ``interval_s`` until cancelled."""
    while True:
        await asyncio.sleep(interval_s)
        snap = await client.scrape()
        if snap is None:
            if not client.metrics_supported:
                return
            continue
        if snap.kv_cache_usage is not None:
            out.append(snap.kv_cache_usage)
