"""The benchmark client: replay a Workload against an OpenAI-compatible endpoint.

One ``httpx.AsyncClient`` per run streams every request (``/v1/completions`` for prompts,
``/v1/chat/completions`` for messages) and times each token chunk the way vLLM's
``vllm bench serve`` does (see metrics.py). A run is: optional warmup requests (not counted),
then ``repeats`` timed passes over the whole workload, each preceded by a prefix-cache reset
and bracketed by ``/metrics`` scrapes.

Closed loop: ``concurrency`` workers take requests in file order. Open loop: each request is
sent at its ``arrival_offset_s`` from the repeat's start, or at seeded Poisson/gamma arrival
times for a ``request_rate`` (as vLLM's ``get_request``), optionally capped by a semaphore.

A failed request (HTTP error, connection error, timeout, a stream without token chunks, usage
or ``[DONE]``) is recorded with its error text and counted, never dropped. After a connection
error the caller's ``health_check`` runs: if it raises (the server died), the run stops with
that exception.

The client's CPU per streamed chunk must not exceed vLLM's own aiohttp-based client (we share
the cores with the server under test; see benchmarks/client_overhead.py). httpx's default
transport parses HTTP in pure Python (h11), one event per HTTP chunk, which costs about twice
vLLM's client; so when aiohttp is importable (it always is next to vLLM) the client runs on a
small aiohttp-backed httpx transport, and the SSE parser below works on whole network reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import httpx
import numpy as np

from pytest_forge.errors import BenchError
from pytest_forge.metrics import (
    Measurement,
    RepeatSummary,
    RequestRecord,
    ServerMetrics,
    ServerMetricsDelta,
    steady_state,
)

if TYPE_CHECKING:
    from pytest_forge.endpoint import Endpoint
    from pytest_forge.workload import Workload, WorkloadRequest

log = logging.getLogger(__name__)

PROGRESS_INTERVAL_S = 0.25  # at most ~4 progress callbacks a second
CONNECT_TIMEOUT_S = 30.0
_JSON_HEADERS = {"content-type": "application/json"}
_raw_decode = json.JSONDecoder().raw_decode  # skips json.loads' wrappers on the hot path


@dataclass(frozen=True)
class BenchOptions:
    repeats: int = 3
    warmup: int | None = None  # None: the workload's sidecar value
    concurrency: int | None = None  # closed loop: workers; open loop: in-flight cap
    request_rate: float | None = None  # set: open loop at this Poisson rate (req/s)
    reset_prefix_cache: bool = True
    # KV-cache usage sampling period during a timed repeat; 0 = off (the default). Each
    # /metrics request blocks vLLM's API server while it renders: on the tiny CPU model a
    # sample every 0.5 s stalled every stream for ~1 s and halved chat throughput.
    metrics_interval_s: float = 0.0
    # Each timed repeat replays the workload this many times back to back (closed loop: the
    # workers never wait for a pass to drain; open loop: pass k's arrivals are shifted by k
    # schedule spans). A short workload's repeat ends with a few long requests draining
    # almost alone, and that tail decides its throughput; more passes dilute the tail.
    passes: int = 1
    # Closed loop: keep starting further passes until the repeat has run this long (s),
    # like perf_analyzer's measurement interval; 0 = exactly ``passes`` passes.
    min_duration_s: float = 0.0


@dataclass(frozen=True)
class Progress:
    phase: Literal["warmup", "repeat"]
    repeat: int  # 1-based; 0 during warmup
    repeats: int
    done: int
    total: int
    output_tokens: int  # so far in this phase
    elapsed_s: float  # since this phase started


ProgressCallback = Callable[[Progress], None]
HealthCheck = Callable[[], None]


@dataclass(frozen=True)
class _Plan:
    """The replay settings after BenchOptions overrides are applied."""

    mode: Literal["closed", "open"]
    concurrency: int  # closed-loop workers (also the warmup's)
    max_concurrency: int | None  # open-loop cap
    request_rate: float | None
    burstiness: float
    warmup: int
    repeats: int
    timeout_s: float
    seed: int

    @property
    def pool_size(self) -> int | None:
        # +2 keeps a connection free for /metrics scrapes while every worker streams.
        if self.mode == "closed":
            return self.concurrency + 2
        return self.max_concurrency + 2 if self.max_concurrency else None


def _plan(workload: Workload, options: BenchOptions) -> _Plan:
    replay = workload.replay
    if options.repeats < 1:
        raise BenchError(f"{workload.name}: repeats must be >= 1, got {options.repeats}")
    if options.passes < 1:
        raise BenchError(f"{workload.name}: passes must be >= 1, got {options.passes}")
    if options.min_duration_s < 0:
        raise BenchError(
            f"{workload.name}: min_duration_s must be >= 0, got {options.min_duration_s}"
        )
    # An explicit request rate turns any workload into an open loop at that rate.
    mode: Literal["closed", "open"] = "open" if options.request_rate is not None else workload.mode
    rate = options.request_rate if options.request_rate is not None else replay.request_rate
    if mode == "closed":
        concurrency = options.concurrency or replay.concurrency
        cap = None
    else:
        # A closed workload's concurrency is not a cap on arrivals forced by a rate.
        cap = options.concurrency or (replay.max_concurrency if workload.mode == "open" else None)
        concurrency = cap or replay.concurrency  # the warmup's workers
    warmup = options.warmup if options.warmup is not None else replay.warmup
    return _Plan(
        mode=mode,
        concurrency=max(1, concurrency),
        max_concurrency=cap,
        request_rate=rate,
        burstiness=replay.burstiness,
        warmup=max(0, warmup),
        repeats=options.repeats,
        timeout_s=replay.request_timeout_s,
        seed=replay.seed,
    )


def arrival_times(n: int, rate: float, burstiness: float, seed: int) -> list[float]:
    """Send offsets (s) for ``n`` requests at ``rate`` req/s, as vLLM's ``get_request``.

    Gamma-distributed gaps (shape = burstiness; 1 is Poisson), rescaled so the last request
    goes out at ``n / rate`` exactly, which keeps throughput comparable across seeds.
    """
    if n == 0:
        return []
    if math.isinf(rate):
        return [0.0] * n
    if math.isinf(burstiness):
        gaps = np.full(n, 1.0 / rate)
    else:
        rng = np.random.default_rng(seed)
        gaps = rng.gamma(shape=burstiness, scale=1.0 / (rate * burstiness), size=n)
    times = np.cumsum(gaps)
    times *= (n / rate) / times[-1]
    return [float(t) for t in times]


def _schedule(
    requests: Sequence[WorkloadRequest], plan: _Plan, rate_override: float | None
) -> list[float]:
    """Open-loop send offsets: the file's arrival_offset_s unless a rate is to be used."""
    have_offsets = all(r.arrival_offset_s is not None for r in requests)
    if rate_override is not None or (not have_offsets and plan.request_rate is not None):
        rate = rate_override if rate_override is not None else plan.request_rate
        assert rate is not None
        return arrival_times(len(requests), rate, plan.burstiness, plan.seed)
    # A request without an offset goes out with the one before it.
    out: list[float] = []
    last = 0.0
    for r in requests:
        if r.arrival_offset_s is not None:
            last = float(r.arrival_offset_s)
        out.append(last)
    return out


@dataclass(frozen=True)
class _Prepared:
    request_id: str
    url: str
    body: bytes  # serialised once per run: repeats resend the same bytes
    chat: bool


def _prepare(
    base_url: str, model: str, workload: Workload, requests: Sequence[WorkloadRequest]
) -> list[_Prepared]:
    replay = workload.replay
    out: list[_Prepared] = []
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
        out.append(_Prepared(req.id, base_url + path, json.dumps(payload).encode(), chat))
    return out


def _error_message(body: bytes) -> str:
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


def _exc_text(exc: BaseException) -> str:
    detail = str(exc).strip()
    return f"{type(exc).__name__}: {detail}"[:300] if detail else type(exc).__name__


class _ProgressMeter:
    def __init__(
        self,
        callback: ProgressCallback | None,
        phase: Literal["warmup", "repeat"],
        repeat: int,
        repeats: int,
        total: int,
    ) -> None:
        self.callback = callback
        self.phase: Literal["warmup", "repeat"] = phase
        self.repeat = repeat
        self.repeats = repeats
        self.total = total
        self.done = 0
        self.tokens = 0
        self.start = time.perf_counter()
        self.last = 0.0

    def tick(self, record: RequestRecord) -> None:
        self.done += 1
        self.tokens += record.output_tokens or 0
        if self.callback is None:
            return
        now = time.perf_counter()
        if now - self.last >= PROGRESS_INTERVAL_S or self.done == self.total:
            self.last = now
            self.callback(
                Progress(
                    self.phase,
                    self.repeat,
                    self.repeats,
                    self.done,
                    self.total,
                    self.tokens,
                    now - self.start,
                )
            )


class _SSEParser:
    """Incremental parser of one completions / chat SSE stream, fed whole network reads.

    Runs once per streamed chunk, so it is written for CPU: one decode and split per read,
    and JSON decoded in place from the ``data: `` line without copying it.
    """

    __slots__ = ("chat", "chunk_times", "done", "error", "tail", "texts", "usage")

    def __init__(self, chat: bool) -> None:
        self.chat = chat
        self.tail = b""
        self.chunk_times: list[float] = []
        self.texts: list[str] = []
        self.usage: dict[str, Any] | None = None
        self.done = False
        self.error: str | None = None

    def feed(self, data: bytes, now: float) -> None:
        if self.tail:
            data = self.tail + data
        cut = data.rfind(b"\n") + 1
        self.tail = data[cut:]
        if not cut:
            return
        chat = self.chat
        times = self.chunk_times
        texts = self.texts
        # Only whole lines are decoded, so a UTF-8 sequence is never split.
        for line in data[:cut].decode().split("\n"):
            if line[:7] == "data: {":
                obj = _raw_decode(line, 6)[0]
            elif line.startswith("data:"):
                payload = line[5:].strip()
                if payload == "[DONE]":
                    self.done = True
                    continue
                obj = _raw_decode(payload)[0]
            else:
                continue  # blank separators, ": ping" comments, event: lines
            choices = obj.get("choices")
            if choices:
                # A token chunk even when its text is empty (partial UTF-8), as vLLM counts.
                times.append(now)
                c = choices[0]
                text = (c.get("delta") or {}).get("content") if chat else c.get("text")
                if text:
                    texts.append(text)
            usage = obj.get("usage")
            if usage:
                self.usage = usage
            elif not choices and (obj.get("error") or obj.get("object") == "error"):
                err = obj.get("error")
                msg = err.get("message") if isinstance(err, dict) else err
                self.error = f"server error in stream: {msg or obj.get('message')}"


class _Aborted(Exception):
    """Internal: the health check raised; carries its exception out of the workers."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


class _Client:
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
            raise _Aborted(exc) from exc

    async def stream(self, prep: _Prepared) -> RequestRecord:
        """Send one streaming request and time its token chunks (vLLM's definitions)."""
        sse = _SSEParser(prep.chat)
        error: str | None = None
        connection_lost = False
        send = time.perf_counter()
        deadline = send + self.timeout_s
        try:
            async with self.http.stream(
                "POST", prep.url, content=prep.body, headers=_JSON_HEADERS
            ) as resp:
                if resp.status_code != 200:
                    error = f"HTTP {resp.status_code}: {_error_message(await resp.aread())}"
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
            error = _exc_text(exc)
            connection_lost = True
        except httpx.HTTPError as exc:
            error = _exc_text(exc)
        except (ValueError, AttributeError, TypeError) as exc:  # not UTF-8 / JSON objects
            error = f"malformed stream: {_exc_text(exc)}"
        finish = time.perf_counter()
        times, usage = sse.chunk_times, sse.usage
        if error is None:
            if sse.error is not None:
                error = sse.error
            elif not times:
                error = "stream ended without any token chunk"
            elif usage is None:
                error = "stream ended without a usage chunk (stream_options.include_usage)"
            elif not sse.done:
                error = "stream ended without data: [DONE]"
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
        url = self.base_url + path
        try:
            resp = await self.http.get(url, timeout=CONNECT_TIMEOUT_S)
        except httpx.TransportError as exc:
            if check_health and isinstance(exc, httpx.NetworkError):
                self._check_health()
            raise BenchError(f"cannot reach {url}: {_exc_text(exc)}") from exc
        if resp.status_code != 200:
            raise BenchError(f"GET {url}: HTTP {resp.status_code}: {_error_message(resp.content)}")
        try:
            return resp.json()
        except ValueError as exc:
            raise BenchError(f"GET {url}: the answer is not JSON: {exc}") from exc

    async def discover_model(self) -> str:
        data = await self.get_json("/v1/models")
        models = data.get("data") if isinstance(data, dict) else None
        if not models or not isinstance(models[0], dict) or not models[0].get("id"):
            raise BenchError(f"GET {self.base_url}/v1/models: the server lists no model")
        return str(models[0]["id"])

    async def version(self) -> str | None:
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
            log.warning("prefix cache reset failed: %s", _exc_text(exc))
            return False
        if resp.status_code in (404, 405):
            # Only vLLM's dev mode (VLLM_SERVER_DEV_MODE=1) serves it.
            self.reset_supported = False
            return False
        return 200 <= resp.status_code < 300

    async def scrape(self) -> ServerMetrics | None:
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


async def _run_tasks(tasks: list[asyncio.Task[Any]]) -> None:
    """Wait for every task; on the first failure cancel the rest and re-raise it."""
    if not tasks:
        return
    done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    failed = next((t for t in done if not t.cancelled() and t.exception() is not None), None)
    if failed is None:
        return
    for t in pending:
        t.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    exc = failed.exception()
    assert exc is not None
    raise exc


async def _closed_loop(
    client: _Client,
    preps: Sequence[_Prepared],
    concurrency: int,
    meter: _ProgressMeter,
    passes: int = 1,
    min_duration_s: float = 0.0,
) -> list[RequestRecord]:
    n = len(preps)
    records: dict[int, RequestRecord] = {}
    start = time.perf_counter()

    def jobs() -> Iterator[tuple[int, _Prepared]]:
        # One queue shared by the workers, in file order, pass after pass: a worker that
        # finishes pass k's last requests goes straight on to pass k + 1's first ones.
        k = 0
        while k < passes or (min_duration_s > 0 and time.perf_counter() - start < min_duration_s):
            if k >= passes:  # an extra pass for min_duration_s
                meter.total += n
            for i, prep in enumerate(preps):
                yield k * n + i, prep
            k += 1

    queue = jobs()
    meter.total = n * passes

    async def worker() -> None:
        for slot, prep in queue:
            rec = await client.stream(prep)
            records[slot] = rec
            meter.tick(rec)

    workers = [asyncio.create_task(worker()) for _ in range(min(concurrency, n * passes))]
    await _run_tasks(workers)
    return [records[k] for k in sorted(records)]


def _repeat_offsets(offsets: Sequence[float], passes: int, min_duration_s: float) -> list[float]:
    """Open-loop send offsets of ``passes`` back-to-back passes over one pass's ``offsets``.

    Pass k is pass 0 shifted by k spans; a span is the last offset plus the mean gap, so the
    passes join at the schedule's own rate. ``min_duration_s`` adds passes until the planned
    schedule covers it.
    """
    n = len(offsets)
    if not n:
        return []
    first, last = min(offsets), max(offsets)
    span = last + ((last - first) / (n - 1) if n > 1 else 0.0)
    if min_duration_s > 0 and span > 0:
        passes = max(passes, math.ceil(min_duration_s / span))
    return [k * span + t for k in range(passes) for t in offsets]


async def _open_loop(
    client: _Client,
    preps: Sequence[_Prepared],
    offsets: Sequence[float],
    max_concurrency: int | None,
    meter: _ProgressMeter,
) -> list[RequestRecord]:
    records: list[RequestRecord | None] = [None] * len(preps)
    gate: asyncio.Semaphore | contextlib.nullcontext[None] = (
        asyncio.Semaphore(max_concurrency) if max_concurrency else contextlib.nullcontext()
    )

    aborted = asyncio.Event()

    async def one(i: int, prep: _Prepared) -> None:
        try:
            async with gate:
                rec = await client.stream(prep)
        except BaseException:
            aborted.set()
            raise
        records[i] = rec
        meter.tick(rec)

    tasks: list[asyncio.Task[None]] = []
    start = time.perf_counter()
    for i, prep in enumerate(preps):
        delay = start + offsets[i] - time.perf_counter()
        if delay > 0:
            # Sleep until the next arrival, but wake up at once if the run is aborting.
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(aborted.wait(), delay)
        if aborted.is_set():
            break  # _run_tasks re-raises the failure
        tasks.append(asyncio.create_task(one(i, prep)))
    await _run_tasks(tasks)
    return [r for r in records if r is not None]


async def _sample_kv(client: _Client, interval_s: float, out: list[float]) -> None:
    while True:
        await asyncio.sleep(interval_s)
        snap = await client.scrape()
        if snap is None:
            if not client.metrics_supported:
                return
            continue
        if snap.kv_cache_usage is not None:
            out.append(snap.kv_cache_usage)


def _make_http_client(endpoint: Endpoint, plan: _Plan) -> httpx.AsyncClient:
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
    transport = _fast_transport(pool) if endpoint.url.startswith("http://") else None
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


async def run_workload(
    endpoint: Endpoint,
    workload: Workload,
    options: BenchOptions | None = None,
    *,
    on_progress: ProgressCallback | None = None,
    health_check: HealthCheck | None = None,
) -> Measurement:
    """Warm up, then measure ``options.repeats`` timed passes of ``workload``."""
    options = options or BenchOptions()
    plan = _plan(workload, options)
    requests = list(workload.requests)
    if not requests:
        raise BenchError(f"{workload.path}: the workload has no requests")
    async with _make_http_client(endpoint, plan) as http:
        client = _Client(http, endpoint.url, plan.timeout_s, health_check)
        try:
            return await _run(client, endpoint, workload, requests, plan, options, on_progress)
        except _Aborted as exc:
            raise exc.cause from None


async def _run(
    client: _Client,
    endpoint: Endpoint,
    workload: Workload,
    requests: list[WorkloadRequest],
    plan: _Plan,
    options: BenchOptions,
    on_progress: ProgressCallback | None,
) -> Measurement:
    model = endpoint.model or await client.discover_model()
    version = await client.version()
    preps = _prepare(endpoint.url, model, workload, requests)

    if plan.warmup:
        warm = [preps[i % len(preps)] for i in range(plan.warmup)]
        meter = _ProgressMeter(on_progress, "warmup", 0, plan.repeats, len(warm))
        warm_records = await _closed_loop(client, warm, plan.concurrency, meter)
        if warm_records and all(not r.success for r in warm_records):
            raise BenchError(
                f"{workload.name}: all {len(warm_records)} warmup requests to {endpoint.url} "
                f"failed, e.g. {warm_records[0].error}"
            )

    offsets = _schedule(requests, plan, options.request_rate) if plan.mode == "open" else []
    if offsets and (options.passes > 1 or options.min_duration_s > 0):
        offsets = _repeat_offsets(offsets, options.passes, options.min_duration_s)
    open_preps = [preps[i % len(preps)] for i in range(len(offsets))]
    slo = workload.replay.slo
    slo_arg = None if slo is None or slo.is_empty() else slo

    summaries: list[RepeatSummary] = []
    all_records: list[list[RequestRecord]] = []
    deltas: list[ServerMetricsDelta | None] = []
    reset_ok = options.reset_prefix_cache
    for rep in range(1, plan.repeats + 1):
        if options.reset_prefix_cache:
            reset_ok = await client.reset_prefix_cache() and reset_ok
        before = await client.scrape()
        kv: list[float] = []
        sampler = (
            asyncio.create_task(_sample_kv(client, options.metrics_interval_s, kv))
            if before is not None and options.metrics_interval_s > 0
            else None
        )
        meter = _ProgressMeter(on_progress, "repeat", rep, plan.repeats, len(preps))
        try:
            if plan.mode == "closed":
                records = await _closed_loop(
                    client, preps, plan.concurrency, meter, options.passes, options.min_duration_s
                )
            else:
                meter.total = len(open_preps)
                records = await _open_loop(client, open_preps, offsets, plan.max_concurrency, meter)
        finally:
            if sampler is not None:
                sampler.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sampler
        after = await client.scrape() if before is not None else None
        first_send = min(r.send_time for r in records)
        last_finish = max(r.finish_time or r.send_time for r in records)
        summary = RepeatSummary.from_records(records, last_finish - first_send, slo_arg)
        summary.passes = len(records) // len(preps)
        if plan.mode == "closed":
            steady = steady_state(records)
            if steady is not None:
                summary.steady_output_throughput, summary.steady_window_s = steady
        delta = (
            ServerMetricsDelta.between(before, after, kv)
            if before is not None and after is not None
            else None
        )
        log.info(
            "%s repeat %d/%d: %.1f tok/s, %d ok, %d failed",
            workload.name,
            rep,
            plan.repeats,
            summary.output_throughput,
            summary.completed,
            summary.failed,
        )
        summaries.append(summary)
        all_records.append(records)
        deltas.append(delta)

    return Measurement(
        workload=workload.name,
        repeats=summaries,
        records=all_records,
        server=deltas,
        vllm_version=version,
        prefix_cache_reset=reset_ok,
    )


def run_bench(
    endpoint: Endpoint,
    workload: Workload,
    options: BenchOptions | None = None,
    *,
    on_progress: ProgressCallback | None = None,
    health_check: HealthCheck | None = None,
) -> Measurement:
    """Synchronous ``run_workload`` (its own event loop)."""
    return asyncio.run(
        run_workload(
            endpoint, workload, options, on_progress=on_progress, health_check=health_check
        )
    )


# --- transport -----------------------------------------------------------------------------


def _fast_transport(pool: int | None) -> httpx.AsyncBaseTransport | None:
    """The aiohttp-backed transport when aiohttp is installed, else httpx's own (None)."""
    try:
        import aiohttp  # noqa: F401  (a vLLM dependency; optional for pytest-forge)
    except ImportError:
        return None
    return AiohttpTransport(limit=pool or 0)


class _AiohttpStream(httpx.AsyncByteStream):
    def __init__(self, response: Any, errors: Callable[[BaseException], Exception]) -> None:
        self._response = response
        self._errors = errors

    async def __aiter__(self) -> AsyncIterator[bytes]:
        # iter_any hands over everything buffered: several SSE events per read under load,
        # which is where aiohttp's client saves its CPU.
        try:
            async for data in self._response.content.iter_any():
                yield data
        except Exception as exc:
            mapped = self._errors(exc)
            if mapped is exc:
                raise
            raise mapped from exc

    async def aclose(self) -> None:
        if self._response.content.at_eof():
            self._response.release()  # back to the pool
        else:
            self._response.close()  # an unfinished body: the connection cannot be reused


class AiohttpTransport(httpx.AsyncBaseTransport):
    """An httpx transport on aiohttp's C HTTP parser, for plain-HTTP streaming at low CPU.

    aiohttp errors are mapped to httpx's exception classes, so callers handle one set.
    """

    def __init__(self, limit: int = 0) -> None:
        self._limit = limit
        self._session: Any = None

    def _map_error(self, exc: BaseException) -> Exception:
        import aiohttp

        if isinstance(exc, getattr(aiohttp, "ConnectionTimeoutError", ())):
            return httpx.ConnectTimeout(str(exc) or "connect timed out")
        if isinstance(exc, (aiohttp.ServerTimeoutError, asyncio.TimeoutError)):
            return httpx.ReadTimeout(str(exc) or "read timed out")
        if isinstance(exc, aiohttp.ClientConnectorError):
            return httpx.ConnectError(str(exc))
        if isinstance(exc, (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError)):
            return httpx.RemoteProtocolError(str(exc) or type(exc).__name__)
        if isinstance(exc, (aiohttp.ClientOSError, aiohttp.ClientConnectionError)):
            return httpx.ReadError(str(exc) or type(exc).__name__)
        if isinstance(exc, aiohttp.ClientError):
            return httpx.TransportError(str(exc) or type(exc).__name__)
        return exc if isinstance(exc, Exception) else RuntimeError(str(exc))

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        import aiohttp

        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=self._limit, limit_per_host=self._limit, keepalive_timeout=60
                ),
                auto_decompress=False,  # httpx decodes content-encoding itself
                trust_env=False,
                skip_auto_headers=("User-Agent", "Content-Type", "Accept-Encoding"),
            )
        t = request.extensions.get("timeout", {})
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=t.get("connect"), sock_read=t.get("read")
        )
        headers = [
            (k.decode("latin-1"), v.decode("latin-1"))
            for k, v in request.headers.raw
            if k.lower() not in (b"host", b"content-length", b"transfer-encoding")
        ]
        try:
            resp = await self._session.request(
                request.method,
                str(request.url),
                headers=headers,
                data=await request.aread() or None,
                timeout=timeout,
                allow_redirects=False,
            )
        except Exception as exc:
            mapped = self._map_error(exc)
            if mapped is exc:
                raise
            raise mapped from exc
        return httpx.Response(
            resp.status,
            headers=list(resp.raw_headers),
            stream=_AiohttpStream(resp, self._map_error),
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": (resp.reason or "").encode()},
            request=request,
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
