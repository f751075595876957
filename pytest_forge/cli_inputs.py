"""`forge` commands on a run's inputs: validate, import-aim, export, playbook, tiny-model.

Thin wrappers over recipe.py, workload.py, aim.py, tune/playbook.py and tiny_model.py;
cli.py adds them to its parser.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_forge.errors import ForgeError

if TYPE_CHECKING:
    from pytest_forge.recipe import Recipe

    # What add_subparsers() returns (argparse's own, private, name), of cli.py's parser
    # class (which this module does not import: cli.py imports it).
    SubParsers = argparse._SubParsersAction[Any]


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


def _header(source: Path, description: str | None) -> str:
    lines = [f"Imported from the AIM recipe {source.name} by `forge import-aim`."]
    if description:
        lines.append(" ".join(description.split()))
    lines.append("No baselines yet: measure them with pytest --forge-update-baselines.")
    return "".join(f"# {line}\n" for line in lines)


def _aim_description(path: Path) -> str | None:
    from ruamel.yaml import YAML
    from ruamel.yaml.error import YAMLError

    try:
        doc = YAML(typ="safe").load(path.read_text(encoding="utf-8"))
    except (OSError, YAMLError):
        # import_aim() already read and checked it; the comment is a nicety only.
        return None
    value = doc.get("description") if isinstance(doc, dict) else None
    return str(value) if value else None


def _cmd_import_aim(args: argparse.Namespace) -> int:
    from pytest_forge.aim import import_aim
    from pytest_forge.fileio import atomic_write
    from pytest_forge.recipe import Recipe
    from pytest_forge.vllm_args import load_arg_spec

    source = Path(args.file)
    spec = load_arg_spec()
    if spec.warning:
        print(f"forge: warning: {spec.warning}", file=sys.stderr)
    recipes = import_aim(source, spec)
    out_dir = Path(args.out_dir)
    targets = [out_dir / f"{r.id}.yaml" for r in recipes]
    existing = [str(t) for t in targets if t.exists()]
    if existing and not args.force:
        # An existing recipe may carry measured baselines and tuned values: never clobber.
        raise ForgeError(f"{', '.join(existing)} already exist; pass --force to overwrite")
    header = _header(source, _aim_description(source))
    for recipe, target in zip(recipes, targets, strict=True):
        text = header + recipe.to_yaml_text()
        Recipe.from_yaml_text(text, path=target)  # what we write must load back
        atomic_write(target, text)
        print(target)
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from pytest_forge.export import export_aim, export_recipe
    from pytest_forge.recipe import Recipe

    recipes = [Recipe.load(p) for p in args.recipes]
    if len(recipes) > 1 and args.format != "aim":
        raise ForgeError(f"--format {args.format} exports one recipe at a time")
    text = export_aim(recipes) if args.format == "aim" else export_recipe(recipes[0], args.format)
    if args.output:
        from pytest_forge.fileio import atomic_write

        atomic_write(Path(args.output), text)
        print(args.output, file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def _cmd_playbook(args: argparse.Namespace) -> int:
    from pytest_forge.tune.playbook import playbook_show, playbook_validate

    path = Path(args.path) if args.path else None
    if args.action == "show":
        print(playbook_show(path))
        return 0
    return playbook_validate(path)


def _cmd_tiny_model(args: argparse.Namespace) -> int:
    from pytest_forge.tiny_model import build

    print(build(Path(args.dir)))
    return 0


def _add_validate(sub: SubParsers) -> None:
    p = sub.add_parser(
        "validate",
        help="check recipes and workloads without booting anything",
        description="Run every recipe and workload check pytest would run, without booting "
        "vLLM: one `ok` or `FAIL` line per file, exit 1 when any file has a problem.",
    )
    p.add_argument(
        "paths",
        nargs="*",
        metavar="PATH",
        help="recipe/workload files or directories (default: recipes workloads)",
    )
    p.add_argument(
        "--workloads",
        default="workloads",
        help="where recipes' `workloads:` names must exist (default: workloads)",
    )
    p.set_defaults(func=_cmd_validate)


def _add_aim(sub: SubParsers) -> None:
    from pytest_forge.export import EXPORT_FORMATS

    p = sub.add_parser(
        "import-aim",
        help="turn an AMD AIM recipe into forge recipes",
        description="Write one forge recipe per enabled <N>_gpu block of an AMD AIM recipe.",
    )
    p.add_argument("file", metavar="FILE", help="the AIM recipe YAML")
    p.add_argument("--out-dir", default="recipes", help="where to write <id>.yaml (recipes/)")
    p.add_argument("--force", action="store_true", help="overwrite existing recipe files")
    p.set_defaults(func=_cmd_import_aim)

    p = sub.add_parser(
        "export",
        help="write a recipe as an AIM recipe, a `vllm serve` command or a vLLM config file",
        description="Write recipes for other tools: an AMD AIM recipe (aim), the "
        "`vllm serve` command line that serves it (vllm-cmd), or a file for "
        "`vllm serve --config` (vllm-config).",
    )
    p.add_argument(
        "recipes",
        nargs="+",
        metavar="RECIPE",
        help="recipe file(s); several only for --format aim (one <N>_gpu block each)",
    )
    p.add_argument("--format", required=True, choices=EXPORT_FORMATS)
    p.add_argument("-o", "--output", metavar="FILE", help="write here instead of stdout")
    p.set_defaults(func=_cmd_export)


def add_commands(sub: SubParsers) -> None:
    """Add validate, import-aim, export, playbook and tiny-model to `forge`."""
    _add_validate(sub)
    _add_aim(sub)

    p = sub.add_parser(
        "playbook",
        help="show or validate the tuning playbook",
        description="Print the tuning playbook with a summary of its search spaces (show), "
        "or check it (validate: exit 1 naming each problem's file and line).",
    )
    p.add_argument("action", choices=["show", "validate"])
    p.add_argument("path", nargs="?", help="a custom playbook.md (default: the bundled one)")
    p.set_defaults(func=_cmd_playbook)

    p = sub.add_parser(
        "tiny-model",
        help="build the deterministic tiny Llama the CPU recipe uses",
        description="Build the deterministic tiny Llama (`model: forge:tiny-llama`) into DIR "
        "and print its path. Needs torch and transformers (they come with vLLM).",
    )
    p.add_argument("dir", metavar="DIR")
    p.set_defaults(func=_cmd_tiny_model)
