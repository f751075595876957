"""``forge import-aim``, ``forge export`` and ``forge compare``: thin wrappers over
aim.py and compare.py, added to the parser cli.py builds."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pytest_forge.errors import ForgeError


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
    from pytest_forge.aim import export_aim, export_recipe
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


def _cmd_compare(args: argparse.Namespace) -> int:
    from pytest_forge.compare import compare_runs, load_run, render_comparison

    if not 0 <= args.threshold < 100:
        raise ForgeError(f"--threshold is a percentage in [0, 100), got {args.threshold}")
    comparison = compare_runs(load_run(args.run_a), load_run(args.run_b), args.threshold / 100)
    sys.stdout.write(render_comparison(comparison))
    return 1 if args.fail_on_regression and comparison.has_regression else 0


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add import-aim, export and compare to the ``forge`` subcommands."""
    from pytest_forge.aim import EXPORT_FORMATS
    from pytest_forge.compare import DEFAULT_THRESHOLD

    p = sub.add_parser(
        "import-aim",
        help="turn an AMD AIM recipe into one recipe per enabled <N>_gpu block",
    )
    p.add_argument("file", help="the AIM recipe YAML")
    p.add_argument("--out-dir", default="recipes", help="where to write <id>.yaml (recipes/)")
    p.add_argument("--force", action="store_true", help="overwrite existing recipe files")
    p.set_defaults(func=_cmd_import_aim)

    p = sub.add_parser(
        "export",
        help="write a recipe as an AIM recipe, a vllm serve command or a vllm --config file",
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

    p = sub.add_parser(
        "compare",
        help="compare two gate runs (results.json) or tune runs (best experiment)",
    )
    p.add_argument("run_a", metavar="RUN_A")
    p.add_argument("run_b", metavar="RUN_B")
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
        help="exit 1 when any metric regressed beyond the threshold",
    )
    p.set_defaults(func=_cmd_compare)
