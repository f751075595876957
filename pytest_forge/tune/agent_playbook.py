"""The offline ``playbook`` agent: a deterministic coordinate search over the playbook's space.

No network and no randomness: every proposal is derived from the context (best recipe,
history, tried hashes), so a resumed run proposes what the uninterrupted one would have.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from pytest_forge.errors import AgentError, RecipeError
from pytest_forge.tune.agent_check import check_proposal, flatten_recipe
from pytest_forge.tune.agent_types import AgentUsage, Proposal, ProposalContext
from pytest_forge.tune.playbook import load_playbook
from pytest_forge.tune.search_space import same_value

if TYPE_CHECKING:
    from pytest_forge.tune.playbook import Playbook

__all__ = ["PlaybookAgent", "crashed_changes"]

Move = tuple[str, Any, str]  # key, value, rationale

_BEST = ("baseline", "kept")
_MEASURED = ("baseline", "kept", "rejected")
_STEP_WORDS = {
    (1, "up"): "next value up",
    (1, "down"): "next value down",
    (1, "flip"): "flipped",
    (1, "set"): "unset so far",
    (2, "up"): "two-step jump up",
    (2, "down"): "two-step jump down",
    (1, "switch"): "another checkpoint",
}
# The one key whose values are alternatives, not a scale: each is one step away.
_CHECKPOINT_KEY = "model"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _flips(values: list[Any], current: Any, distance: int) -> Iterator[tuple[Any, str]]:
    """A boolean parameter: the other value (or each value, when unset); one step only."""
    if distance != 1:
        return
    for v in values:
        if current is None or not same_value(v, current):
            yield v, "flip" if current is not None else "set"


def _listed_index(values: list[Any], current: Any) -> int | None:
    """Where the current value sits in the list (a string "2" matches a listed 2)."""
    index = next((i for i, v in enumerate(values) if same_value(v, current)), None)
    if index is None and isinstance(current, str):
        index = next((i for i, v in enumerate(values) if str(v) == current), None)
    return index


def _around(values: list[Any], current: float, distance: int) -> Iterator[tuple[Any, str]]:
    """An unlisted numeric current value: its neighbours are the listed values around it."""
    numeric = [v for v in values if _is_number(v)]
    above = sorted(v for v in numeric if v > current)
    below = sorted((v for v in numeric if v < current), reverse=True)
    if len(above) >= distance:
        yield above[distance - 1], "up"
    if len(below) >= distance:
        yield below[distance - 1], "down"


def _neighbours(values: list[Any], current: Any, distance: int) -> Iterator[tuple[Any, str]]:
    """Values ``distance`` steps above, then below, the current one (booleans flip)."""
    if all(isinstance(v, bool) for v in values):
        yield from _flips(values, current, distance)
        return
    index = _listed_index(values, current)
    if index is not None:
        for i, direction in ((index + distance, "up"), (index - distance, "down")):
            if 0 <= i < len(values):
                yield values[i], direction
    elif _is_number(current) and any(_is_number(v) for v in values):
        yield from _around(values, current, distance)
    elif distance == 1:
        for v in values:
            yield v, "set"


def _switches(values: list[Any], current: Any, distance: int) -> Iterator[tuple[Any, str]]:
    """Another checkpoint (``model``): every other listed one, in order; one step only."""
    if distance == 1:
        for v in values:
            if not same_value(v, current):
                yield v, "switch"


def _same_change(a: Any, b: Any) -> bool:
    """A stored change's value against a listed one (a JSON "2" for a listed 2)."""
    if same_value(a, b):
        return True
    plain = not isinstance(a, bool) and not isinstance(b, bool)
    return (
        plain
        and isinstance(a, (str, int, float))
        and isinstance(b, (str, int, float))
        and (str(a) == str(b))
    )


def crashed_changes(ctx: ProposalContext) -> list[tuple[str, Any]]:
    """The key=value changes that crashed the server, never to be proposed again.

    A crash is information: a change that crashed alone is refused alone and in any pair,
    in every later slot; a member of a crashed set is refused too unless it booted in an
    experiment of its own (then the other member is to blame).
    """
    booted = [(k, v) for e in ctx.history if e.status in _MEASURED for k, v in e.changes.items()]
    crashed: list[tuple[str, Any]] = []
    for entry in ctx.history:
        if entry.status != "crashed":
            continue
        for key, value in entry.changes.items():
            known_good = any(k == key and _same_change(v, value) for k, v in booted)
            if len(entry.changes) == 1 or not known_good:
                crashed.append((key, value))
    return crashed


class PlaybookAgent:
    """Offline, deterministic cyclic coordinate search over the playbook's space.

    Single-parameter moves from the best recipe, nearest values first, cycling through the
    parameters in priority order from the one the last experiment moved: a kept change
    moves the best, so a parameter keeps walking while it improves, and moves rejected
    from an older best are tried again from the new one (parameters interact). Then
    two-step jumps. When no single move is left untried, pairs of moves, the pair whose
    two moves lost least on their own first (e.g. chunked prefill off only pays with a
    bigger token budget). A change that crashed the server is never proposed again, alone
    or in a pair; ``model`` (a pre-quantized checkpoint, layer 2) tries each listed
    checkpoint in turn. The tuner refuses anything already measured.

    Everything is derived from the context (history, tried hashes), so a resumed run
    makes the same proposal as the uninterrupted one would have.
    """

    def __init__(self, playbook: Playbook | None = None) -> None:
        self.name = "playbook"
        self.playbook = playbook or load_playbook()
        self.usage = AgentUsage()

    def __repr__(self) -> str:
        return "PlaybookAgent()"

    def propose(self, ctx: ProposalContext) -> Proposal:
        """The first candidate move that passes validation, or AgentError when none is left."""
        self.usage.add()
        refused = 0
        for proposal in self._candidates(ctx):
            checked, _ = check_proposal(ctx, proposal)
            if checked is not None:
                return checked
            refused += 1
        raise AgentError(
            f"playbook: search space exhausted for {ctx.hardware_class} "
            f"({len(ctx.history)} experiments, {refused} remaining candidates refused)"
        )

    def _candidates(self, ctx: ProposalContext) -> Iterator[Proposal]:
        crashed = crashed_changes(ctx)
        moves: list[Move] = []  # distance-1 moves, for the pairs
        for distance in (1, 2):
            for key, value, text in self._moves(ctx, distance):
                if any(k == key and _same_change(v, value) for k, v in crashed):
                    continue  # it crashed the server: not alone, not in a pair
                if distance == 1:
                    moves.append((key, value, text))
                yield Proposal(rationale=text, changes={key: value})
        yield from self._pairs(ctx, moves)

    def _moves(self, ctx: ProposalContext, distance: int) -> Iterator[Move]:
        """Single-parameter moves ``distance`` steps away, from the last moved parameter on."""
        space = ctx.search_space
        keys = space.ordered_keys()
        current = {**flatten_recipe(ctx.recipe), _CHECKPOINT_KEY: ctx.recipe.model}
        singles = [e for e in ctx.history if len(e.changes) == 1 and next(iter(e.changes)) in keys]
        start = keys.index(next(iter(singles[-1].changes))) if singles else 0
        best = _best_score(ctx)
        evidence = f"best score so far {best:.4g}" if best is not None else "no score yet"
        for key in keys[start:] + keys[:start]:
            spec = space.params[key]
            cur = current.get(key, spec.default)
            steps = _switches if key == _CHECKPOINT_KEY else _neighbours
            for value, direction in steps(list(spec.values), cur, distance):
                shown = json.dumps(value)
                move = f"{json.dumps(cur)} -> {shown}" if cur is not None else f"set {shown}"
                text = (
                    f"{key}: {move} ({_STEP_WORDS[distance, direction]}, "
                    f"priority {spec.priority}; {evidence}). "
                    f"Playbook, {ctx.hardware_class}: {spec.why or 'a listed value'}"
                )
                yield key, value, text

    @staticmethod
    def _pairs(ctx: ProposalContext, moves: list[Move]) -> Iterator[Proposal]:
        """Pairs of moves on different keys, those that lost least alone first."""
        scores = {e.recipe_id: e.score for e in ctx.history if e.score is not None}
        best = _best_score(ctx)
        neutral = best if best is not None else 0.0  # an unmeasured move

        def alone(move: Move) -> float:
            key, value, _ = move
            try:
                moved = ctx.recipe.with_changes({key: value}).content_hash
            except RecipeError:
                return neutral
            score = scores.get(moved)
            return neutral if score is None else score

        pairs = [(a, b) for i, a in enumerate(moves) for b in moves[i + 1 :] if a[0] != b[0]]
        # Stable sort: ties keep the priority order.
        pairs.sort(key=lambda ab: -(alone(ab[0]) + alone(ab[1])))
        for (ka, va, ta), (kb, vb, tb) in pairs:
            yield Proposal(
                rationale=f"together, as neither alone beat the best: {ta} | {tb}",
                changes={ka: va, kb: vb},
            )


def _best_score(ctx: ProposalContext) -> float | None:
    return max(
        (e.score for e in ctx.history if e.score is not None and e.status in _BEST),
        default=None,
    )
