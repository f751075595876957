"""Client CPU per streamed chunk: pytest-forge's bench vs vLLM's own benchmark client.

The benchmark client shares the machine with the server under test, so every microsecond it
spends per chunk is taken from vLLM. This script starts the fake OpenAI-compatible server
(tests/fakes/fake_openai_server.py) in a *separate process* streaming with no delay, then
replays the same requests with

- ``forge``: pytest_forge.bench.run_workload (default transport: aiohttp-backed httpx),
- ``forge-h11``: the same with httpx's default pure-Python transport (for reference),
- ``vllm``: vllm.benchmarks.lib.endpoint_request_func.async_request_openai_completions on
  an aiohttp session set up as ``vllm bench serve`` does,

and reports ``time.process_time()`` of this process divided by the number of token chunks
received. Runs alternate between clients; the median per client is reported.

    .venv/bin/python benchmarks/client_overhead.py [--requests 200] [--tokens 256]
        [--concurrency 32] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
FAKE = ROOT / "tests" / "fakes" / "fake_openai_server.py"


def _workload(n: int, tokens: int, concurrency: int) -> Any:
    from pytest_forge.workload import Replay, Workload, WorkloadRequest

    reqs = [
        WorkloadRequest(id=f"r{i}", prompt=f"request number {i}", expected_output_tokens=tokens)
        for i in range(n)
    ]
    replay = Replay(mode="closed", concurrency=concurrency, warmup=0)
    return Workload("overhead", Path("overhead.jsonl"), reqs, replay)


async def _forge(url: str, n: int, tokens: int, concurrency: int, h11: bool) -> int:
    from pytest_forge import bench, bench_client
    from pytest_forge.endpoint import Endpoint

    options = bench.BenchOptions(repeats=1, warmup=0, reset_prefix_cache=False)
    original = bench_client.fast_transport
    if h11:
        bench_client.fast_transport = lambda pool: None  # type: ignore[assignment]
    try:
        m = await bench.run_workload(
            Endpoint(url, model="fake-model"), _workload(n, tokens, concurrency), options
        )
    finally:
        bench_client.fast_transport = original  # type: ignore[assignment]
    if m.repeats[0].failed:
        raise SystemExit(f"forge: {m.repeats[0].failed} requests failed: {m.repeats[0].errors}")
    return sum(len(r.chunk_times) for r in m.records[0])


async def _vllm(url: str, n: int, tokens: int, concurrency: int) -> int:
    import aiohttp
    from vllm.benchmarks.lib.endpoint_request_func import (
        RequestFuncInput,
        async_request_openai_completions,
    )

    # As vllm/benchmarks/serve.py benchmark() sets up its session.
    connector = aiohttp.TCPConnector(
        limit=concurrency,
        limit_per_host=concurrency,
        ttl_dns_cache=300,
        use_dns_cache=True,
        keepalive_timeout=60,
        enable_cleanup_closed=True,
        force_close=False,
        ssl=False,
    )
    async with aiohttp.ClientSession(
        connector=connector, trust_env=True, timeout=aiohttp.ClientTimeout(total=6 * 3600)
    ) as session:
        sem = asyncio.Semaphore(concurrency)

        async def one(i: int) -> Any:
            inp = RequestFuncInput(
                prompt=f"request number {i}",
                api_url=url + "/v1/completions",
                prompt_len=3,
                output_len=tokens,
                model="fake-model",
                ignore_eos=True,
            )
            async with sem:
                return await async_request_openai_completions(inp, session)

        outs = await asyncio.gather(*(one(i) for i in range(n)))
    failed = [o for o in outs if not o.success]
    if failed:
        raise SystemExit(f"vllm: {len(failed)} requests failed: {failed[0].error}")
    return sum(len(o.itl) + 1 for o in outs)


def measure(client: str, url: str, n: int, tokens: int, concurrency: int) -> tuple[float, int]:
    """(CPU seconds of this process, chunks) for one run of ``client``."""
    if client == "vllm":
        coro = _vllm(url, n, tokens, concurrency)
    else:
        coro = _forge(url, n, tokens, concurrency, h11=client == "forge-h11")
    gc.collect()
    start = time.process_time()
    chunks = asyncio.run(coro)
    return time.process_time() - start, chunks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="client CPU per streamed chunk")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--clients", default="forge,vllm,forge-h11", help="comma-separated: forge,vllm,forge-h11"
    )
    args = parser.parse_args(argv)
    clients = [c for c in args.clients.split(",") if c]
    if "vllm" in clients:
        try:
            import vllm.benchmarks.lib.endpoint_request_func  # noqa: F401
        except ImportError:
            print("vLLM is not importable: measuring pytest-forge only")
            clients.remove("vllm")

    server = subprocess.Popen(
        [sys.executable, str(FAKE), "--port", "0"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None
        url = server.stdout.readline().split()[1]
        per_chunk: dict[str, list[float]] = {c: [] for c in clients}
        for c in clients:  # one unmeasured round each: imports, connection setup
            measure(c, url, min(args.requests, 20), args.tokens, args.concurrency)
        for _ in range(args.rounds):
            for c in clients:
                cpu, chunks = measure(c, url, args.requests, args.tokens, args.concurrency)
                per_chunk[c].append(cpu / chunks * 1e6)
    finally:
        server.terminate()
        server.wait(10)

    print(
        f"{args.requests} requests x {args.tokens} tokens, concurrency {args.concurrency}, "
        f"{args.rounds} rounds (median, min-max) -- client CPU per streamed chunk:"
    )
    medians = {c: statistics.median(v) for c, v in per_chunk.items()}
    for c, values in per_chunk.items():
        print(f"  {c:10s} {medians[c]:6.2f} us/chunk  ({min(values):.2f}-{max(values):.2f})")
    if "forge" in medians and "vllm" in medians:
        ratio = medians["forge"] / medians["vllm"]
        print(f"  forge / vllm = {ratio:.2f}  ({'OK' if ratio <= 1.0 else 'ABOVE'} target <= 1.0)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
