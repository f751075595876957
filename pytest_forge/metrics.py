"""What a benchmark run measured, with the metric definitions of vLLM's ``vllm bench serve``.

Client side (vllm/benchmarks/serve.py ``calculate_metrics``):

- a *token chunk* is a streamed event whose ``choices`` is non-empty, even when its text is
  empty (vLLM streams such chunks for partial UTF-8 bytes);
- TTFT = first token chunk - send; E2EL = last token chunk - send;
- output tokens come from the server's final usage chunk;
- TPOT = (E2EL - TTFT) / (output tokens - 1), only for requests with more than one token;
- ITL = gaps between successive token chunks, pooled over all requests;
- percentiles use numpy's default (linear) interpolation, std is the population std;
- throughputs divide by the repeat's duration (first timed send -> last timed finish);
- goodput = successful requests whose own TTFT, TPOT (0 for a one-token request) and E2EL
  are each <= the SLO value, per second.

Where vLLM prints 0 for a statistic over no values (e.g. TPOT when every request produced one
token), we report None: "not measured" must not pass an SLO as "0 ms".

Server side: a snapshot of vLLM's Prometheus ``/metrics`` before and after each repeat, plus
KV-cache usage samples taken during it.
"""

from __future__ import annotations

import bisect
import math
import statistics
from collections import Counter
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any

import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from pytest_forge.metric_registry import HEADLINE, THROUGHPUT, MetricSpec

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

    from pytest_forge.slo import SLO

MS = 1000.0
LATENCY_METRICS = ("ttft", "tpot", "itl", "e2el")
STATS = ("mean", "median", "std", "p50", "p90", "p99")


@dataclass
class RequestRecord:
    """One request as the client saw it. Times are ``time.perf_counter()`` seconds."""

    request_id: str
    send_time: float
    chunk_times: list[float]  # arrival of every token chunk (non-empty ``choices``)
    ttft: float | None  # seconds
    e2el: float | None  # seconds, send -> last token chunk
    prompt_tokens: int | None  # from the usage chunk
    output_tokens: int | None  # from the usage chunk
    output_text: str
    error: str | None  # None when the request succeeded
    finish_time: float | None = None  # when the response ended, failed or not

    @property
    def success(self) -> bool:
        """The request completed: no error, a first token and a usage count."""
        return self.error is None and self.ttft is not None and self.output_tokens is not None

    @property
    def tpot(self) -> float | None:
        """Seconds per output token after the first; None unless > 1 token (as vLLM)."""
        if not self.success or self.output_tokens is None or self.output_tokens <= 1:
            return None
        assert self.e2el is not None and self.ttft is not None
        return (self.e2el - self.ttft) / (self.output_tokens - 1)

    @property
    def itls(self) -> list[float]:
        """Gaps between successive token chunks, in seconds."""
        t = self.chunk_times
        return [t[i] - t[i - 1] for i in range(1, len(t))]

    def to_dict(self, chunk_times: bool = False) -> dict[str, Any]:
        """JSON-ready form, with ``success`` and ``tpot``; chunk times on request."""
        data = asdict(self)
        if not chunk_times:
            del data["chunk_times"]
        data["success"] = self.success
        data["tpot"] = self.tpot
        return data


def _stats(values: Sequence[float], scale: float = MS) -> dict[str, float | None]:
    """mean/median/std/p50/p90/p99 of ``values`` (seconds) in ms; all None when empty."""
    if not values:
        return dict.fromkeys(STATS)
    arr = np.asarray(values, dtype=float) * scale
    p50, p90, p99 = np.percentile(arr, [50.0, 90.0, 99.0])
    return {
        "mean": float(np.mean(arr)),
        "median": float(np.median(arr)),
        "std": float(np.std(arr)),
        "p50": float(p50),
        "p90": float(p90),
        "p99": float(p99),
    }


def _meets_slo(record: RequestRecord, slo: SLO) -> bool:
    # vLLM's goodput: each configured bound inclusive; a one-token request has TPOT 0.
    if slo.ttft_p99_ms is not None and (record.ttft or 0.0) * MS > slo.ttft_p99_ms:
        return False
    if slo.tpot_p99_ms is not None and (record.tpot or 0.0) * MS > slo.tpot_p99_ms:
        return False
    return not (slo.e2el_p99_ms is not None and (record.e2el or 0.0) * MS > slo.e2el_p99_ms)


def steady_state(records: Sequence[RequestRecord]) -> tuple[float, float] | None:
    """(output tok/s, window s) of a closed-loop repeat while all its workers were busy.

    The window runs from the first send to the first finish after the last send: until the
    last request goes out every finishing worker takes the next one at once, after it the
    workers go idle one by one. Tokens are the token chunks that arrived inside the window,
    each weighted by its request's usage tokens per chunk. None when nothing succeeded or
    the window is empty.
    """
    if not records:
        return None
    start = min(r.send_time for r in records)
    last_send = max(r.send_time for r in records)
    later = [f for r in records if (f := r.finish_time or r.send_time) > last_send]
    end = min(later) if later else last_send
    window = end - start
    if window <= 0:
        return None
    tokens = 0.0
    counted = False
    for r in records:
        times = r.chunk_times
        if not r.success or not times or not r.output_tokens:
            continue
        counted = True
        inside = bisect.bisect_right(times, end) - bisect.bisect_left(times, start)
        tokens += inside * r.output_tokens / len(times)
    if not counted:
        return None
    return tokens / window, window


@dataclass
class RepeatSummary:
    """One timed pass over the workload, like vLLM's ``BenchmarkMetrics``."""

    completed: int
    failed: int
    duration_s: float
    total_input_tokens: int
    total_output_tokens: int
    request_throughput: float
    output_throughput: float
    total_token_throughput: float
    goodput: float | None  # req/s meeting the SLO; None without a per-request SLO
    ttft_mean_ms: float | None = None
    ttft_median_ms: float | None = None
    ttft_std_ms: float | None = None
    ttft_p50_ms: float | None = None
    ttft_p90_ms: float | None = None
    ttft_p99_ms: float | None = None
    tpot_mean_ms: float | None = None
    tpot_median_ms: float | None = None
    tpot_std_ms: float | None = None
    tpot_p50_ms: float | None = None
    tpot_p90_ms: float | None = None
    tpot_p99_ms: float | None = None
    itl_mean_ms: float | None = None
    itl_median_ms: float | None = None
    itl_std_ms: float | None = None
    itl_p50_ms: float | None = None
    itl_p90_ms: float | None = None
    itl_p99_ms: float | None = None
    e2el_mean_ms: float | None = None
    e2el_median_ms: float | None = None
    e2el_std_ms: float | None = None
    e2el_p50_ms: float | None = None
    e2el_p90_ms: float | None = None
    e2el_p99_ms: float | None = None
    errors: dict[str, int] = field(default_factory=dict)  # error text -> count
    # Reported beside vLLM's figures, never instead (see steady_state):
    passes: int = 1  # passes over the workload this repeat replayed
    steady_output_throughput: float | None = None  # closed loop: tok/s while all users busy
    steady_window_s: float | None = None  # that window

    @classmethod
    def from_records(
        cls, records: Iterable[RequestRecord], duration_s: float, slo: SLO | None = None
    ) -> RepeatSummary:
        """Summarise one repeat's requests, as vLLM's ``calculate_metrics`` does."""
        ok: list[RequestRecord] = []
        errors: Counter[str] = Counter()
        for r in records:
            if r.success:
                ok.append(r)
            else:
                errors[r.error or "unknown error"] += 1
        total_in = sum(r.prompt_tokens or 0 for r in ok)
        total_out = sum(r.output_tokens or 0 for r in ok)

        def per_s(x: float) -> float:
            return x / duration_s if duration_s > 0 else 0.0

        goodput: float | None = None
        if slo is not None and any(
            v is not None for v in (slo.ttft_p99_ms, slo.tpot_p99_ms, slo.e2el_p99_ms)
        ):
            goodput = per_s(sum(1 for r in ok if _meets_slo(r, slo)))

        itls: list[float] = []
        for r in ok:
            itls += r.itls
        series: dict[str, list[float]] = {
            "ttft": [r.ttft for r in ok if r.ttft is not None],
            "tpot": [t for t in (r.tpot for r in ok) if t is not None],
            "itl": itls,
            "e2el": [r.e2el for r in ok if r.e2el is not None],
        }
        latency: dict[str, Any] = {}  # RepeatSummary's *_ms fields, by name
        for name, values in series.items():
            for stat, value in _stats(values).items():
                latency[f"{name}_{stat}_ms"] = value
        return cls(
            completed=len(ok),
            failed=sum(errors.values()),
            duration_s=duration_s,
            total_input_tokens=total_in,
            total_output_tokens=total_out,
            request_throughput=per_s(len(ok)),
            output_throughput=per_s(total_out),
            total_token_throughput=per_s(total_in + total_out),
            goodput=goodput,
            errors=dict(errors.most_common()),
            **latency,
        )


# Sample names per quantity, newest first; older vLLM releases used the gpu_ names.
_SERIES: dict[str, tuple[str, ...]] = {
    "preemptions": ("vllm:num_preemptions_total",),
    "prefix_cache_queries": (
        "vllm:prefix_cache_queries_total",
        "vllm:gpu_prefix_cache_queries_total",
    ),
    "prefix_cache_hits": ("vllm:prefix_cache_hits_total", "vllm:gpu_prefix_cache_hits_total"),
    "kv_cache_usage": ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),
}
_WANTED = {name for names in _SERIES.values() for name in names}
_PREFIXES = tuple(sorted(_WANTED))


@dataclass(frozen=True)
class ServerMetrics:
    """The vLLM counters pytest-forge reads from one ``/metrics`` scrape (None: not exported)."""

    preemptions: float | None = None
    prefix_cache_queries: float | None = None
    prefix_cache_hits: float | None = None
    kv_cache_usage: float | None = None  # 0..1, the fullest engine's

    @classmethod
    def parse(cls, text: str) -> ServerMetrics:
        """The counters in one ``/metrics`` page (Prometheus text format)."""
        # vLLM's page is long (histograms): hand the parser only the sample lines we read
        # (without their # TYPE lines each parses as an untyped family of its full name).
        lines = [ln for ln in text.splitlines() if ln.startswith(_PREFIXES)]
        sums: dict[str, float] = {}
        maxima: dict[str, float] = {}
        for family in text_string_to_metric_families("\n".join(lines) + "\n"):
            for sample in family.samples:
                if sample.name in _WANTED and not math.isnan(sample.value):
                    # Counters add up over label sets (engines); usage is per engine, so the
                    # fullest engine is the one that preempts.
                    sums[sample.name] = sums.get(sample.name, 0.0) + sample.value
                    maxima[sample.name] = max(maxima.get(sample.name, 0.0), sample.value)
        values: dict[str, float | None] = {}
        for attr, names in _SERIES.items():
            source = maxima if attr == "kv_cache_usage" else sums
            values[attr] = next((source[n] for n in names if n in source), None)
        return cls(**values)


@dataclass(frozen=True)
class ServerMetricsDelta:
    """How vLLM's counters moved over one repeat."""

    preemptions: int | None
    prefix_cache_queries: int | None
    prefix_cache_hits: int | None
    prefix_cache_hit_rate: float | None
    kv_cache_usage_max: float | None
    kv_cache_usage_mean: float | None

    @classmethod
    def between(
        cls, before: ServerMetrics, after: ServerMetrics, kv_samples: Sequence[float] = ()
    ) -> ServerMetricsDelta:
        """The change from ``before`` to ``after``, with the KV-cache usage samples between."""

        def delta(a: float | None, b: float | None) -> int | None:
            # A counter that went down means the server restarted in between: no delta.
            if a is None or b is None or b < a:
                return None
            return round(b - a)

        queries = delta(before.prefix_cache_queries, after.prefix_cache_queries)
        hits = delta(before.prefix_cache_hits, after.prefix_cache_hits)
        samples = [s for s in kv_samples if s is not None]
        return cls(
            preemptions=delta(before.preemptions, after.preemptions),
            prefix_cache_queries=queries,
            prefix_cache_hits=hits,
            prefix_cache_hit_rate=hits / queries if hits is not None and queries else None,
            kv_cache_usage_max=max(samples) if samples else None,
            kv_cache_usage_mean=statistics.fmean(samples) if samples else None,
        )


_SUMMARY_FIELDS = {f.name for f in fields(RepeatSummary)}
_SERVER_FIELDS = {f.name for f in fields(ServerMetricsDelta)}


def _canonical(metric: str) -> str:
    """Accept vLLM's spelling too: ``p99_ttft_ms`` / ``mean_ttft_ms`` -> ``ttft_p99_ms``."""
    if metric in _SUMMARY_FIELDS or metric in _SERVER_FIELDS:
        return metric
    parts = metric.split("_")
    if len(parts) == 3 and parts[0] in STATS and parts[1] in LATENCY_METRICS:
        return f"{parts[1]}_{parts[0]}_{parts[2]}"
    raise KeyError(f"unknown metric {metric!r}")


@dataclass
class Measurement:
    """Every timed repeat of one workload against one endpoint."""

    workload: str
    repeats: list[RepeatSummary]
    records: list[list[RequestRecord]]  # per repeat, in workload order
    server: list[ServerMetricsDelta | None]  # per repeat; None: the server has no /metrics
    vllm_version: str | None
    prefix_cache_reset: bool  # True when the prefix cache was reset before every repeat

    def values(self, metric: str) -> list[float]:
        """``metric`` of every repeat that measured it."""
        name = _canonical(metric)
        if name in _SUMMARY_FIELDS:
            raw: list[Any] = [getattr(r, name) for r in self.repeats]
        else:
            raw = [getattr(s, name) if s is not None else None for s in self.server]
        return [float(v) for v in raw if v is not None]

    def median(self, metric: str) -> float | None:
        """Median over repeats (None when no repeat measured it)."""
        vals = self.values(metric)
        return float(statistics.median(vals)) if vals else None

    def cv(self, metric: str = "output_throughput") -> float:
        """Coefficient of variation over repeats (sample stdev / mean); 0 with one repeat."""
        vals = self.values(metric)
        if len(vals) < 2:
            return 0.0
        mean = statistics.fmean(vals)
        return statistics.stdev(vals) / mean if mean else 0.0

    def extended(self, more: Measurement) -> Measurement:
        """This measurement with ``more``'s repeats (same workload, same server) appended."""
        return Measurement(
            workload=self.workload,
            repeats=[*self.repeats, *more.repeats],
            records=[*self.records, *more.records],
            server=[*self.server, *more.server],
            vllm_version=self.vllm_version or more.vllm_version,
            prefix_cache_reset=self.prefix_cache_reset and more.prefix_cache_reset,
        )

    def outputs(self) -> dict[str, str | None]:
        """First repeat's output text per request id; None for a failed request."""
        if not self.records:
            return {}
        return {r.request_id: r.output_text if r.success else None for r in self.records[0]}

    @property
    def failed_requests(self) -> int:
        """How many requests failed, over every repeat."""
        return sum(r.failed for r in self.repeats)

    def failures(self) -> list[RequestRecord]:
        """Every failed request of every repeat, with its error text."""
        return [r for recs in self.records for r in recs if not r.success]

    def headline(self) -> dict[str, float | int | str | None]:
        """The figures reports and baselines use (metric_registry.HEADLINE, in its order):
        medians over repeats, counts summed."""
        return {spec.name: self._aggregate(spec) for spec in HEADLINE}

    def _aggregate(self, spec: MetricSpec) -> float | int | None:
        if spec.aggregate == "total":
            # Counts are totals over repeats: a median would hide one repeat's failure.
            return sum(int(getattr(r, spec.name)) for r in self.repeats)
        if spec.aggregate == "cv":
            return self.cv(THROUGHPUT.name)
        if spec.aggregate == "count":
            return len(self.repeats)
        return self.median(spec.name)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Measurement:
        """Rebuild :meth:`to_dict`'s output (summaries only, no per-request records)."""
        repeat_fields = {f.name for f in fields(RepeatSummary)}
        server_fields = {f.name for f in fields(ServerMetricsDelta)}
        return cls(
            workload=str(data.get("workload") or ""),
            repeats=[
                RepeatSummary(**{k: v for k, v in r.items() if k in repeat_fields})
                for r in data.get("repeats") or []
            ],
            records=[],
            server=[
                ServerMetricsDelta(**{k: s.get(k) for k in server_fields}) if s else None
                for s in data.get("server") or []
            ],
            vllm_version=data.get("vllm_version"),
            prefix_cache_reset=bool(data.get("prefix_cache_reset")),
        )

    def to_dict(self, include_records: bool = False) -> dict[str, Any]:
        """JSON-ready form; per-request records (without chunk times) on request."""
        data: dict[str, Any] = {
            "workload": self.workload,
            "vllm_version": self.vllm_version,
            "prefix_cache_reset": self.prefix_cache_reset,
            "headline": self.headline(),
            "repeats": [asdict(r) for r in self.repeats],
            "server": [asdict(s) if s is not None else None for s in self.server],
        }
        if include_records:
            data["records"] = [[r.to_dict() for r in recs] for recs in self.records]
        return data
