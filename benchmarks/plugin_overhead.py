"""What installing pytest-forge costs a pytest run that has no recipes.

pytest loads every installed plugin in every run, so pytest-forge is a guest in every
repository of an environment where it is installed. This script builds a temporary
repository with one trivial test (and, with ``--pancakes``, a ``recipes/pancakes.yaml``
that is not a recipe) and times whole ``pytest`` runs of it, interleaved: with the plugin,
then with ``-p no:forge``, round after round, so drift on a shared machine hits both alike.
It reports, for wall time and for the child's CPU time (user + system, less disturbed by
other load on a shared machine), the median of each and the median of the per-round
differences.

    .venv/bin/python benchmarks/plugin_overhead.py [--rounds 21] [--pancakes]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PYTEST = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]


def _repo(root: Path, pancakes: bool) -> None:
    (root / "test_one.py").write_text("def test_one():\n    assert 1 + 1 == 2\n")
    if pancakes:
        (root / "recipes").mkdir()
        (root / "recipes" / "pancakes.yaml").write_text("flour: 200g\neggs: 2\n")


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _run(root: Path, extra: list[str]) -> tuple[float, float]:
    """Wall and CPU seconds of one pytest run."""
    cpu, start = _cpu(), time.perf_counter()
    done = subprocess.run(PYTEST + extra, cwd=root, capture_output=True, text=True)
    elapsed, cpu = time.perf_counter() - start, _cpu() - cpu
    if done.returncode != 0:
        raise SystemExit(f"pytest {' '.join(extra)} failed:\n{done.stdout}{done.stderr}")
    return elapsed, cpu


def _report(name: str, with_plugin: list[float], without: list[float]) -> None:
    diffs = [a - b for a, b in zip(with_plugin, without, strict=True)]
    med_with, med_without = statistics.median(with_plugin), statistics.median(without)
    print(
        f"{name}: with pytest-forge {med_with * 1000:.1f} ms, with -p no:forge "
        f"{med_without * 1000:.1f} ms (medians); added by the plugin: median "
        f"{statistics.median(diffs) * 1000:.1f} ms per round (range {min(diffs) * 1000:.1f} "
        f"to {max(diffs) * 1000:.1f}), ratio of medians {med_with / med_without:.3f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--pancakes", action="store_true", help="add recipes/pancakes.yaml")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        _repo(root, args.pancakes)
        _run(root, [])  # warm the file cache and bytecode once, not timed
        _run(root, ["-p", "no:forge"])
        runs: dict[str, list[tuple[float, float]]] = {"with": [], "without": []}
        for i in range(args.rounds):
            # Alternate which goes first: neither always runs on a just-warmed cache.
            order = [("with", []), ("without", ["-p", "no:forge"])]
            for key, extra in order if i % 2 == 0 else order[::-1]:
                runs[key].append(_run(root, extra))
        forge_made_dirs = (root / ".forge").exists()
    what = "one test" + (" + recipes/pancakes.yaml" if args.pancakes else "")
    print(f"rounds: {args.rounds}, repository: {what}")
    for index, name in ((0, "wall"), (1, "CPU")):
        _report(name, [r[index] for r in runs["with"]], [r[index] for r in runs["without"]])
    print(f".forge/ created: {'yes' if forge_made_dirs else 'no'}")


if __name__ == "__main__":
    main()
