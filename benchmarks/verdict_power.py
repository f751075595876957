"""False alarms and detection of the gate's verdict, A/B and absolute-baseline, on real vLLM.

On the bundled CPU recipe, through the gate's own code (``ab.run_ab_case`` and
``pipeline.run_case``), with three servers up at once on this machine:

- A:  the recipe as committed,
- A': the same recipe, a second server (an A/A pair with A: nothing changed),
- B:  the recipe with one real change (``--change config.max_num_seqs=8``).

Then ``--trials`` times, interleaved so every mode sees the same drift of the machine:

1. A/A: ``run_ab_case(A, A')``; a "fail" is a false alarm;
2. A/B: ``run_ab_case(A, B)``; a "fail" of the throughput check is a detection;
3. absolute, unchanged: A' judged by ``run_case`` against a baseline recorded from A at
   the start (as ``--forge-update-baselines`` writes it); a "fail" is a false alarm;
4. absolute, changed: B judged against that same baseline; a "fail" is a detection.

Each verdict adds repeats/rounds while inconclusive, up to ``--max-repeats``, exactly as
the gate does. The size of the change is measured too: the median over the A/B trials of
their paired throughput ratio B/A. Results are appended to a JSONL file as they come.

Usage (about 25 minutes on 2 cores):
    python benchmarks/verdict_power.py --workload steady --trials 10 \
        --change config.max_num_seqs=8
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from pytest_forge.ab import SideEndpoint, run_ab_case
from pytest_forge.hardware import backend_name, detect_hardware
from pytest_forge.pipeline import GateOptions, measured_with, run_case
from pytest_forge.recipe import Recipe
from pytest_forge.results import CaseResult, baseline_from
from pytest_forge.server import VllmServer
from pytest_forge.vllm_args import installed_vllm_version
from pytest_forge.workload import load_workload

ROOT = Path(__file__).resolve().parent.parent


def _outcome(result: CaseResult) -> dict[str, Any]:
    verdict = result.verdict
    throughput = verdict.comparison() or {}
    return {
        "status": verdict.status,
        "failed_checks": [c.name for c in verdict.failures],
        "undecided_checks": [c.name for c in verdict.undecided],
        "throughput_outcome": throughput.get("outcome"),
        "ratio": throughput.get("ratio"),
        "ci": [throughput.get("ci_low"), throughput.get("ci_high")],
        "repeats": len(result.measurement.repeats),
        "cv": result.measurement.cv("output_throughput"),
    }


def _rate(rows: list[dict[str, Any]], mode: str, key: str, value: str) -> str:
    picked = [r for r in rows if r["mode"] == mode]
    hits = sum(1 for r in picked if r[key] == value)
    return f"{hits}/{len(picked)}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default=str(ROOT / "recipes" / "tiny-llama-cpu.yaml"))
    parser.add_argument("--workload", default="steady")
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--change", default="config.max_num_seqs=8", help="dotted.key=YAML value")
    parser.add_argument("--tolerance", type=float, default=None, help="default: the recipe's")
    parser.add_argument("--max-repeats", type=int, default=None, help="default: the gate's")
    parser.add_argument("--out", default=str(ROOT / ".forge" / "bench" / "verdict_power.jsonl"))
    args = parser.parse_args(argv)

    key, _, raw = args.change.partition("=")
    committed = Recipe.load(Path(args.recipe)).model_copy(update={"baselines": {}})
    changed = committed.with_changes({key: yaml.safe_load(raw)})
    workload = load_workload(ROOT / "workloads" / f"{args.workload}.jsonl")
    options = GateOptions(tolerance=args.tolerance, max_repeats=args.max_repeats)
    found = installed_vllm_version()
    vllm = found[1] if found else None
    host = detect_hardware()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    logs = Path(tempfile.mkdtemp(prefix="forge-verdict-power-"))
    servers = {
        "A": VllmServer(committed, logs / "A", boot_timeout_s=600),
        "A2": VllmServer(committed, logs / "A2", boot_timeout_s=600),
        "B": VllmServer(changed, logs / "B", boot_timeout_s=600),
    }
    rows: list[dict[str, Any]] = []
    try:
        endpoints = {name: server.start() for name, server in servers.items()}
        print(f"booted A, A', B ({args.change}) on {host.describe()}", flush=True)

        def provider(a: str, b: str) -> Callable[[str], SideEndpoint]:
            warm = {"A": False, "B": False}

            def get(side: str) -> SideEndpoint:
                name = a if side == "A" else b
                fresh = not warm[side]
                warm[side] = True
                return SideEndpoint(
                    endpoints[name],
                    servers[name].check_alive,
                    fresh=fresh,
                    settle=servers[name].wait_until_idle,
                )

            return get

        # The committed baseline, recorded from A as --forge-update-baselines would.
        first = run_case(
            committed,
            workload,
            endpoints["A"],
            GateOptions(max_repeats=1),
            vllm_version=vllm,
        )
        with_ = measured_with(vllm, host.describe(), backend_name(host))
        baseline = baseline_from(first.measurement, None, with_)
        gated = {
            name: recipe.with_baselines({workload.name: baseline})
            for name, recipe in (("A2", committed), ("B", changed))
        }
        label = f"A = committed, B = {args.change}"
        for trial in range(1, args.trials + 1):
            runs: list[tuple[str, Callable[[], CaseResult]]] = [
                (
                    "ab-same",
                    lambda: run_ab_case(
                        committed,
                        committed,
                        workload,
                        provider("A", "A2"),
                        options,
                        reference_label="A/A",
                    ),
                ),
                (
                    "ab-changed",
                    lambda: run_ab_case(
                        committed,
                        changed,
                        workload,
                        provider("A", "B"),
                        options,
                        reference_label=label,
                    ),
                ),
                (
                    "abs-same",
                    lambda: run_case(
                        gated["A2"], workload, endpoints["A2"], options, vllm_version=vllm
                    ),
                ),
                (
                    "abs-changed",
                    lambda: run_case(
                        gated["B"], workload, endpoints["B"], options, vllm_version=vllm
                    ),
                ),
            ]
            if trial % 2 == 0:
                runs.reverse()  # drift within a trial hits every mode alike over the trials
            for mode, run in runs:
                started = time.monotonic()
                row = {"trial": trial, "mode": mode, **_outcome(run())}
                row["seconds"] = round(time.monotonic() - started, 1)
                rows.append(row)
                with out.open("a", encoding="utf-8") as fh:
                    fh.write(json.dumps(row) + "\n")
                print(json.dumps(row), flush=True)
    finally:
        for server in servers.values():
            server.stop()

    size = [r["ratio"] for r in rows if r["mode"] == "ab-changed" and r["ratio"]]
    print()
    print(f"workload {args.workload}, change {args.change}, {args.trials} trials, vLLM {vllm}")
    print(
        "size of the change (A/B paired throughput ratio B/A): "
        f"median {statistics.median(size):.3f}, range {min(size):.3f}-{max(size):.3f}"
    )
    print("| mode | false alarms (fail) | detections (throughput fail) | inconclusive |")
    print("|---|---|---|---|")
    for mode, label_ in (("ab", "A/B, interleaved"), ("abs", "absolute baseline")):
        same, changed_ = f"{mode}-same", f"{mode}-changed"
        print(
            f"| {label_} | {_rate(rows, same, 'status', 'fail')} | "
            f"{_rate(rows, changed_, 'throughput_outcome', 'fail')} | "
            f"{_rate(rows, same, 'status', 'inconclusive')} same, "
            f"{_rate(rows, changed_, 'status', 'inconclusive')} changed |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
