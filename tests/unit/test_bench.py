"""The benchmark client against the in-process fake OpenAI-compatible server."""

from __future__ import annotations

import asyncio
import importlib.util
import itertools
import json
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from pytest_forge import bench, bench_client, bench_plan, bench_sse, bench_transport
from pytest_forge.bench import BenchOptions, Progress, run_bench
from pytest_forge.bench_plan import arrival_times
from pytest_forge.endpoint import Endpoint
from pytest_forge.errors import BenchError, ServerError
from pytest_forge.metrics import RepeatSummary, RequestRecord, steady_state
from pytest_forge.slo import SLO
from pytest_forge.workload import Replay, Workload, WorkloadRequest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # tests/ is not a package on pytest's path
    sys.path.insert(0, str(ROOT))

from tests.fakes.fake_openai_server import (  # noqa: E402
    MODEL,
    default_output_text,
    running_fake_server,
)


def workload(
    n: int = 6,
    tokens: int = 8,
    *,
    chat: bool = False,
    offsets: list[float] | None = None,
    **replay: Any,
) -> Workload:
    reqs = []
    for i in range(n):
        inp: dict[str, Any] = (
            {"messages": [{"role": "user", "content": f"question {i}"}]}
            if chat
            else {"prompt": f"question {i}"}
        )
        offset = offsets[i] if offsets is not None else None
        reqs.append(
            WorkloadRequest(
                id=f"q{i}", expected_output_tokens=tokens, arrival_offset_s=offset, **inp
            )
        )
    replay.setdefault("warmup", 0)
    return Workload("test", Path("test.jsonl"), reqs, Replay(**replay))


ONE = BenchOptions(repeats=1, metrics_interval_s=0.02)


@pytest.fixture(params=["aiohttp", "h11"])
def transport(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Both HTTP transports behave the same (aiohttp is optional at run time)."""
    if request.param == "h11":
        monkeypatch.setattr(bench_client, "fast_transport", lambda pool: None)
    elif importlib.util.find_spec("aiohttp") is None:
        pytest.skip("aiohttp not installed")
    yield request.param


def test_request_shape_and_results(transport: str) -> None:
    wl = workload(4, 8, temperature=0.5, seed=100, ignore_eos=True)
    with running_fake_server(token_delay_s=0.001) as srv:
        m = run_bench(Endpoint(srv.url), wl, ONE)
        payloads = srv.stats.payloads
    assert "/v1/models" in srv.stats.control_paths  # model discovered
    assert [p["seed"] for p in payloads] == [100, 101, 102, 103]
    for p in payloads:
        assert p["model"] == MODEL and p["max_tokens"] == 8 and p["stream"] is True
        assert p["stream_options"] == {"include_usage": True}
        assert p["ignore_eos"] is True and p["temperature"] == 0.5
    assert m.vllm_version == "0.0.0-fake"
    [records] = m.records
    assert [r.request_id for r in records] == ["q0", "q1", "q2", "q3"]
    for i, r in enumerate(records):
        assert r.success and r.error is None
        assert r.output_tokens == 8 and r.prompt_tokens == 2
        assert r.output_text == "".join(default_output_text(f"question {i}", 8))
        assert len(r.chunk_times) == 8
        assert r.ttft is not None and r.e2el is not None and 0 < r.ttft < r.e2el
    s = m.repeats[0]
    assert (s.completed, s.failed, s.total_output_tokens) == (4, 0, 32)
    first = min(r.send_time for r in records)
    last = max(r.finish_time or 0 for r in records)
    assert s.duration_s == pytest.approx(last - first)
    assert s.output_throughput == pytest.approx(32 / s.duration_s)


def test_chat_requests_count_role_chunk_like_vllm() -> None:
    wl = workload(2, 5, chat=True)
    with running_fake_server() as srv:
        m = run_bench(Endpoint(srv.url, model="explicit"), wl, ONE)
        payloads, paths = srv.stats.payloads, srv.stats.paths
    assert "/v1/models" not in srv.stats.control_paths  # the endpoint named its model
    assert set(paths) == {"/v1/chat/completions"}
    assert payloads[0]["messages"] == [{"role": "user", "content": "question 0"}]
    assert payloads[0]["max_completion_tokens"] == 5 and payloads[0]["model"] == "explicit"
    r = m.records[0][0]
    # vLLM's client counts the opening role-only chunk (non-empty choices) as a token chunk
    assert r.success and len(r.chunk_times) == 6 and r.output_tokens == 5
    assert r.output_text == "".join(default_output_text("question 0", 5))


def test_usage_counts_tokens_not_chunks() -> None:
    with running_fake_server(tokens_per_chunk=2, empty_every=3) as srv:
        m = run_bench(Endpoint(srv.url), workload(2, 12), ONE)
    r = m.records[0][0]
    assert r.output_tokens == 12 and len(r.chunk_times) == 6  # 2 tokens per chunk
    assert r.tpot == pytest.approx((r.e2el - r.ttft) / 11)  # type: ignore[operator]
    # every 3rd chunk has empty text (partial UTF-8 in vLLM) and still counts as a chunk
    assert r.output_text.count(" ") == 8


def test_closed_loop_respects_concurrency() -> None:
    wl = workload(18, 6, concurrency=3, warmup=3)
    with running_fake_server(token_delay_s=0.002) as srv:
        run_bench(Endpoint(srv.url), wl, ONE)
        assert srv.stats.max_in_flight == 3
    with running_fake_server(token_delay_s=0.002) as srv:
        run_bench(Endpoint(srv.url), wl, BenchOptions(repeats=1, concurrency=5))
        assert srv.stats.max_in_flight == 5


def test_open_loop_follows_arrival_offsets() -> None:
    offsets = [0.0, 0.1, 0.2, 0.6]
    wl = workload(4, 2, offsets=offsets)
    assert wl.mode == "open"
    with running_fake_server() as srv:
        m = run_bench(Endpoint(srv.url), wl, ONE)
        arrivals = list(srv.stats.arrivals)
    sends = [r.send_time for r in m.records[0]]
    assert sends == sorted(sends)
    gaps = [t - sends[0] for t in sends]
    # Spacing ratios, not absolute times; loose, as a loaded machine wakes sleepers late.
    # Sending everything at once (or one after another) would give ratios near 1.
    assert 3.0 < gaps[3] / gaps[1] < 12.0
    assert 1.4 < gaps[2] / gaps[1] < 4.0
    # The server side: nothing arrives before its offset (a late connection set-up can
    # delay one arrival, so only the lower bound is load-proof).
    assert arrivals == sorted(arrivals)
    assert arrivals[3] - arrivals[0] >= 0.6 - 0.05


def test_open_loop_max_concurrency_caps_in_flight() -> None:
    wl = workload(8, 6, offsets=[0.0] * 8, concurrency=2)
    with running_fake_server(token_delay_s=0.002) as srv:
        m = run_bench(Endpoint(srv.url), wl, ONE)
        assert srv.stats.max_in_flight == 2
    assert m.repeats[0].completed == 8


def test_arrival_times_like_vllm() -> None:
    a = arrival_times(50, rate=10.0, burstiness=1.0, seed=7)
    assert a == arrival_times(50, rate=10.0, burstiness=1.0, seed=7)  # seeded
    assert a != arrival_times(50, rate=10.0, burstiness=1.0, seed=8)
    assert a == sorted(a) and a[-1] == pytest.approx(5.0)  # rescaled to n / rate
    uniform = arrival_times(4, rate=2.0, burstiness=float("inf"), seed=0)
    assert uniform == pytest.approx([0.5, 1.0, 1.5, 2.0])

    # burstier traffic: more variable gaps
    def cv(xs: list[float]) -> float:
        gaps = [b - a for a, b in itertools.pairwise(xs)]
        return statistics.stdev(gaps) / statistics.fmean(gaps)

    assert cv(arrival_times(400, 10.0, 0.25, 1)) > cv(arrival_times(400, 10.0, 4.0, 1))


def test_request_rate_option_opens_the_loop() -> None:
    # A closed loop of one worker, but an explicit rate sends on the seeded schedule instead
    # of waiting for each answer (40+ ms each, arrivals ~12 ms apart).
    wl = workload(8, 4, concurrency=1)
    with running_fake_server(token_delay_s=0.01) as srv:
        m = run_bench(Endpoint(srv.url), wl, BenchOptions(repeats=1, request_rate=80.0))
        assert srv.stats.max_in_flight > 1
    assert m.repeats[0].completed == 8
    sends = [r.send_time for r in m.records[0]]
    assert sends == sorted(sends)


def test_warmup_not_counted_and_repeats() -> None:
    events: list[Progress] = []
    wl = workload(5, 4, warmup=3, concurrency=2)
    with running_fake_server() as srv:
        m = run_bench(Endpoint(srv.url), wl, BenchOptions(repeats=2), on_progress=events.append)
        assert srv.stats.requests == 3 + 2 * 5
        assert srv.stats.reset_calls == 2  # before each timed repeat
        assert srv.stats.control_paths.count("/reset_prefix_cache") == 2
    assert len(m.repeats) == 2 and len(m.records) == 2
    assert all(len(recs) == 5 for recs in m.records)
    assert [s.completed for s in m.repeats] == [5, 5]
    assert m.prefix_cache_reset is True
    # prompts served in warmup: warmup prompts were seen, then the cache was reset
    assert all(d is not None and d.prefix_cache_hits == 0 for d in m.server)
    warm = [e for e in events if e.phase == "warmup"]
    assert warm and warm[-1].done == warm[-1].total == 3
    last_of = {e.repeat: e for e in events if e.phase == "repeat"}
    assert {k: (v.done, v.total, v.output_tokens) for k, v in last_of.items()} == {
        1: (5, 5, 20),
        2: (5, 5, 20),
    }
    assert len(events) <= 2 * 3  # rate-limited: first and last of each fast phase


def test_warmup_option_overrides_and_cycles() -> None:
    with running_fake_server() as srv:
        run_bench(Endpoint(srv.url), workload(2, 2, warmup=0), BenchOptions(repeats=1, warmup=5))
        prompts = [p["prompt"] for p in srv.stats.payloads]
    assert prompts[:5] == ["question 0", "question 1"] * 2 + ["question 0"]


def test_server_without_reset_or_metrics() -> None:
    with running_fake_server(reset=False, metrics=False) as srv:
        m = run_bench(Endpoint(srv.url), workload(2, 2), BenchOptions(repeats=3))
        assert srv.stats.control_paths.count("/reset_prefix_cache") == 1  # not retried
        assert srv.stats.control_paths.count("/metrics") == 1
    assert m.prefix_cache_reset is False
    assert m.server == [None, None, None]
    assert m.headline()["preemptions"] is None
    assert m.repeats[0].completed == 2


def test_server_metrics_deltas_and_kv_samples() -> None:
    wl = workload(12, 10, concurrency=4)
    with running_fake_server(token_delay_s=0.003, kv_capacity=8) as srv:
        m = run_bench(Endpoint(srv.url), wl, BenchOptions(repeats=1, metrics_interval_s=0.01))
    [d] = m.server
    assert d is not None
    assert d.prefix_cache_queries == 24  # 2 prompt tokens x 12 requests
    assert d.prefix_cache_hit_rate == 0.0
    assert d.kv_cache_usage_max == pytest.approx(0.5)  # 4 in flight of 8
    assert d.kv_cache_usage_mean is not None and 0 < d.kv_cache_usage_mean <= 0.5


def test_failures_are_counted_with_their_text(transport: str) -> None:
    with running_fake_server(fail_every=3) as srv:
        m = run_bench(Endpoint(srv.url), workload(9, 3, concurrency=1), ONE)
    s = m.repeats[0]
    assert (s.completed, s.failed) == (6, 3)
    assert s.errors == {"HTTP 500: fake failure": 3}
    failed = [r.request_id for r in m.records[0] if not r.success]
    assert failed == ["q2", "q5", "q8"]  # every request is kept, in workload order
    assert m.outputs()["q2"] is None and m.outputs()["q0"]


def test_mid_stream_drop_recorded_and_health_checked(transport: str) -> None:
    calls: list[int] = []
    with running_fake_server(drop_every=2, drop_after_tokens=3) as srv:
        m = run_bench(
            Endpoint(srv.url), workload(4, 8, concurrency=1), ONE,
            health_check=lambda: calls.append(1),
        )  # fmt: skip
    dropped = [r for r in m.records[0] if not r.success]
    assert [r.request_id for r in dropped] == ["q1", "q3"]
    for r in dropped:
        assert r.error is not None and "RemoteProtocolError" in r.error
        assert len(r.chunk_times) == 3  # what arrived before the drop is kept
    assert len(calls) == 2  # one health check per lost connection
    assert m.repeats[0].completed == 2


def test_health_check_failure_aborts_the_run(transport: str) -> None:
    def dead() -> None:
        raise ServerError("vLLM exited with code 1", log_tail="CUDA error")

    with running_fake_server(drop_every=1, drop_after_tokens=1, token_delay_s=0.001) as srv:
        start = time.perf_counter()
        with pytest.raises(ServerError, match="exited with code 1"):
            run_bench(Endpoint(srv.url), workload(30, 50, concurrency=4), ONE, health_check=dead)
        assert time.perf_counter() - start < 5
        assert srv.stats.requests < 30  # stopped early


def test_health_check_failure_aborts_an_open_loop_waiting_for_arrivals() -> None:
    def dead() -> None:
        raise ServerError("vLLM died")

    wl = workload(3, 4, offsets=[0.0, 30.0, 60.0])
    with running_fake_server(drop_every=1, drop_after_tokens=1) as srv:
        start = time.perf_counter()
        with pytest.raises(ServerError, match="vLLM died"):
            run_bench(Endpoint(srv.url), wl, ONE, health_check=dead)
        assert time.perf_counter() - start < 5  # did not wait for the 30 s arrival
        assert srv.stats.requests == 1


def test_connection_refused_and_unreachable_model_listing() -> None:
    with running_fake_server() as srv:
        url = srv.url  # the port is free again once the fake stops
    calls: list[int] = []
    m = run_bench(
        Endpoint(url, model="m"), workload(2, 2), ONE, health_check=lambda: calls.append(1)
    )
    assert m.repeats[0].failed == 2 and len(calls) == 2
    assert all("ConnectError" in (r.error or "") for r in m.records[0])
    with pytest.raises(BenchError, match="/v1/models"):
        run_bench(Endpoint(url), workload(2, 2), ONE)


def test_all_warmup_failures_stop_the_run() -> None:
    with running_fake_server(fail_every=1) as srv:
        with pytest.raises(BenchError, match=r"all 2 warmup requests .* fake failure"):
            run_bench(Endpoint(srv.url), workload(2, 2, warmup=2), BenchOptions(repeats=2))
        assert srv.stats.requests == 2


@pytest.mark.parametrize(
    ("knobs", "error"),
    [
        ({"omit_usage": True}, "without a usage chunk"),
        ({"omit_done": True}, "without data: [DONE]"),
    ],
)
def test_incomplete_streams_fail(knobs: dict[str, Any], error: str) -> None:
    with running_fake_server(**knobs) as srv:
        m = run_bench(Endpoint(srv.url), workload(2, 3), ONE)
    assert m.repeats[0].failed == 2
    assert all(error in (r.error or "") for r in m.records[0])


def test_timeout_is_a_failed_request(transport: str) -> None:
    with running_fake_server(ttft_delay_s=2.0) as srv:
        start = time.perf_counter()
        m = run_bench(Endpoint(srv.url), workload(1, 2, request_timeout_s=0.2), ONE)
    assert time.perf_counter() - start < 1.5
    [r] = m.records[0]
    assert r.error is not None and r.error.startswith("timed out after 0.2 s")


def test_api_key_sent_never_recorded(transport: str) -> None:
    key = "sk-test-not-a-real-key"
    with running_fake_server(api_key=key) as srv:
        m = run_bench(Endpoint(srv.url, api_key=key), workload(2, 2), ONE)
        assert set(srv.stats.auth_headers) == {f"Bearer {key}"}
    assert m.repeats[0].completed == 2
    with running_fake_server(api_key=key) as srv:
        bad = run_bench(Endpoint(srv.url, api_key="wrong-key"), workload(2, 2), ONE)
    assert bad.repeats[0].errors == {"HTTP 401: invalid api key": 2}
    dumped = json.dumps(m.to_dict(include_records=True)) + json.dumps(bad.to_dict(True))
    assert key not in dumped and "wrong-key" not in dumped
    assert key not in repr(Endpoint("http://x", api_key=key))


def test_goodput_from_workload_slo() -> None:
    with running_fake_server(ttft_delay_s=0.03) as srv:
        wl = workload(3, 2, slo=SLO(ttft_p99_ms=5000))
        m = run_bench(Endpoint(srv.url), wl, ONE)
        strict = run_bench(Endpoint(srv.url), workload(3, 2, slo=SLO(ttft_p99_ms=1)), ONE)
    assert m.repeats[0].goodput == pytest.approx(m.repeats[0].request_throughput)
    assert strict.repeats[0].goodput == 0.0


def test_run_workload_inside_a_running_loop() -> None:
    async def main() -> Any:
        with running_fake_server() as srv:
            return await bench.run_workload(Endpoint(srv.url), workload(2, 2), ONE)

    m = asyncio.run(main())
    assert m.repeats[0].completed == 2


def _vllm_request_func() -> Any:
    """vLLM's async_request_openai_completions, loaded from its file.

    ``import vllm`` costs ~5 s (torch); this module needs only aiohttp, regex and tqdm.
    """
    spec = importlib.util.find_spec("vllm")  # locates without importing
    if spec is None or spec.origin is None:
        pytest.skip("vLLM is not installed")
    path = Path(spec.origin).parent / "benchmarks" / "lib" / "endpoint_request_func.py"
    mod_spec = importlib.util.spec_from_file_location("_forge_vllm_erf", path)
    assert mod_spec is not None and mod_spec.loader is not None
    module = importlib.util.module_from_spec(mod_spec)
    try:
        mod_spec.loader.exec_module(module)
    except ImportError as exc:
        pytest.skip(f"vLLM's benchmark client cannot load: {exc}")
    return module


def test_agrees_with_vllm_client_on_the_same_server() -> None:
    erf = _vllm_request_func()
    import aiohttp

    n, tokens, conc = 8, 10, 4
    wl = workload(n, tokens, concurrency=conc)

    async def vllm_run(url: str) -> tuple[list[Any], float]:
        conn = aiohttp.TCPConnector(limit=conc, limit_per_host=conc)
        async with aiohttp.ClientSession(connector=conn) as session:
            sem = asyncio.Semaphore(conc)

            async def one(i: int) -> Any:
                inp = erf.RequestFuncInput(
                    prompt=f"question {i}", api_url=url + "/v1/completions", prompt_len=2,
                    output_len=tokens, model=MODEL, ignore_eos=True,
                )  # fmt: skip
                async with sem:
                    return await erf.async_request_openai_completions(inp, session)

            start = time.perf_counter()
            outs = await asyncio.gather(*(one(i) for i in range(n)))
            return outs, time.perf_counter() - start

    async def both(url: str) -> tuple[Any, tuple[list[Any], float]]:
        # Side by side in one loop: whatever load the machine has, both clients share it.
        return await asyncio.gather(bench.run_workload(Endpoint(url), wl, ONE), vllm_run(url))

    ours_ttft, ours_tpot, ours_tput = [], [], []
    vllm_ttft, vllm_tpot, vllm_tput = [], [], []
    with running_fake_server(ttft_delay_s=0.05, token_delay_s=0.005) as srv:
        for _ in range(2):  # and the better of two runs each
            ours, (outs, duration) = asyncio.run(both(srv.url))
            s = ours.repeats[0]
            assert s.ttft_median_ms is not None and s.tpot_median_ms is not None
            ours_ttft.append(s.ttft_median_ms)
            ours_tpot.append(s.tpot_median_ms)
            ours_tput.append(s.output_throughput)
            assert all(o.success for o in outs)
            # the same definitions give the same counts and texts
            assert sum(o.output_tokens for o in outs) == s.total_output_tokens
            assert [o.generated_text for o in outs] == [r.output_text for r in ours.records[0]]
            assert [len(o.itl) + 1 for o in outs] == [len(r.chunk_times) for r in ours.records[0]]
            vllm_ttft.append(statistics.median(o.ttft for o in outs) * 1000)
            vllm_tpot.append(
                statistics.median((o.latency - o.ttft) / (o.output_tokens - 1) for o in outs) * 1000
            )
            vllm_tput.append(sum(o.output_tokens for o in outs) / duration)
    assert min(ours_ttft) / min(vllm_ttft) == pytest.approx(1.0, rel=0.25)
    assert min(ours_tpot) / min(vllm_tpot) == pytest.approx(1.0, rel=0.25)
    assert max(ours_tput) / max(vllm_tput) == pytest.approx(1.0, rel=0.25)


def test_aiohttp_transport_maps_errors_to_httpx() -> None:
    pytest.importorskip("aiohttp")

    async def main(url: str) -> None:
        async with httpx.AsyncClient(transport=bench_transport.AiohttpTransport(limit=2)) as client:
            resp = await client.get(url + "/version")
            assert resp.json() == {"version": "0.0.0-fake"}
            assert resp.headers["content-type"] == "application/json"
            with pytest.raises(httpx.ConnectError):
                await client.get("http://127.0.0.1:9/")  # discard port: nothing listens

    with running_fake_server() as srv:
        asyncio.run(main(srv.url))


def test_sse_parser_handles_any_read_boundary() -> None:
    events = [
        {"choices": [{"index": 0, "text": "héllo"}]},
        {"choices": [{"index": 0, "text": ""}]},  # partial UTF-8: still a token chunk
        {"choices": [{"index": 0, "text": " wörld ✓"}]},
        {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 3}},
    ]
    stream = (
        ": ping\r\n\r\n"
        + "".join(f"data: {json.dumps(e, ensure_ascii=False)}\r\n\r\n" for e in events[:2])
        + f"data:{json.dumps(events[2], ensure_ascii=False)}\n\n"  # no space after "data:"
        + f"data: {json.dumps(events[3])}\n\ndata: [DONE]\n\n"
    ).encode()
    for cut in range(1, len(stream)):  # every split of the bytes into two network reads
        p = bench_sse.SSEParser(chat=False)
        p.feed(stream[:cut], 1.0)
        p.feed(stream[cut:], 2.0)
        assert "".join(p.texts) == "héllo wörld ✓", cut
        assert len(p.chunk_times) == 3 and p.done and p.error is None
        assert p.usage == {"prompt_tokens": 3, "completion_tokens": 3}


def test_sse_parser_reports_error_events() -> None:
    p = bench_sse.SSEParser(chat=True)
    p.feed(b'data: {"error": {"message": "engine dead", "code": 500}}\n\n', 1.0)
    assert p.error == "server error in stream: engine dead"
    assert p.chunk_times == []
    assert p.problem() == "server error in stream: engine dead"


def test_sse_parser_names_what_an_ended_stream_lacks() -> None:
    p = bench_sse.SSEParser(chat=False)
    assert p.problem() == "stream ended without any token chunk"
    p.feed(b'data: {"choices": [{"text": "a"}]}\n\n', 1.0)
    assert "without a usage chunk" in (p.problem() or "")
    p.feed(b'data: {"choices": [], "usage": {"completion_tokens": 1}}\n\n', 2.0)
    assert p.problem() == "stream ended without data: [DONE]"
    p.feed(b"data: [DONE]\n\n", 3.0)
    assert p.problem() is None


# --- passes, minimum window, steady-state throughput -----------------------------------------


def test_passes_replay_the_workload_back_to_back_in_one_repeat() -> None:
    events: list[Progress] = []
    wl = workload(5, 4, concurrency=2)
    with running_fake_server() as srv:
        m = run_bench(
            Endpoint(srv.url), wl, BenchOptions(repeats=2, passes=3), on_progress=events.append
        )
        assert srv.stats.requests == 2 * 3 * 5
        assert srv.stats.reset_calls == 2  # per repeat, not per pass
    assert all(len(recs) == 15 for recs in m.records)
    # In workload order, pass after pass.
    assert [r.request_id for r in m.records[0]] == [f"q{i}" for i in range(5)] * 3
    s = m.repeats[0]
    assert isinstance(s, RepeatSummary)
    assert s.passes == 3 and s.completed == 15 and s.total_output_tokens == 60
    # vLLM's definition is untouched: all tokens over first send -> last finish.
    first = min(r.send_time for r in m.records[0])
    last = max(r.finish_time or 0.0 for r in m.records[0])
    assert s.duration_s == pytest.approx(last - first)
    assert s.output_throughput == pytest.approx(60 / s.duration_s)
    last_of = {e.repeat: e for e in events if e.phase == "repeat"}
    assert all((e.done, e.total) == (15, 15) for e in last_of.values())


def test_min_duration_adds_whole_passes_until_the_window_is_reached() -> None:
    wl = workload(4, 5, concurrency=4)
    with running_fake_server(token_delay_s=0.01) as srv:
        m = run_bench(Endpoint(srv.url), wl, BenchOptions(repeats=1, min_duration_s=0.3))
    s = m.repeats[0]
    # One pass lasts ~0.05 s: more passes were started, whole ones only.
    assert s.passes > 2 and s.completed == 4 * s.passes
    assert s.duration_s >= 0.3


def test_open_loop_passes_shift_the_schedule() -> None:
    assert bench_plan.repeat_offsets([0.0, 1.0, 2.0], 2, 0.0) == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    assert bench_plan.repeat_offsets([0.0, 1.0, 2.0], 1, 7.0) == [
        k * 3.0 + t for k in range(3) for t in (0.0, 1.0, 2.0)
    ]
    assert bench_plan.repeat_offsets([0.0], 3, 0.0) == [0.0, 0.0, 0.0]
    wl = workload(3, 2, offsets=[0.0, 0.05, 0.1])
    with running_fake_server() as srv:
        m = run_bench(Endpoint(srv.url), wl, BenchOptions(repeats=1, passes=2))
        assert srv.stats.requests == 6
    sends = [r.send_time for r in m.records[0]]
    assert sends[3] - sends[0] == pytest.approx(0.15, abs=0.04)
    s = m.repeats[0]
    assert s.passes == 2 and s.steady_output_throughput is None  # closed loop only


@pytest.mark.parametrize("field", ["passes", "min_duration_s"])
def test_passes_and_min_duration_are_validated(field: str) -> None:
    bad = {"passes": 0, "min_duration_s": -1.0}[field]
    with pytest.raises(BenchError, match=field):
        bench_plan.make_plan(workload(2), BenchOptions(**{field: bad}))


def _rec(send: float, chunks: list[float], tokens: int, finish: float) -> RequestRecord:
    return RequestRecord(
        request_id="r",
        send_time=send,
        chunk_times=chunks,
        ttft=chunks[0] - send,
        e2el=chunks[-1] - send,
        prompt_tokens=1,
        output_tokens=tokens,
        output_text="",
        error=None,
        finish_time=finish,
    )


def test_steady_state_window_ends_when_the_first_worker_goes_idle() -> None:
    # Two workers: A runs r1 [0, 2] then r3 [2, 3]; B runs r2 [0, 6] alone at the end.
    r1 = _rec(0.0, [0.5, 1.0, 1.5, 2.0], 4, 2.0)
    r2 = _rec(0.0, [1.0 * i for i in range(1, 7)], 6, 6.0)
    r3 = _rec(2.0, [2.5, 3.0], 4, 3.0)  # 2 tokens per chunk
    rate, window = steady_state([r1, r2, r3])
    # Window: first send (0) -> first finish after the last send (r3 at 3.0).
    assert window == pytest.approx(3.0)
    # Tokens inside: r1 4, r2 3 (chunks at 1, 2, 3), r3 2 chunks x 2 tokens.
    assert rate == pytest.approx((4 + 3 + 4) / 3.0)
    # The headline keeps vLLM's definition: the drain (r2 alone until 6 s) counts there.
    summary = RepeatSummary.from_records([r1, r2, r3], 6.0)
    assert summary.output_throughput == pytest.approx(14 / 6.0)


def test_steady_state_without_successes_or_window() -> None:
    assert steady_state([]) is None
    failed = _rec(0.0, [0.5], 1, 1.0)
    failed.error = "boom"
    assert steady_state([failed]) is None
    assert steady_state([_rec(1.0, [1.0], 1, 1.0)]) is None  # empty window


def test_closed_loop_repeats_carry_steady_state_beside_the_headline() -> None:
    wl = workload(12, 6, concurrency=3)
    with running_fake_server(token_delay_s=0.002) as srv:
        m = run_bench(Endpoint(srv.url), wl, BenchOptions(repeats=1))
    s = m.repeats[0]
    assert s.steady_output_throughput is not None and s.steady_output_throughput > 0
    assert s.steady_window_s is not None and 0 < s.steady_window_s <= s.duration_s
    data = m.to_dict()["repeats"][0]
    assert data["output_throughput"] == s.output_throughput
    assert data["steady_output_throughput"] == s.steady_output_throughput
