"""How a benchmark run is scheduled: BenchOptions over a workload's replay, arrival times.

A run's settings come from the workload's sidecar (``Replay``) with the caller's
``BenchOptions`` on top. Open-loop runs send each request at an offset from the repeat's
start: the trace's ``arrival_offset_s``, or seeded Poisson/gamma arrival times for a
``request_rate`` (as vLLM's ``get_request``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

from pytest_forge.errors import BenchError

if TYPE_CHECKING:
    from pytest_forge.workload import Workload, WorkloadRequest


@dataclass(frozen=True)
class BenchOptions:
    """What the caller sets on top of the workload's sidecar; None keeps the sidecar's value."""

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
class Plan:
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
        """HTTP connections the run needs; None: no limit (an uncapped open loop)."""
        # +2 keeps a connection free for /metrics scrapes while every worker streams.
        if self.mode == "closed":
            return self.concurrency + 2
        return self.max_concurrency + 2 if self.max_concurrency else None


def make_plan(workload: Workload, options: BenchOptions) -> Plan:
    """The run's settings: ``options`` applied over the workload's replay (BenchError if bad)."""
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
    return Plan(
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


def schedule(
    requests: Sequence[WorkloadRequest], plan: Plan, rate_override: float | None
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


def repeat_offsets(offsets: Sequence[float], passes: int, min_duration_s: float) -> list[float]:
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
