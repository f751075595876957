"""The ``forge`` command: the pipeline's checks and reports outside pytest."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from pytest_forge import __version__
from pytest_forge.errors import ForgeError

if TYPE_CHECKING:
    from pytest_forge.recipe import Recipe


def _cmd_tiny_model(args: argparse.Namespace) -> int:
    from pytest_forge.tiny_model import build

    print(build(Path(args.dir)))
    return 0


def _iter_files(paths: list[str]) -> list[Path]:
    files: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            files += sorted(q for q in p.iterdir() if q.suffix in (".yaml", ".yml", ".jsonl"))
        else:
            files.append(p)
    return files


def _check_recipe_plan(recipe: Recipe, workloads_dir: Path) -> None:
    """What pytest would refuse at run time: missing workloads, quantization the recipe's
    own hardware cannot run (seeds/001's table)."""
    from pytest_forge.errors import RecipeError
    from pytest_forge.hardware import recipe_quant_problem
    from pytest_forge.workload import discover_workloads

    if recipe.workloads and workloads_dir.is_dir():
        missing = sorted(set(recipe.workloads) - set(discover_workloads(workloads_dir)))
        if missing:
            raise RecipeError(
                recipe.path, "workloads", f"{', '.join(missing)}: not in {workloads_dir}"
            )
    hw = recipe.hardware
    gpu = "cpu" if hw.vendor == "cpu" else hw.gpu_type
    if gpu is None:
        return
    problem = recipe_quant_problem(recipe, gpu)
    if problem:
        raise RecipeError(recipe.path, problem[0], f"not on {gpu}: {problem[1]}")


def _cmd_validate(args: argparse.Namespace) -> int:
    """Every recipe and workload check, without booting anything; non-zero on any problem."""
    from pytest_forge.recipe import Recipe
    from pytest_forge.vllm_args import load_arg_spec
    from pytest_forge.vllm_values import RecipeChecker
    from pytest_forge.workload import load_workload

    paths = args.paths or ["recipes", "workloads"]
    workloads_dir = Path(args.workloads)
    checker: RecipeChecker | None = None
    problems = 0
    checked = 0
    for path in _iter_files(paths):
        if path.suffix in (".yaml", ".yml") and path.with_suffix(".jsonl").exists():
            continue  # a workload sidecar: checked with its JSONL
        checked += 1
        try:
            if path.suffix == ".jsonl":
                workload = load_workload(path)
                print(f"ok    {path} ({len(workload.requests)} requests)")
            else:
                recipe = Recipe.load(path)
                if checker is None:
                    spec = load_arg_spec()
                    if spec.warning:
                        print(f"warn  {spec.warning}")
                    # Every recipe given, in one vLLM subprocess (cached per args on disk).
                    checker = RecipeChecker(spec)
                    checker.prefetch(_iter_files(paths))
                    if checker.warning:
                        print(f"warn  {checker.warning}")
                how = checker.check(recipe)
                _check_recipe_plan(recipe, workloads_dir)
                spec = checker.spec
                print(f"ok    {path} (vLLM {spec.version}, {spec.source} args; {how})")
        except ForgeError as exc:
            problems += 1
            print(f"FAIL  {exc}")
    if checked == 0:
        print(f"forge validate: nothing to check in {' '.join(paths)}")
        return 2
    print(f"forge validate: {checked} checked, {problems} with problems")
    return 1 if problems else 0


def _cmd_report(args: argparse.Namespace) -> int:
    from pytest_forge.tune.run_report import render_report

    print(render_report(Path(args.run_dir)))
    return 0


def _cmd_playbook(args: argparse.Namespace) -> int:
    from pytest_forge.tune.playbook import playbook_show, playbook_validate

    path = Path(args.path) if args.path else None
    if args.action == "show":
        print(playbook_show(path))
        return 0
    return playbook_validate(path)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="forge", description=__doc__)
    parser.add_argument("--version", action="version", version=f"pytest-forge {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("tiny-model", help="build the deterministic tiny Llama into DIR")
    p.add_argument("dir")
    p.set_defaults(func=_cmd_tiny_model)

    p = sub.add_parser(
        "validate", help="check recipes and workloads (default: recipes/ workloads/)"
    )
    p.add_argument("paths", nargs="*")
    p.add_argument(
        "--workloads",
        default="workloads",
        help="where recipes' `workloads:` names must exist (default: workloads)",
    )
    p.set_defaults(func=_cmd_validate)

    p = sub.add_parser("report", help="print a tune run's experiment table")
    p.add_argument("run_dir")
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser("playbook", help="show or validate the tuning playbook")
    p.add_argument("action", choices=["show", "validate"])
    p.add_argument("path", nargs="?", help="a custom playbook.md (default: the bundled one)")
    p.set_defaults(func=_cmd_playbook)

    from pytest_forge import cli_extra

    cli_extra.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ForgeError as exc:
        print(f"forge: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
