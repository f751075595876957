"""Proposal validation: whether a proposed mutation may be booted, and if not, why.

Every agent's proposal passes here before the tuner sees it: the search space, the
hardware's GPU count and quantization gates, settings vLLM would refuse at startup,
no-ops, known crashes and recipes already measured. The reason a proposal is refused is
written for the LLM that made it, which is asked again with it. An unambiguous bare name
(``max_num_seqs``) is read as its key, with a note the run store keeps.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pytest_forge.errors import ForgeError
from pytest_forge.hardware import recipe_quant_problem
from pytest_forge.suggest import name_hint, nearest
from pytest_forge.tune.agent_types import Proposal, ProposalContext, snippet
from pytest_forge.tune.checkpoint_quant import checkpoint_quant_problem
from pytest_forge.tune.search_space import same_value

if TYPE_CHECKING:
    from pytest_forge.hardware import HostHardware
    from pytest_forge.recipe import Recipe

__all__ = ["check_proposal", "flatten_recipe", "validate_proposal"]

Checked = tuple[Proposal | None, str | None]


def flatten_recipe(recipe: Recipe) -> dict[str, Any]:
    """The recipe's tunable values as dotted keys (``config.max_num_seqs``: 256)."""
    data = recipe.model_dump(mode="json", exclude_none=True)
    flat: dict[str, Any] = {}
    for section in ("config", "compilation", "quant", "env"):
        for key, value in (data.get(section) or {}).items():
            flat[f"{section}.{key}"] = value
    return flat


def _hardware_gate(
    host: HostHardware, changes: Mapping[str, Any], recipe_gpus: int | None = None
) -> str | None:
    # Quantization is gated on the whole candidate (_candidate_problem): quant.* and
    # config.* both spell it.
    for key, value in changes.items():
        if key == "config.tensor_parallel_size":
            # The recipe declares its GPUs (hardware.count); the winner must run there,
            # not only on this (maybe bigger) host.
            gpus = max(1, min(host.count, recipe_gpus) if recipe_gpus else host.count)
            if not isinstance(value, int) or isinstance(value, bool) or value > gpus:
                return (
                    f"{key}={value!r} exceeds the {gpus} GPU(s) of the recipe's hardware "
                    "and this host"
                )
    return None


def _vllm_would_refuse(candidate: Recipe) -> str | None:
    """Scheduler settings vLLM 0.32 rejects at startup (SchedulerConfig.verify_max_model_len).

    Checked here because a refused boot costs minutes on a GPU and teaches nothing.
    Only values the recipe states are compared; vLLM's own defaults vary by hardware.
    """
    config = candidate.config
    tokens, seqs = config.get("max_num_batched_tokens"), config.get("max_num_seqs")
    model_len = config.get("max_model_len")
    if (
        config.get("enable_chunked_prefill") is False
        and isinstance(tokens, int)
        and isinstance(model_len, int)
        and tokens < model_len
    ):
        return (
            f"vLLM refuses to start with enable_chunked_prefill false and "
            f"max_num_batched_tokens ({tokens}) below max_model_len ({model_len})"
        )
    if isinstance(tokens, int) and isinstance(seqs, int) and tokens < seqs:
        return (
            f"vLLM refuses to start with max_num_batched_tokens ({tokens}) "
            f"below max_num_seqs ({seqs})"
        )
    return None


def _same_changes(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    return a.keys() == b.keys() and all(same_value(a[k], b[k]) for k in a)


def _resolve_key(ctx: ProposalContext, key: str) -> tuple[str | None, str]:
    """The search-space key ``key`` names, with a note when it was a bare name
    (``max_num_seqs`` for ``config.max_num_seqs``); or (None, why it names none).

    A bare name is read as the one key it ends with: an LLM that drops the section of an
    unambiguous name meant that key, and a re-ask would only cost an attempt. A bare name
    two sections share is refused, naming both: guessing there would be a coin toss.
    """
    space = ctx.search_space
    if key in space.params:
        return key, ""
    legal = ", ".join(space.ordered_keys())
    if "." not in key:
        matches = [k for k in space.ordered_keys() if k.partition(".")[2] == key]
        if len(matches) == 1:
            return matches[0], f"{key} read as {matches[0]}"
        if matches:
            return None, (
                f"'{key}' is ambiguous in the {ctx.hardware_class} search space: it could be "
                f"{' or '.join(matches)}; give the full dotted key (legal keys: {legal})"
            )
    return None, (
        f"'{key}' is not in the {ctx.hardware_class} search space "
        f"({name_hint(_nearest_key(space.ordered_keys(), key))}; legal keys: {legal})"
    )


def _nearest_key(keys: list[str], key: str) -> str | None:
    """The legal key nearest ``key``, comparing bare names too (``max_num_seq``)."""
    by_name: dict[str, str] = {k: k for k in keys}
    for k in keys:
        by_name.setdefault(k.partition(".")[2] or k, k)
    near = nearest(key, by_name)
    return by_name[near] if near is not None else None


def _canonical(
    ctx: ProposalContext, changes: Mapping[str, Any]
) -> tuple[dict[str, Any], list[str], str]:
    """The changes under their full keys with values in their listed form, and a note per
    bare name read as a key; or ({}, [], why one is off the space)."""
    space = ctx.search_space
    canonical: dict[str, Any] = {}
    named_as: dict[str, str] = {}  # full key -> the name the answer gave it
    notes: list[str] = []
    for given, value in changes.items():
        key, note = _resolve_key(ctx, given)
        if key is None:
            return {}, [], note
        if key in named_as:
            return {}, [], f"'{named_as[key]}' and '{given}' both name {key}: give it once"
        named_as[key] = given
        try:
            canonical[key] = space.canonical(key, value)
        except ValueError as e:
            return {}, [], str(e)
        if note:
            notes.append(note)
    return canonical, notes, ""


def _history_problem(ctx: ProposalContext, changes: Mapping[str, Any]) -> str | None:
    """A no-op against the best recipe, or a change set that already crashed."""
    current = flatten_recipe(ctx.recipe)
    if all(k in current and same_value(current[k], v) for k, v in changes.items()):
        return "no actual change: the best recipe already has these values"
    for entry in ctx.history:
        if entry.status == "crashed" and _same_changes(entry.changes, changes):
            reason = f": {snippet(entry.reason, 160)}" if entry.reason else ""
            return f"this change set crashed in experiment {entry.exp}{reason}"
    return None


def _candidate_problem(ctx: ProposalContext, candidate: Recipe) -> str | None:
    """What is wrong with the mutated recipe itself: gates, vLLM refusals, duplicates."""
    quant = recipe_quant_problem(candidate, ctx.hardware)
    if quant:
        return f"{quant[0]} is not allowed on this hardware: {quant[1]}"
    refusal = checkpoint_quant_problem(candidate, ctx.search_space)
    refusal = refusal or _vllm_would_refuse(candidate)
    if refusal:
        return refusal
    digest = candidate.content_hash
    if digest == ctx.recipe.content_hash:
        return "no actual change: the resulting recipe equals the best recipe"
    if digest in ctx.tried_hashes:
        when = next((e.exp for e in ctx.history if e.recipe_id == digest), None)
        where = f" in experiment {when}" if when is not None else ""
        return f"that exact recipe ({digest}) was already tried{where}"
    return None


def check_proposal(ctx: ProposalContext, proposal: Proposal) -> Checked:
    """The proposal with values in their listed form, or (None, why it is refused)."""
    if not proposal.changes:
        return None, "the proposal has no changes: propose at least one"
    canonical, notes, off_space = _canonical(ctx, proposal.changes)
    if off_space:
        return None, off_space
    problem = _hardware_gate(ctx.hardware, canonical, ctx.recipe.hardware.count)
    problem = problem or _history_problem(ctx, canonical)
    if problem:
        return None, problem
    try:
        candidate = ctx.recipe.with_changes(canonical)
    except ForgeError as e:
        return None, f"the recipe rejects it: {e}"
    problem = _candidate_problem(ctx, candidate)
    if problem:
        return None, problem
    notes = [*proposal.notes, *notes]
    return Proposal(rationale=proposal.rationale, changes=canonical, notes=tuple(notes)), None


def validate_proposal(ctx: ProposalContext, proposal: Proposal) -> str | None:
    """None when the proposal may run, else the reason it is refused."""
    return check_proposal(ctx, proposal)[1]
