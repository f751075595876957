"""``--forge-dry-run``: a recipe's tune plan as text, computed without measuring anything.

The plan says what a real ``--forge-tune`` would do: the layers with their caps under the
budget, each layer's search space on this hardware, what the hardware gates left out and
why, and the agent's first proposals. Nothing is booted and nothing is written: the caller
builds the layer spaces without a run directory, and the agent is asked as it would be
before the first experiment.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pytest_forge.errors import AgentError, ForgeError, RecipeError
from pytest_forge.tune import objective as obj
from pytest_forge.tune.agent_playbook import PlaybookAgent
from pytest_forge.tune.agent_types import Agent, HistoryEntry, ProposalContext
from pytest_forge.tune.layers import (
    LayerPlan,
    LayerSpace,
    LayerSpaces,
    decide_layer,
    layer_label,
)
from pytest_forge.tune.records import history_entry
from pytest_forge.tune.replay import derive
from pytest_forge.tune.search_space import SearchSpace, show_values

if TYPE_CHECKING:
    from pytest_forge.recipe import Recipe
    from pytest_forge.tune.options import TuneOptions

PLAYBOOK_PROPOSALS = 3  # how many of the offline agent's proposals a plan shows


@dataclass
class PlanInputs:
    """What a tune would start from: the recipe, the agent, the options and the spaces."""

    recipe: Recipe  # the recipe the next experiment mutates (committed, or a resume's best)
    agent: Agent
    agent_spec: str
    agent_why: str  # why this agent ("set by --forge-agent")
    options: TuneOptions
    hardware: Any  # HostHardware
    hardware_class: str
    spaces: LayerSpaces
    records: Sequence[Mapping[str, Any]] = field(default_factory=list)  # a resumed run's
    best_score: float = 1.0
    run_dir: str | None = None  # the run a resume would continue


def render_plan(inputs: PlanInputs) -> str:
    """The dry-run text of one recipe's tune."""
    o = inputs.options
    plan = LayerPlan.from_options(o)
    recipe = inputs.recipe
    lines = [
        f"forge tune plan for {recipe.id} ({recipe.path}): dry run, nothing booted or written",
        f"  agent: {inputs.agent_spec} ({inputs.agent_why})",
        f"  objective: {obj.objective(o.objective).describe()}; min improvement "
        f"{o.min_improvement:.1%} beyond the noise ({o.noise_sigmas:g} sigma)",
        f"  budget: {o.budget} experiments over all layers; patience {o.patience} per layer"
        + (f"; at most {o.max_hours:g} h" if o.max_hours is not None else "")
        + (f"; at most ${o.max_dollars:.2f} of agent calls" if o.max_dollars is not None else ""),
        f"  hardware: {_describe(inputs.hardware)} (playbook class {inputs.hardware_class})",
    ]
    if inputs.run_dir:
        lines.append(f"  resumes run {inputs.run_dir} ({len(inputs.records)} experiments stored)")
    lines.append("  layers, in order:")
    lines += [f"    {line}" for line in plan.describe(inputs.spaces)]
    for step in plan.steps:
        if step.excluded:
            continue
        lines += _space_lines(step.layer, inputs.spaces(step.layer))
    done = [r for r in inputs.records if r.get("status") != "baseline"]
    decision = decide_layer(plan, done, inputs.spaces, best_score=inputs.best_score)
    if decision.layer is None:
        lines.append(f"  no experiment would run: {decision.reason}")
        return "\n".join(lines)
    passed = f" ({'; '.join(decision.passed)})" if decision.passed else ""
    lines.append(f"  the next experiment runs in {layer_label(decision.layer)}{passed}")
    lines += _proposal_lines(inputs, decision.layer, inputs.spaces(decision.layer))
    return "\n".join(lines)


def _describe(hardware: Any) -> str:
    describe = getattr(hardware, "describe", None)
    return str(describe()) if callable(describe) else str(hardware)


def _space_lines(layer: int, space: LayerSpace) -> list[str]:
    label = layer_label(layer)
    if space.space is None:
        lines = [f"  {label}: any key (no playbook search space)"]
    elif space.empty:
        lines = [f"  {label}: nothing to propose on this hardware: skipped"]
    else:
        params = space.space.params
        lines = [
            f"  {label} search space ({len(params)} keys, {space.space.grid_size():,} recipes):"
        ]
        for key in space.space.ordered_keys():
            spec = params[key]
            lines.append(f"    {key}: {show_values(list(spec.values))} (priority {spec.priority})")
    if space.notes:
        lines.append(f"    gates and notes of {label}:")
        lines += [f"      - {note}" for note in space.notes]
    return lines


def _proposal_lines(inputs: PlanInputs, layer: int, space: LayerSpace) -> list[str]:
    """The agent's first proposals in ``layer``: the offline agent's first few (each
    assumed rejected, as none is measured), an LLM agent's first only (its next ones
    depend on the measurements)."""
    offline = isinstance(inputs.agent, PlaybookAgent)
    count = PLAYBOOK_PROPOSALS if offline else 1
    if offline:
        head = (
            f"  first {count} proposals of the playbook agent in {layer_label(layer)}, each "
            "assumed rejected (the real sequence follows the measurements):"
        )
    else:
        head = (
            f"  first proposal of {inputs.agent_spec} in {layer_label(layer)} (one agent "
            "call; its later proposals need measurements, so a dry run cannot show them):"
        )
    lines = [head]
    history = [history_entry(r) for r in inputs.records]
    if not history:
        # What the first real slot sees: the baseline as experiment 0, scoring 1.0.
        history.append(
            HistoryEntry(
                exp=0,
                recipe_id=inputs.recipe.content_hash,
                changes={},
                rationale="committed recipe",
                status="baseline",
                score=1.0,
            )
        )
    tried = {e.recipe_id for e in history if e.recipe_id}
    for number in range(1, count + 1):
        ctx = ProposalContext(
            recipe=inputs.recipe,
            hardware=inputs.hardware,
            hardware_class=inputs.hardware_class,
            search_space=space.space if space.space is not None else SearchSpace(params={}),
            history=list(history),
            objective=obj.objective(inputs.options.objective).describe(),
            tried_hashes=set(tried),
            layer=layer,
        )
        try:
            proposal = inputs.agent.propose(ctx)
            digest = derive(inputs.recipe, proposal.changes, proposal.rationale).content_hash
        except (AgentError, RecipeError, ForgeError) as exc:
            lines.append(f"    {number}. no proposal: {exc}")
            break
        changes = ", ".join(f"{k}={v!r}" for k, v in proposal.changes.items())
        lines.append(f"    {number}. {changes}: {proposal.rationale}")
        tried.add(digest)
        history.append(
            HistoryEntry(
                exp=len(history),
                recipe_id=digest,
                changes=dict(proposal.changes),
                rationale=proposal.rationale,
                status="rejected",
                reason="dry run: not measured",
            )
        )
    return lines


__all__ = ["PLAYBOOK_PROPOSALS", "PlanInputs", "render_plan"]
