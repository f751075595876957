"""Tuning layers: which recipe key belongs to which layer, the plan, and the layer a slot runs in.

A tune climbs the layers of seeds/001 in order: layer 1 (serving config: ``config.*``,
``compilation.*``, ``env.*`` except kernel switches), then layer 2 (quantization: ``quant.*``
and ``model`` switched to a pre-quantized checkpoint) once layer 1 has converged (``patience``
experiments in a row without a keep) or used its cap, then layer 3 (kernels; scaffolded: it
is in the plan but proposes nothing yet). The run's experiment budget caps all layers
together.

Everything here is pure: :func:`decide_layer` derives the layer of the next slot from the
stored records alone (each carries its ``"layer"``), so a resumed run continues where the
interrupted one stood.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pytest_forge.tune.search_space import SearchSpace

LAYER_BASELINE = 0  # the "layer" of the baseline record: the reference, no layer's experiment
LAYER_CONFIG = 1
LAYER_QUANT = 2
LAYER_KERNELS = 3
LAYERS: tuple[int, ...] = (LAYER_CONFIG, LAYER_QUANT, LAYER_KERNELS)
LAYER_NAMES: dict[int, str] = {
    LAYER_CONFIG: "config",
    LAYER_QUANT: "quant",
    LAYER_KERNELS: "kernels",
}
# Environment variables that choose kernels rather than serving behaviour (layer 3).
KERNEL_ENV_PREFIXES: tuple[str, ...] = (
    "VLLM_ROCM_USE_AITER",  # AMD's AITER kernels, and its per-op switches (_MOE, _MHA, ...)
    "VLLM_ATTENTION_BACKEND",
    "VLLM_USE_TRITON_FLASH_ATTN",
)
SCAFFOLDED_NOTE = (
    "scaffolded: pytest-forge does not build or choose kernels yet, so this layer makes "
    "no proposals"
)


def layer_of(key: str) -> int:
    """The layer a dotted recipe key belongs to (``quant.method`` -> 2)."""
    if key == "model" or key.startswith("quant."):
        return LAYER_QUANT
    if key == "kernels" or key.startswith("kernels."):
        return LAYER_KERNELS
    if key.startswith("env.") and key[4:].startswith(KERNEL_ENV_PREFIXES):
        return LAYER_KERNELS
    return LAYER_CONFIG


def layer_label(layer: int) -> str:
    """``layer 2 (quant)``: how messages name a layer."""
    return f"layer {layer} ({LAYER_NAMES.get(layer, '?')})"


def restrict(space: SearchSpace, layer: int) -> SearchSpace:
    """The part of ``space`` whose keys belong to ``layer`` (priorities and order kept)."""
    return SearchSpace(params={k: v for k, v in space.params.items() if layer_of(k) == layer})


def record_layer(record: Mapping[str, Any]) -> int:
    """The layer a stored experiment ran in (a run stored before layers: layer 1)."""
    layer = record.get("layer")
    return layer if isinstance(layer, int) and not isinstance(layer, bool) else LAYER_CONFIG


# -- the spaces ---------------------------------------------------------------------------
@dataclass(frozen=True)
class LayerSpace:
    """A layer's search space on this hardware, and notes on what was left out and why.

    ``space`` None: no playbook space is known (a Tuner built without one), so proposals
    are not restricted; an empty space means the layer has nothing to propose.
    """

    space: SearchSpace | None
    notes: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        """Whether the layer has nothing to propose (it is then skipped, with its notes)."""
        return self.space is not None and not self.space.params


LayerSpaces = Callable[[int], LayerSpace]


def unrestricted_spaces(layer: int) -> LayerSpace:
    """The layers of a Tuner built without a search space: layer 1 takes any key (as before
    layers existed), layers 2 and 3 have nothing."""
    if layer == LAYER_CONFIG:
        return LayerSpace(None)
    if layer == LAYER_KERNELS:
        return LayerSpace(SearchSpace(params={}), (SCAFFOLDED_NOTE,))
    return LayerSpace(SearchSpace(params={}), ("no search space was given for this layer",))


def layer_problem(changes: Iterable[str], layer: int, space: LayerSpace) -> str | None:
    """Why changing ``changes`` is not allowed in ``layer`` (None: it is)."""
    if space.space is None:
        return None  # no space known: nothing to restrict to
    foreign = [k for k in changes if layer_of(k) != layer]
    if not foreign:
        return None
    where = ", ".join(f"{k} is a {layer_label(layer_of(k))} key" for k in foreign)
    return f"this experiment is in {layer_label(layer)}: {where}"


# -- the plan -----------------------------------------------------------------------------
@dataclass(frozen=True)
class LayerStep:
    """One layer of the plan: whether it runs, why not, and its experiment cap."""

    layer: int
    cap: int | None = None  # at most this many experiments in the layer (None: no cap)
    excluded: str | None = None  # why the plan leaves it out (a skip option, the start layer)


@dataclass(frozen=True)
class LayerPlan:
    """The layers a tune climbs, in order, with their caps, under one experiment budget."""

    steps: tuple[LayerStep, ...]
    patience: int
    budget: int
    min_improvement: float = 0.0

    @classmethod
    def from_options(cls, options: Any) -> LayerPlan:
        """The plan a :class:`~pytest_forge.tune.options.TuneOptions` asks for."""
        start = int(getattr(options, "start_layer", 1))

        def excluded(layer: int, skip: bool, flag: str) -> str | None:
            if skip:
                return f"skipped ({flag})"
            if layer < start:
                return f"skipped (--forge-start-layer {start})"
            return None

        steps = (
            LayerStep(
                LAYER_CONFIG,
                getattr(options, "max_config_experiments", None),
                excluded(
                    LAYER_CONFIG, getattr(options, "skip_config", False), "--forge-skip-config"
                ),
            ),
            LayerStep(
                LAYER_QUANT,
                getattr(options, "max_quant_experiments", None),
                excluded(LAYER_QUANT, getattr(options, "skip_quant", False), "--forge-skip-quant"),
            ),
            LayerStep(LAYER_KERNELS, None, excluded(LAYER_KERNELS, False, "")),
        )
        return cls(
            steps=steps,
            patience=int(options.patience),
            budget=int(options.budget),
            min_improvement=float(getattr(options, "min_improvement", 0.0)),
        )

    def describe(self, spaces: LayerSpaces | None = None) -> list[str]:
        """One line per layer: runs until converged or its cap, or why it is left out (with
        ``spaces``: also a layer with nothing to propose)."""
        lines = []
        for step in self.steps:
            if step.excluded:
                lines.append(f"{layer_label(step.layer)}: {step.excluded}")
                continue
            if spaces is not None and spaces(step.layer).empty:
                lines.append(f"{layer_label(step.layer)}: skipped, nothing to propose here")
                continue
            until = f"until converged (patience {self.patience})"
            if step.cap is not None:
                until += f" or {step.cap} experiments"
            lines.append(f"{layer_label(step.layer)}: {until}")
        return lines


@dataclass(frozen=True)
class LayerDecision:
    """Which layer the next slot runs in, or (``layer`` None) why no layer is left; ``passed``
    says why each earlier layer of the plan is done or left out."""

    layer: int | None
    passed: tuple[str, ...] = field(default_factory=tuple)
    reason: str | None = None


def _streak(records: Sequence[Mapping[str, Any]]) -> int:
    streak = 0
    for record in reversed(records):
        if record.get("status") == "kept":
            break
        streak += 1
    return streak


def layer_done(
    plan: LayerPlan, step: LayerStep, records: Sequence[Mapping[str, Any]], best_score: float
) -> str | None:
    """Why ``step``'s layer is finished given its ``records`` (None: it may run more)."""
    label = layer_label(step.layer)
    if step.cap is not None and len(records) >= step.cap:
        return f"{label} used its cap of {step.cap} experiments"
    streak = _streak(records)
    if streak >= plan.patience:
        return (
            f"converged: {streak} experiments in a row without a keep in {label} (patience "
            f"{plan.patience}, min improvement {plan.min_improvement:.1%}); best score "
            f"{best_score:.3f}"
        )
    return None


def decide_layer(
    plan: LayerPlan,
    done: Sequence[Mapping[str, Any]],
    spaces: LayerSpaces,
    *,
    best_score: float = 1.0,
) -> LayerDecision:
    """The layer the next experiment runs in, from the stored candidate records ``done``
    (oldest first, the baseline excluded).

    Layers are walked in the plan's order; one is passed over when the plan leaves it out,
    its space is empty (its notes say why), or it converged or used its cap. ``spaces`` is
    only asked about the layers reached, so layer 2's (which may look up the Hub) is built
    once layer 1 is done.
    """
    passed: list[str] = []
    for step in plan.steps:
        label = layer_label(step.layer)
        if step.excluded:
            passed.append(f"{label} {step.excluded}")
            continue
        space = spaces(step.layer)
        if space.empty:
            why = "; ".join(space.notes) or "its search space is empty on this hardware"
            passed.append(f"{label} skipped: {why}")
            continue
        mine = [r for r in done if record_layer(r) == step.layer]
        finished = layer_done(plan, step, mine, best_score)
        if finished is not None:
            passed.append(finished)
            continue
        return LayerDecision(step.layer, tuple(passed))
    return LayerDecision(None, tuple(passed), "; ".join(passed) or "no layer to tune")


__all__ = [
    "KERNEL_ENV_PREFIXES",
    "LAYERS",
    "LAYER_BASELINE",
    "LAYER_CONFIG",
    "LAYER_KERNELS",
    "LAYER_NAMES",
    "LAYER_QUANT",
    "SCAFFOLDED_NOTE",
    "LayerDecision",
    "LayerPlan",
    "LayerSpace",
    "LayerSpaces",
    "LayerStep",
    "decide_layer",
    "layer_done",
    "layer_label",
    "layer_of",
    "layer_problem",
    "record_layer",
    "restrict",
    "unrestricted_spaces",
]
