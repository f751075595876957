"""The benchmark driver: replay a Workload against an OpenAI-compatible endpoint.

A run is: optional warmup requests (not counted), then ``repeats`` timed passes over the
whole workload, each preceded by a prefix-cache reset and bracketed by ``/metrics`` scrapes.
Closed loop: ``concurrency`` workers take requests in file order. Open loop: each request is
sent at its planned offset from the repeat's start (bench_plan.py), optionally capped by a
semaphore. The requests themselves are sent and timed by bench_client.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pytest_forge.bench_client import (
    Aborted,
    Client,
    HealthCheck,
    Prepared,
    make_http_client,
    prepare,
    sample_kv,
)
from pytest_forge.bench_plan import (
    BenchOptions,
    Plan,
    arrival_times,
    make_plan,
    repeat_offsets,
    schedule,
)
from pytest_forge.errors import BenchError
from pytest_forge.metrics import (
    Measurement,
    RepeatSummary,
    RequestRecord,
    ServerMetricsDelta,
    steady_state,
)

if TYPE_CHECKING:
    from pytest_forge.endpoint import Endpoint
    from pytest_forge.workload import Workload, WorkloadRequest

__all__ = [
    "BenchOptions",
    "HealthCheck",
    "Progress",
    "ProgressCallback",
    "arrival_times",
    "run_bench",
    "run_workload",
]

log = logging.getLogger(__name__)

PROGRESS_INTERVAL_S = 0.25  # at most ~4 progress callbacks a second


@dataclass(frozen=True)
class Progress:
    """How far a phase of the run is, for a progress line."""

    phase: Literal["warmup", "repeat"]
    repeat: int  # 1-based; 0 during warmup
    repeats: int
    done: int
    total: int
    output_tokens: int  # so far in this phase
    elapsed_s: float  # since this phase started


ProgressCallback = Callable[[Progress], None]


class _ProgressMeter:
    """Counts a phase's finished requests and calls the progress callback, rate-limited."""

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
        """Count one finished request."""
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
    client: Client,
    preps: Sequence[Prepared],
    concurrency: int,
    meter: _ProgressMeter,
    passes: int = 1,
    min_duration_s: float = 0.0,
) -> list[RequestRecord]:
    n = len(preps)
    records: dict[int, RequestRecord] = {}
    start = time.perf_counter()

    def jobs() -> Iterator[tuple[int, Prepared]]:
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


async def _open_loop(
    client: Client,
    preps: Sequence[Prepared],
    offsets: Sequence[float],
    max_concurrency: int | None,
    meter: _ProgressMeter,
) -> list[RequestRecord]:
    records: list[RequestRecord | None] = [None] * len(preps)
    gate: asyncio.Semaphore | contextlib.nullcontext[None] = (
        asyncio.Semaphore(max_concurrency) if max_concurrency else contextlib.nullcontext()
    )

    aborted = asyncio.Event()

    async def one(i: int, prep: Prepared) -> None:
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
    plan = make_plan(workload, options)
    requests = list(workload.requests)
    if not requests:
        raise BenchError(f"{workload.path}: the workload has no requests")
    async with make_http_client(endpoint, plan) as http:
        client = Client(http, endpoint.url, plan.timeout_s, health_check)
        try:
            return await _run(client, endpoint, workload, requests, plan, options, on_progress)
        except Aborted as exc:
            raise exc.cause from None


async def _run(
    client: Client,
    endpoint: Endpoint,
    workload: Workload,
    requests: list[WorkloadRequest],
    plan: Plan,
    options: BenchOptions,
    on_progress: ProgressCallback | None,
) -> Measurement:
    model = endpoint.model or await client.discover_model()
    version = await client.version()
    preps = prepare(endpoint.url, model, workload, requests)

    if plan.warmup:
        warm = [preps[i % len(preps)] for i in range(plan.warmup)]
        meter = _ProgressMeter(on_progress, "warmup", 0, plan.repeats, len(warm))
        warm_records = await _closed_loop(client, warm, plan.concurrency, meter)
        if warm_records and all(not r.success for r in warm_records):
            raise BenchError(
                f"{workload.name}: all {len(warm_records)} warmup requests to {endpoint.url} "
                f"failed, e.g. {warm_records[0].error}"
            )

    offsets = schedule(requests, plan, options.request_rate) if plan.mode == "open" else []
    if offsets and (options.passes > 1 or options.min_duration_s > 0):
        offsets = repeat_offsets(offsets, options.passes, options.min_duration_s)
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
            asyncio.create_task(sample_kv(client, options.metrics_interval_s, kv))
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
