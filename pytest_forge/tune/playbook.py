"""The tuning playbook: expert heuristics (prose for the LLM agents) plus, per hardware
class, the legal search space (a ```yaml block under ``## Search space: <CLASS>``).

The same file feeds every agent: the LLM agents read the whole text, the offline
``playbook`` agent and the proposal validator read the search spaces. Parsing is in
``playbook_parse.py``, the spaces in ``search_space.py``, the classes in ``hardware_classes.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from pytest_forge.errors import ForgeError
from pytest_forge.tune.hardware_classes import HARDWARE_CLASSES
from pytest_forge.tune.playbook_parse import find_blocks, parse
from pytest_forge.tune.search_space import SearchSpace
from pytest_forge.yaml_io import YamlInputError, read_text

BUNDLED_NAME = "playbook.md"


@dataclass(frozen=True)
class Playbook:
    """A loaded playbook: its text (for the LLM agents) and its search space per class."""

    text: str
    path: Path
    spaces: dict[str, SearchSpace] = field(default_factory=dict)

    def search_space(self, hardware_class: str) -> SearchSpace:
        """The search space of ``hardware_class``; ForgeError naming the file without it."""
        try:
            return self.spaces[hardware_class]
        except KeyError:
            raise ForgeError(
                f"{self.path}: no '## Search space: {hardware_class}' section "
                f"(this playbook covers: {', '.join(self.spaces) or 'nothing'})"
            ) from None


def bundled_playbook_path() -> Path:
    """The playbook that ships with pytest-forge."""
    return Path(str(resources.files("pytest_forge.tune").joinpath(BUNDLED_NAME)))


def load_playbook(path: Path | str | None = None) -> Playbook:
    """Load a playbook (the bundled one when ``path`` is None).

    A search space that cannot be parsed is an error naming the file and line. A
    playbook that leaves out some hardware classes still loads (a team may only tune
    on one kind of machine); ``validate_playbook`` reports the missing ones.
    """
    target = Path(path) if path is not None else bundled_playbook_path()
    try:
        text = read_text(target)
    except (OSError, YamlInputError) as e:
        raise ForgeError(f"{target}: cannot read the playbook: {_read_error(e)}") from None
    spaces, problems = parse(text, target)
    if problems:
        raise ForgeError(
            f"{target}: the playbook is invalid:\n" + "\n".join(f"  {p}" for p in problems)
        )
    return Playbook(text=text, path=target, spaces=spaces)


def validate_playbook(path: Path | str | None = None) -> list[str]:
    """Every problem in a playbook, each naming the file and (where it has one) the line."""
    target = Path(path) if path is not None else bundled_playbook_path()
    try:
        text = read_text(target)
    except (OSError, YamlInputError) as e:
        return [f"{target}: cannot read the playbook: {_read_error(e)}"]
    _, problems = parse(text, target)
    declared = {block.cls for block in find_blocks(text)}
    missing = [c for c in HARDWARE_CLASSES if c not in declared]
    if missing:
        problems.append(
            f"{target}: no search space for {', '.join(missing)} "
            f"(add a '## Search space: <CLASS>' heading with a ```yaml block for each)"
        )
    return problems


def _read_error(error: OSError | YamlInputError) -> str:
    return str(error.strerror or error) if isinstance(error, OSError) else str(error)


def playbook_show(path: Path | str | None = None) -> str:
    """What `forge playbook show` prints: the playbook and a summary of its spaces."""
    playbook = load_playbook(path)
    lines = [playbook.text.rstrip(), "", "---", f"playbook: {playbook.path}"]
    for cls, space in playbook.spaces.items():
        lines.append(f"  {cls}: {len(space.params)} parameters, {space.grid_size():,} grid points")
    return "\n".join(lines) + "\n"


def playbook_validate(path: Path | str | None = None) -> int:
    """What `forge playbook validate` runs: print the verdict, return the exit code."""
    target = Path(path) if path is not None else bundled_playbook_path()
    problems = validate_playbook(target)
    if problems:
        print(f"playbook {target}: {len(problems)} problem(s)")
        for problem in problems:
            print(f"  {problem}")
        return 1
    playbook = load_playbook(target)
    sizes = ", ".join(f"{c} {s.grid_size():,}" for c, s in playbook.spaces.items())
    print(f"playbook {target}: OK (grid points per class: {sizes})")
    return 0


__all__ = [
    "Playbook",
    "bundled_playbook_path",
    "load_playbook",
    "playbook_show",
    "playbook_validate",
    "validate_playbook",
]
