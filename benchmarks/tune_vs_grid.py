"""The playbook agent's best after N experiments vs the best of the whole grid vs vLLM defaults.

On the tiny CPU recipe, over the playbook's CPU search space, with real vLLM:

1. measure vLLM's default config (only max_model_len set) and every grid point, each
   booted once and run on the chosen workloads through the same pipeline as the gate
   (``pipeline.evaluate_recipe``); every point is appended to a JSONL file as it ends,
   so an interrupted run resumes;
2. run the real Tuner with the offline PlaybookAgent for N experiments from the
   committed recipe. Its candidates are grid points: each is evaluated by replaying that
   point's measurement from step 1 (so both searches judge the same measured numbers);
3. print the three figures: default, grid best, playbook best after N;
4. with ``--confirm R``: re-measure those three configs in R alternating rounds and print
   their medians. On a noisy machine the grid's best single measurement is the maximum of
   many noisy draws, biased upwards; the confirmation is the fair comparison.

Usage (about 70 s per grid point on 2 cores, 3 boots per confirmation round):
    python benchmarks/tune_vs_grid.py --workloads chat shared-prefix --repeats 2 --confirm 3
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
from pathlib import Path

from pytest_forge.hardware import backend_name, detect_hardware
from pytest_forge.metrics import Measurement
from pytest_forge.pipeline import GateOptions, evaluate_recipe, measured_with
from pytest_forge.recipe import Recipe
from pytest_forge.results import Evaluation
from pytest_forge.stats import compare_paired
from pytest_forge.tune.agent import PlaybookAgent
from pytest_forge.tune.hardware_classes import hardware_class
from pytest_forge.tune.options import TuneOptions
from pytest_forge.tune.playbook import load_playbook
from pytest_forge.tune.store import RunStore
from pytest_forge.tune.tuner import Tuner
from pytest_forge.vllm_args import installed_vllm_version
from pytest_forge.workload import load_workload

ROOT = Path(__file__).resolve().parent.parent


def _throughput(measurements: dict[str, dict]) -> float:
    """Geometric mean over workloads of the median output tok/s."""
    values = [m["headline"]["output_throughput"] for m in measurements.values()]
    return math.exp(sum(math.log(v) for v in values) / len(values))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default=str(ROOT / "recipes" / "tiny-llama-cpu.yaml"))
    parser.add_argument("--workloads", nargs="+", default=["chat", "shared-prefix"])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--budget", type=int, default=8)
    parser.add_argument(
        "--confirm", type=int, default=0, help="re-measure the three in R alternating rounds"
    )
    parser.add_argument("--out", default=str(ROOT / ".forge" / "bench" / "tune_vs_grid.jsonl"))
    args = parser.parse_args(argv)

    committed = Recipe.load(Path(args.recipe))
    committed = committed.model_copy(update={"baselines": {}, "workloads": args.workloads})
    workloads = [load_workload(ROOT / "workloads" / f"{n}.jsonl") for n in args.workloads]
    host = detect_hardware()
    space = load_playbook().search_space(hardware_class(host))
    found = installed_vllm_version()
    vllm = found[1] if found else None
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done: dict[str, dict] = {}
    if out.exists():
        for line in out.read_text().splitlines():
            if line.strip():
                rec = json.loads(line)
                if not rec["label"].startswith("confirm"):
                    done[rec["hash"]] = rec
    options = GateOptions(repeats=args.repeats, max_repeats=1)  # fixed repeats per point
    log_dir = out.parent / "logs"

    def measure(label: str, recipe: Recipe, changes: dict) -> dict:
        if recipe.content_hash in done:
            return done[recipe.content_hash]
        ev = evaluate_recipe(
            recipe, workloads, log_dir, options, vllm_version=vllm, boot_timeout_s=900
        )
        rec = {
            "label": label,
            "hash": recipe.content_hash,
            "changes": changes,
            "error": ev.error,
            "measurements": {k: m.to_dict() for k, m in ev.measurements.items()},
            "floors_hold": all(v.floors_hold for v in ev.verdicts.values()),
        }
        with out.open("a") as fh:
            fh.write(json.dumps(rec) + "\n")
        done[rec["hash"]] = rec
        tput = _throughput(rec["measurements"]) if not ev.error else float("nan")
        print(f"{label:>8} {recipe.content_hash} {tput:8.1f} tok/s {changes}", flush=True)
        return rec

    default = committed.model_copy(update={"config": {"max_model_len": 2048}})
    measure("default", default, {"config": "vLLM defaults"})
    points = list(space.iter_grid())
    recipes = {default.content_hash: default}
    for i, point in enumerate(points):
        recipe = committed.with_changes(point)
        recipes[recipe.content_hash] = recipe
        measure(f"grid {i + 1}/{len(points)}", recipe, point)

    def replay(recipe: Recipe) -> Evaluation:
        rec = measure("extra", recipe, {})
        if rec["error"]:
            return Evaluation({}, {}, error=rec["error"])
        ms = {k: Measurement.from_dict(m) for k, m in rec["measurements"].items()}
        # Floors were judged when the point was measured; replay them as they were.
        from pytest_forge.verdict import Check, Verdict

        verdicts = {
            k: Verdict(committed.id, k, checks=[Check("floors", rec["floors_hold"], "replayed")])
            for k in ms
        }
        return Evaluation(ms, verdicts, error=None)

    with tempfile.TemporaryDirectory() as tmp:
        store = RunStore.create(Path(tmp), {"benchmark": "tune_vs_grid"})
        tuner = Tuner(
            committed,
            PlaybookAgent(),
            store,
            TuneOptions(budget=args.budget, max_hours=None, max_dollars=None, patience=99),
            hardware=host,
            hardware_class=hardware_class(host),
            search_space=space,
            evaluate=replay,
            measured_with=lambda: measured_with(vllm, host.describe(), backend_name(host)),
        )
        tuner.run_baseline()
        for slot in range(1, args.budget + 1):
            outcome = tuner.run_slot(slot)
            print(f"  tune {outcome.summary()[:150]}", flush=True)
        best_hash = tuner.best.content_hash

    grid = {h: r for h, r in done.items() if r["label"].startswith("grid") and not r["error"]}
    grid_best = max(grid.values(), key=lambda r: _throughput(r["measurements"]))
    default_rec = done[default.content_hash]
    tuned = done[best_hash]
    d, g, t = (_throughput(r["measurements"]) for r in (default_rec, grid_best, tuned))
    print()
    print(f"workloads {args.workloads}, repeats {args.repeats}, vLLM {vllm}, {host.describe()}")
    print(f"grid size: {len(points)} points ({len(grid)} ran)")
    print(f"vLLM default config:          {d:8.1f} tok/s (geomean of median output tok/s)")
    print(f"grid best:                    {g:8.1f} tok/s  {grid_best['changes']}")
    print(f"playbook best after {args.budget:2d} exps:  {t:8.1f} tok/s  = {t / g:.1%} of grid best")
    if args.confirm:
        worst = min(grid.values(), key=lambda r: _throughput(r["measurements"]))
        configs = {
            "vLLM default": default,
            "grid worst": recipes[worst["hash"]],
            "grid best": recipes[grid_best["hash"]],
            f"playbook best after {args.budget}": recipes[best_hash],
        }
        _confirm(configs, args.confirm, workloads, log_dir, options, vllm, out)
    return 0


def _confirm(
    configs: dict[str, Recipe],
    rounds_n: int,
    workloads: list,
    log_dir: Path,
    options: GateOptions,
    vllm: str | None,
    out: Path,
) -> None:
    """Re-measure the configs side by side: each round boots every config once, in an order
    reversed every other round (ABBA), so a drift of the machine hits all alike; the
    per-round ratios to the grid's best give paired intervals (stats.compare_paired)."""
    print(f"\nconfirmation: {rounds_n} interleaved rounds (order reversed every other round)")
    rounds: dict[str, list[float]] = {name: [] for name in configs}
    names = list(configs)
    for r in range(rounds_n):
        for name in names if r % 2 == 0 else list(reversed(names)):
            recipe = configs[name]
            ev = evaluate_recipe(
                recipe, workloads, log_dir, options, vllm_version=vllm, boot_timeout_s=900
            )
            rec = {
                "label": f"confirm {r + 1} {name}",
                "hash": recipe.content_hash,
                "error": ev.error,
                "measurements": {k: m.to_dict() for k, m in ev.measurements.items()},
            }
            with out.open("a") as fh:
                fh.write(json.dumps(rec) + "\n")
            value = float("nan") if ev.error else _throughput(rec["measurements"])
            rounds[name].append(value)
            print(f"  round {r + 1} {name:24s} {recipe.content_hash} {value:8.1f} tok/s")
    best = rounds["grid best"]
    for name, values in rounds.items():
        line = f"{name + ':':30s}{statistics.median(values):8.1f} tok/s (median)"
        if name != "grid best" and len(values) >= 2 and all(v > 0 for v in values + best):
            c = compare_paired(best, values, higher_is_better=True, tolerance=0.05)
            line += f"  = {c.ratio:.1%} of grid best, 95 % CI [{c.ci_low:.1%}, {c.ci_high:.1%}]"
        print(f"{line}  rounds {[round(v) for v in values]}")


if __name__ == "__main__":
    sys.exit(main())
