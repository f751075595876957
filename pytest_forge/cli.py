"""The `forge` command: its parser and entry point.

The subcommands live by what they work on: cli_inputs.py (recipes, workloads, the
playbook, the tiny model) and cli_outputs.py (what runs leave: compare, merge, report).
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from typing import Any

from pytest_forge import __version__
from pytest_forge.cli_inputs import add_commands as add_input_commands
from pytest_forge.cli_outputs import add_commands as add_output_commands
from pytest_forge.errors import ForgeError

DESCRIPTION = (
    "pytest-forge outside pytest: check and convert recipes before a run, compare and "
    "merge what runs leave after it. The benchmarks themselves run under pytest "
    "(`pytest`, `pytest --forge-tune`)."
)
EPILOG = """\
examples:
  forge validate                          check recipes/ and workloads/
  forge export recipes/x.yaml --format vllm-cmd
  forge compare .forge/gate/A .forge/gate/B --fail-on-regression
  forge merge --out merged shard-1/ shard-2/

`forge COMMAND --help` describes each command."""


class _Formatter(argparse.HelpFormatter):
    """Paragraphs wrapped without breaking file names at their hyphens; indented lines
    (the examples) kept as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        paragraphs = []
        for paragraph in text.split("\n\n"):
            if any(line.startswith(" ") for line in paragraph.splitlines()):
                paragraphs.append(textwrap.indent(paragraph, indent))
            else:
                paragraphs.append(
                    textwrap.fill(
                        " ".join(paragraph.split()),
                        width,
                        initial_indent=indent,
                        subsequent_indent=indent,
                        break_on_hyphens=False,
                        break_long_words=False,
                    )
                )
        return "\n\n".join(paragraphs)

    def _split_lines(self, text: str, width: int) -> list[str]:
        return textwrap.wrap(
            " ".join(text.split()), width, break_on_hyphens=False, break_long_words=False
        )


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser with `forge`'s help layout; its subcommands' parsers are too."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    """The `forge` argument parser with every subcommand."""
    parser = _Parser(prog="forge", description=DESCRIPTION, epilog=EPILOG)
    parser.add_argument("--version", action="version", version=f"pytest-forge {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_input_commands(sub)
    add_output_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run `forge` with ``argv`` (default: the command line); return the exit code."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ForgeError as exc:
        print(f"forge: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
