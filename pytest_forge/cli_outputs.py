"""`forge` commands on what runs leave: compare, merge (sharded runs) and report (a tune).

Thin wrappers over compare.py, merge.py and tune/run_report.py; cli.py adds them to its
parser.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_forge.errors import ForgeError

if TYPE_CHECKING:
    from pytest_forge.compare import Comparison

    # What add_subparsers() returns (argparse's own, private, name), of cli.py's parser
    # class (which this module does not import: cli.py imports it).
    SubParsers = argparse._SubParsersAction[Any]

# `forge compare --fail-on-regression`: a regression, or nothing in common to rule one out.
EXIT_REGRESSION = 1
EXIT_NOTHING_COMPARED = 2


def compare_exit_code(comparison: Comparison, fail_on_regression: bool) -> tuple[int, str | None]:
    """The exit code of `forge compare`, and why it fails (for stderr) when it does."""
    if not fail_on_regression:
        return 0, None
    if not comparison.pairs:
        return EXIT_NOTHING_COMPARED, (
            "forge compare: the two runs share no recipe × workload pair, so nothing was "
            "compared and no regression can be ruled out (--fail-on-regression)"
        )
    if comparison.has_regression:
        count = comparison.regression_count
        return EXIT_REGRESSION, f"forge compare: {count} regression(s) (--fail-on-regression)"
    return 0, None


def _cmd_compare(args: argparse.Namespace) -> int:
    from pytest_forge.compare import compare_runs, load_run, render_comparison

    if not 0 <= args.threshold < 100:
        raise ForgeError(f"--threshold is a percentage in [0, 100), got {args.threshold}")
    comparison = compare_runs(load_run(args.run_a), load_run(args.run_b), args.threshold / 100)
    sys.stdout.write(render_comparison(comparison))
    code, why = compare_exit_code(comparison, args.fail_on_regression)
    if why:
        print(why, file=sys.stderr)
    return code


def _cmd_merge(args: argparse.Namespace) -> int:
    from pytest_forge.merge import merge

    outcome = merge([Path(p) for p in args.inputs], Path(args.out), strict=args.strict)
    for line in outcome.lines:
        print(line)
    for warning in outcome.warnings:
        print(f"forge merge: warning: {warning}", file=sys.stderr)
    for error in outcome.errors:
        print(f"forge merge: error: {error}", file=sys.stderr)
    return 1 if outcome.errors else 0


def _cmd_report(args: argparse.Namespace) -> int:
    from pytest_forge.tune.run_report import render_report

    print(render_report(Path(args.run_dir)))
    return 0


def _add_compare(sub: SubParsers) -> None:
    from pytest_forge.compare import DEFAULT_THRESHOLD

    p = sub.add_parser(
        "compare",
        help="compare two gate runs (results.json) or tune runs (best experiment)",
        description="Print every metric two runs share per recipe × workload, with its "
        "change, marking a throughput drop or a latency rise beyond the threshold. A run is a "
        "gate run directory (.forge/gate/<stamp>, or its results.json) or a tune run "
        "directory (.forge/runs/<NNN>_<ts>).",
    )
    p.add_argument("run_a", metavar="RUN_A", help="the reference run")
    p.add_argument("run_b", metavar="RUN_B", help="the run to judge")
    p.add_argument(
        "--threshold",
        type=float,
        default=DEFAULT_THRESHOLD * 100,
        metavar="PCT",
        help="percent change that counts as a regression (default: %(default)g)",
    )
    p.add_argument(
        "--fail-on-regression",
        action="store_true",
        help=f"exit {EXIT_REGRESSION} when any metric regressed beyond the threshold, "
        f"{EXIT_NOTHING_COMPARED} when the runs share no recipe × workload pair",
    )
    p.set_defaults(func=_cmd_compare)


def add_commands(sub: SubParsers) -> None:
    """Add compare, merge and report to `forge`."""
    _add_compare(sub)

    p = sub.add_parser(
        "merge",
        help="combine sharded runs' outputs (--forge-shard I/N) into one",
        description="Combine what the shards of a run (pytest --forge-shard I/N) wrote, "
        "found recursively under each INPUT and recognised by content, into DIR as if one "
        "runner had run every test: results.json, forge-junit.xml (JUnit), "
        "forge-benchmark.json (pytest-benchmark), forge-bench.json and "
        "forge-bench.smaller.json (github-action-benchmark) and forge-report/ (when the "
        "shards wrote HTML reports); the Markdown summary is appended to "
        "$GITHUB_STEP_SUMMARY when it is set. A test found in two shards is an error. "
        "Completeness: a gate test a shard deselected for hardware (pytest "
        "--forge-hardware-only) that no other shard ran is named and reported as not "
        "measured; in strict mode the merge then exits 1 (after writing everything).",
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="a shard's output directory")
    p.add_argument("--out", required=True, metavar="DIR", help="where the merged files go")
    strictness = p.add_mutually_exclusive_group()
    strictness.add_argument(
        "--strict",
        dest="strict",
        action="store_true",
        default=None,
        help="exit 1 when a test some shard deselected for hardware ran on no runner "
        "(the default when the CI environment variable is set)",
    )
    strictness.add_argument(
        "--no-strict",
        dest="strict",
        action="store_false",
        default=None,  # neither given: strict when CI is set (merge.strict_default)
        help="only warn about tests that ran on no runner",
    )
    p.set_defaults(func=_cmd_merge)

    p = sub.add_parser(
        "report",
        help="print a tune run's experiment table",
        description="Print the experiments of a tune run (.forge/runs/<NNN>_<ts>) as a "
        "table, with the best so far.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.set_defaults(func=_cmd_report)
