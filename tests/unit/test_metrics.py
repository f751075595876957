"""Metrics from hand-built records, checked against hand-computed values and vLLM's own
``calculate_metrics``; Prometheus parsing and deltas; Measurement aggregation."""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import json
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pytest_forge.metrics import (
    Measurement,
    RepeatSummary,
    RequestRecord,
    ServerMetrics,
    ServerMetricsDelta,
)
from pytest_forge.slo import SLO


def rec(
    rid: str,
    send: float,
    chunks: list[float],
    out: int | None,
    prompt: int | None = 4,
    error: str | None = None,
    text: str = "x",
) -> RequestRecord:
    return RequestRecord(
        request_id=rid,
        send_time=send,
        chunk_times=chunks,
        ttft=chunks[0] - send if chunks else None,
        e2el=chunks[-1] - send if chunks else None,
        prompt_tokens=prompt,
        output_tokens=out,
        output_text=text,
        error=error,
        finish_time=(chunks[-1] if chunks else send) + 0.001,
    )


def records() -> list[RequestRecord]:
    return [
        # TTFT 100 ms, E2EL 400 ms, TPOT (400-100)/2 = 150 ms, ITLs 100, 200
        rec("a", 0.0, [0.1, 0.2, 0.4], out=3, prompt=5),
        # TTFT 300, E2EL 700, TPOT 400/4 = 100, ITLs 4 x 100 (one chunk may be text-less)
        rec("b", 1.0, [1.3, 1.4, 1.5, 1.6, 1.7], out=5, prompt=7),
        # one token: TTFT = E2EL = 200, no TPOT, no ITL
        rec("c", 2.0, [2.2], out=1, prompt=3),
        # failed: counted, never part of the latency figures
        rec("d", 2.5, [2.6], out=None, prompt=None, error="HTTP 500: boom"),
    ]


def test_request_record_properties() -> None:
    a, b, c, d = records()
    assert a.success and b.success and c.success and not d.success
    assert a.tpot == pytest.approx(0.15)
    assert b.tpot == pytest.approx(0.1)
    assert c.tpot is None  # vLLM only defines TPOT for > 1 token
    assert d.tpot is None
    assert a.itls == pytest.approx([0.1, 0.2])
    assert c.itls == []


def test_repeat_summary_exact_values() -> None:
    s = RepeatSummary.from_records(records(), duration_s=2.0, slo=None)
    assert (s.completed, s.failed) == (3, 1)
    assert s.errors == {"HTTP 500: boom": 1}
    assert s.total_input_tokens == 15 and s.total_output_tokens == 9
    assert s.request_throughput == pytest.approx(1.5)
    assert s.output_throughput == pytest.approx(4.5)
    assert s.total_token_throughput == pytest.approx(12.0)
    assert s.goodput is None
    # TTFT 100, 300, 200 ms: numpy linear percentiles, population std
    assert s.ttft_mean_ms == pytest.approx(200.0)
    assert s.ttft_median_ms == pytest.approx(200.0)
    assert s.ttft_p90_ms == pytest.approx(280.0)
    assert s.ttft_p99_ms == pytest.approx(298.0)
    assert s.ttft_std_ms == pytest.approx(math.sqrt(20000 / 3))
    # TPOT 150, 100 ms (the one-token request has none)
    assert s.tpot_mean_ms == pytest.approx(125.0)
    assert s.tpot_p90_ms == pytest.approx(145.0)
    # ITLs pooled over requests: 100, 200, 100, 100, 100, 100 ms
    assert s.itl_mean_ms == pytest.approx(700 / 6)
    assert s.itl_median_ms == pytest.approx(100.0)
    assert s.itl_p90_ms == pytest.approx(150.0)
    assert s.e2el_p50_ms == pytest.approx(400.0)
    assert s.e2el_p99_ms == pytest.approx(float(np.percentile([400, 700, 200], 99)))


def test_goodput_follows_vllm_rules() -> None:
    # a: TTFT ok, TPOT 150 > 120 -> bad; b: TTFT 300 > 250 -> bad;
    # c: TTFT 200 ok, one token so TPOT counts as 0 -> good; d failed -> never good
    s = RepeatSummary.from_records(records(), 2.0, SLO(ttft_p99_ms=250, tpot_p99_ms=120))
    assert s.goodput == pytest.approx(0.5)
    # bounds are inclusive, E2EL too
    s = RepeatSummary.from_records(records(), 2.0, SLO(e2el_p99_ms=400))
    assert s.goodput == pytest.approx(1.0)
    # ITL has no per-request value: no goodput from an ITL-only SLO
    assert RepeatSummary.from_records(records(), 2.0, SLO(itl_p99_ms=5)).goodput is None


def _vllm_calculate_metrics() -> tuple[Any, Any]:
    """vLLM's own ``calculate_metrics`` and ``RequestFuncOutput``, from the installed files.

    Importing vllm.benchmarks.serve pulls in torch and takes ~10 s; the two definitions only
    need numpy, so they are compiled from the source on their own.
    """
    spec = importlib.util.find_spec("vllm")  # locates without importing
    if spec is None or spec.origin is None:
        pytest.skip("vLLM is not installed")
    root = Path(spec.origin).parent / "benchmarks"
    ns: dict[str, Any] = {
        "np": np, "warnings": warnings, "dataclass": dataclasses.dataclass,
        "field": dataclasses.field, "TERM_PLOTLIB_AVAILABLE": False,
        "MILLISECONDS_TO_SECONDS_CONVERSION": 1000, "SampleRequest": Any,
        "TokenizerLike": Any, "RequestFuncOutput": Any,
    }  # fmt: skip
    wanted = {
        root / "serve.py": ("BenchmarkMetrics", "calculate_metrics"),
        root / "lib" / "endpoint_request_func.py": ("RequestFuncOutput",),
    }
    for path, names in wanted.items():
        tree = ast.parse(path.read_text())
        nodes = [n for n in tree.body if getattr(n, "name", None) in names]
        assert len(nodes) == len(names), f"{path} no longer defines {names}"
        exec(compile(ast.Module(body=nodes, type_ignores=[]), str(path), "exec"), ns)
    return ns["calculate_metrics"], ns["RequestFuncOutput"]


def test_matches_vllm_calculate_metrics() -> None:
    calculate_metrics, RequestFuncOutput = _vllm_calculate_metrics()
    outs = []
    for r in records():
        o = RequestFuncOutput(success=r.success, start_time=r.send_time, error=r.error or "")
        if r.success:
            assert r.ttft is not None and r.e2el is not None
            o.ttft, o.latency, o.itl = r.ttft, r.e2el, r.itls
            o.output_tokens, o.prompt_len = r.output_tokens or 0, r.prompt_tokens or 0
        outs.append(o)
    vm, _ = calculate_metrics(
        input_requests=[],
        outputs=outs,
        dur_s=2.0,
        tokenizer=None,
        selected_percentiles=[50.0, 90.0, 99.0],
        goodput_config_dict={"ttft": 250.0, "tpot": 120.0},
    )
    ours = RepeatSummary.from_records(records(), 2.0, SLO(ttft_p99_ms=250, tpot_p99_ms=120))
    assert ours.completed == vm.completed and ours.failed == vm.failed
    assert ours.total_input_tokens == vm.total_input
    assert ours.total_output_tokens == vm.total_output
    assert ours.output_throughput == pytest.approx(vm.output_throughput)
    assert ours.request_throughput == pytest.approx(vm.request_throughput)
    assert ours.total_token_throughput == pytest.approx(vm.total_token_throughput)
    assert ours.goodput == pytest.approx(vm.request_goodput)
    for name in ("ttft", "tpot", "itl", "e2el"):
        for stat in ("mean", "median", "std"):
            assert getattr(ours, f"{name}_{stat}_ms") == pytest.approx(
                getattr(vm, f"{stat}_{name}_ms")
            ), (name, stat)
        for p, value in getattr(vm, f"percentiles_{name}_ms"):
            assert getattr(ours, f"{name}_p{int(p)}_ms") == pytest.approx(value), (name, p)


def test_nothing_measured_is_none_not_zero() -> None:
    failed = [rec("x", 0.0, [], out=None, error="ConnectError: refused")] * 2
    s = RepeatSummary.from_records(failed, 0.0, SLO(ttft_p99_ms=100))
    assert (s.completed, s.failed) == (0, 2)
    assert s.errors == {"ConnectError: refused": 2}
    assert s.ttft_p99_ms is None and s.itl_mean_ms is None
    assert s.output_throughput == 0.0 and s.goodput == 0.0
    # one-token requests only: TTFT measured, TPOT and ITL not
    s = RepeatSummary.from_records([rec("c", 0.0, [0.2], out=1)], 1.0)
    assert s.ttft_p50_ms == pytest.approx(200.0)
    assert s.tpot_p99_ms is None and s.itl_p99_ms is None


VLLM_METRICS = """\
# HELP vllm:num_preemptions_total Cumulative number of preemption from the engine.
# TYPE vllm:num_preemptions_total counter
vllm:num_preemptions_total{engine="0",model_name="m"} 3.0
vllm:num_preemptions_total{engine="1",model_name="m"} 2.0
vllm:num_preemptions_created{engine="0",model_name="m"} 1.7e+09
# HELP vllm:prefix_cache_queries_total Prefix cache queries, in terms of tokens.
# TYPE vllm:prefix_cache_queries_total counter
vllm:prefix_cache_queries_total{engine="0",model_name="m"} 1000.0
vllm:prefix_cache_queries_total{engine="1",model_name="m"} 500.0
# HELP vllm:prefix_cache_hits_total Prefix cache hits, in terms of tokens.
# TYPE vllm:prefix_cache_hits_total counter
vllm:prefix_cache_hits_total{engine="0",model_name="m"} 600.0
vllm:prefix_cache_hits_total{engine="1",model_name="m"} 150.0
# HELP vllm:external_prefix_cache_hits_total External prefix cache hits.
# TYPE vllm:external_prefix_cache_hits_total counter
vllm:external_prefix_cache_hits_total{engine="0",model_name="m"} 99999.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.25
vllm:kv_cache_usage_perc{engine="1",model_name="m"} 0.75
# HELP vllm:time_to_first_token_seconds Histogram of time to first token in seconds.
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.001",model_name="m"} 0.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="+Inf",model_name="m"} 10.0
vllm:time_to_first_token_seconds_count{engine="0",model_name="m"} 10.0
vllm:time_to_first_token_seconds_sum{engine="0",model_name="m"} 1.5
python_gc_objects_collected_total{generation="0"} 1234.0
"""


def test_parse_vllm_metrics_sums_engines() -> None:
    m = ServerMetrics.parse(VLLM_METRICS)
    assert m.preemptions == 5.0  # summed over engines, _created ignored
    assert m.prefix_cache_queries == 1500.0
    assert m.prefix_cache_hits == 750.0  # external hits are a different series
    assert m.kv_cache_usage == 0.75  # the fullest engine


def test_parse_old_names_and_missing_metrics() -> None:
    old = (
        'vllm:gpu_cache_usage_perc{model_name="m"} 0.5\n'
        'vllm:gpu_prefix_cache_queries_total{model_name="m"} 40\n'
        'vllm:gpu_prefix_cache_hits_total{model_name="m"} 10\n'
    )
    m = ServerMetrics.parse(old)
    assert (m.kv_cache_usage, m.prefix_cache_queries, m.prefix_cache_hits) == (0.5, 40.0, 10.0)
    assert m.preemptions is None
    assert ServerMetrics.parse("") == ServerMetrics()
    assert ServerMetrics.parse("# nothing here\nother_metric 1\n") == ServerMetrics()


def test_metrics_delta() -> None:
    before = ServerMetrics(preemptions=2, prefix_cache_queries=100, prefix_cache_hits=10)
    after = ServerMetrics(preemptions=5, prefix_cache_queries=300, prefix_cache_hits=110)
    d = ServerMetricsDelta.between(before, after, [0.1, 0.5, 0.3])
    assert (d.preemptions, d.prefix_cache_queries, d.prefix_cache_hits) == (3, 200, 100)
    assert d.prefix_cache_hit_rate == pytest.approx(0.5)
    assert d.kv_cache_usage_max == 0.5
    assert d.kv_cache_usage_mean == pytest.approx(0.3)
    # a server restart (counters went down) or a missing series gives no delta
    restarted = ServerMetricsDelta.between(after, before)
    assert restarted.preemptions is None and restarted.prefix_cache_hit_rate is None
    assert restarted.kv_cache_usage_max is None
    none = ServerMetricsDelta.between(ServerMetrics(), ServerMetrics(prefix_cache_queries=0))
    assert none.prefix_cache_queries is None and none.prefix_cache_hit_rate is None


def measurement(throughputs: list[float]) -> Measurement:
    repeats, recs, server = [], [], []
    for i, tput in enumerate(throughputs):
        rs = records()
        s = RepeatSummary.from_records(rs, 2.0)
        s.output_throughput = tput
        repeats.append(s)
        recs.append(rs)
        server.append(
            ServerMetricsDelta(i, 100, 10 * (i + 1), 0.1 * (i + 1), 0.2 * (i + 1), 0.1)
            if i != 1
            else None
        )
    return Measurement("chat", repeats, recs, server, "0.32.0", True)


def test_measurement_median_cv_outputs_headline() -> None:
    m = measurement([100.0, 110.0, 90.0])
    assert m.median("output_throughput") == 100.0
    assert m.cv("output_throughput") == pytest.approx(0.1)  # sample stdev 10 / mean 100
    assert measurement([123.0]).cv("output_throughput") == 0.0
    # vLLM's spelling is accepted too
    assert m.median("p99_ttft_ms") == m.median("ttft_p99_ms") == pytest.approx(298.0)
    # server metrics: repeats without /metrics are left out of the median
    assert m.median("prefix_cache_hit_rate") == pytest.approx(0.2)
    with pytest.raises(KeyError):
        m.median("no_such_metric")

    assert m.outputs() == {"a": "x", "b": "x", "c": "x", "d": None}
    assert m.failed_requests == 3
    assert [r.request_id for r in m.failures()] == ["d", "d", "d"]

    head = m.headline()
    assert set(head) >= {
        "output_throughput", "request_throughput", "total_token_throughput", "ttft_p50_ms",
        "ttft_p99_ms", "tpot_p50_ms", "tpot_p99_ms", "itl_p99_ms", "e2el_p99_ms", "goodput",
        "failed", "completed", "cv", "repeats", "preemptions", "prefix_cache_hit_rate",
        "kv_cache_usage_max",
    }  # fmt: skip
    assert head["output_throughput"] == 100.0
    assert (head["failed"], head["completed"], head["repeats"]) == (3, 9, 3)
    assert head["preemptions"] == 1.0  # median of 0 and 2
    assert head["goodput"] is None

    data = json.loads(json.dumps(m.to_dict(include_records=True)))
    assert data["headline"]["cv"] == pytest.approx(0.1)
    assert data["server"][1] is None
    assert data["records"][0][3]["error"] == "HTTP 500: boom"
    assert "chunk_times" not in data["records"][0][0]
