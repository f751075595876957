"""The sections of a recipe: hardware, quantization, gates, lineage and measured baselines.

Each is a strict pydantic model (unknown keys are errors); recipe.py puts them together
into the Recipe and re-exports them.
"""

from __future__ import annotations

import statistics
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from pytest_forge.metric_registry import JUDGED_BY_NAME, LATENCY_NAMES
from pytest_forge.recipe_errors import field_error
from pytest_forge.slo import SLO
from pytest_forge.suggest import nearest
from pytest_forge.yaml_io import scalar_to_str

# quant.method values that pass no --quantization: dtypes, and "auto" (let vLLM read a
# pre-quantized checkpoint's scheme from its config, as it always does).
NO_QUANTIZATION_FLAG = frozenset({"none", "auto", "bf16", "fp16"})
NO_KV_CACHE_QUANT = frozenset({"none", "auto"})
# Precision labels that are not vLLM methods (`--quantization` takes only the names in
# vLLM's QUANTIZATION_METHODS): with no flag vLLM would serve the checkpoint as it is, so
# an "int8" recipe on a plain checkpoint would measure the unquantized model under that
# label. They are refused, pointing at the method vLLM really uses for such checkpoints.
_PRECISION_LABELS = {
    "int8": "compressed-tensors (an llm-compressor INT8 W8A8 checkpoint)",
    "int4": "awq, gptq, awq_marlin or gptq_marlin (an INT4 W4A16 checkpoint)",
}


def quant_method_problem(method: str) -> str | None:
    """Why ``method`` cannot be a quant.method, or None (names vLLM does not know are
    checked against the installed vLLM by vllm_args, with the nearest valid name)."""
    label = str(method).strip().lower()
    if label not in _PRECISION_LABELS:
        return None
    return (
        f"'{method}' is a precision, not a vLLM quantization method: no --quantization "
        "would be passed and vLLM would serve the checkpoint unchanged (unquantized unless "
        f"it already is {label}) under this label. Name the checkpoint's scheme instead, "
        f"e.g. {_PRECISION_LABELS[label]}, or 'auto' to let vLLM read it from the "
        "checkpoint's config"
    )


# YAML reads `parent_id: 12345678` or `vllm: 0.32` as numbers: these fields are text.
Str = Annotated[str, BeforeValidator(scalar_to_str)]


class StrictModel(BaseModel):
    """A section that refuses unknown keys (a typo must not be silently ignored)."""

    model_config = ConfigDict(extra="forbid")


class Hardware(StrictModel):
    """Where the recipe runs: vendor, GPU model and count, memory per GPU."""

    vendor: Literal["nvidia", "amd", "cpu"]
    gpu_type: Str | None = None
    count: int = Field(default=1, ge=1)
    memory_gb_per_gpu: float | None = Field(default=None, gt=0)


class Quant(StrictModel):
    """Quantization: vLLM's --quantization method and the KV cache dtype."""

    method: Str = "none"
    kv_cache_quant: Str = "none"

    @field_validator("method", "kv_cache_quant", mode="before")
    @classmethod
    def _null_is_none(cls, value: Any) -> Any:
        # `method: null` and `method: none` mean the same thing to a reader.
        return "none" if value is None else value

    @field_validator("method")
    @classmethod
    def _a_real_method(cls, value: str) -> str:
        problem = quant_method_problem(value)
        if problem:
            raise ValueError(problem)
        return value


class Gates(StrictModel):
    """What a gate test checks: accuracy floor and scorer, tolerances, SLO."""

    # Above 1 is allowed on purpose: such a floor can never pass, which is a valid way
    # to force a failing gate while debugging.
    accuracy_floor: float | None = Field(default=None, ge=0)
    accuracy_scorer: Literal["exact", "contains", "regex", "agreement"] | None = None
    throughput_tolerance: float | None = Field(default=None, ge=0, lt=1)
    # The largest latency slow-down that does not matter, as a fraction: one number for
    # every judged latency metric, or per metric (ttft_p99_ms: 0.5, ...); metrics left out
    # use metric_registry's defaults.
    latency_tolerance: (
        Annotated[float, Field(ge=0, le=10)] | dict[str, Annotated[float, Field(ge=0, le=10)]]
    ) = Field(default_factory=dict)
    slo: SLO = Field(default_factory=SLO)

    @field_validator("latency_tolerance")
    @classmethod
    def _known_latency_metrics(cls, value: float | dict[str, float]) -> float | dict[str, float]:
        for name in value if isinstance(value, dict) else ():
            if name not in LATENCY_NAMES:
                near = nearest(name, LATENCY_NAMES)
                hint = f" (did you mean {near}?)" if near else ""
                raise ValueError(
                    f"unknown latency metric {name!r}{hint}; known: {', '.join(LATENCY_NAMES)}"
                )
        return value

    def latency_tolerances(self) -> dict[str, float]:
        """The tolerance set for each latency metric (those the recipe sets)."""
        value = self.latency_tolerance
        if isinstance(value, dict):
            return dict(value)
        return dict.fromkeys(LATENCY_NAMES, float(value))


class Lineage(StrictModel):
    """Where a tuned recipe came from: generation, parent recipe, why it changed."""

    generation: int = Field(default=0, ge=0)
    parent_id: Str | None = None
    rationale: Str | None = None


class MeasuredWith(StrictModel):
    """The setup a baseline was measured on (vLLM, pytest-forge, hardware, backend, date)."""

    vllm: Str
    pytest_forge: Str
    hardware: Str
    backend: Str
    date: Str


class Baseline(StrictModel):
    """One workload's committed measurement: medians, per-repeat samples, spread."""

    output_throughput: float = Field(ge=0)
    request_throughput: float | None = Field(default=None, ge=0)
    ttft_p99_ms: float | None = Field(default=None, ge=0)
    tpot_p99_ms: float | None = Field(default=None, ge=0)
    itl_p99_ms: float | None = Field(default=None, ge=0)
    e2el_p99_ms: float | None = Field(default=None, ge=0)
    accuracy: float | None = Field(default=None, ge=0, le=1)
    goodput: float | None = Field(default=None, ge=0)
    repeats: int = Field(ge=1)
    cv: float = Field(ge=0)
    measured_with: MeasuredWith
    # Every judged metric's value in each repeat (metric_registry.JUDGED), so the verdict
    # can test the change against the baseline's own spread. Older files have medians only.
    samples: dict[str, list[Annotated[float, Field(ge=0)]]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _medians_match_samples(self) -> Baseline:
        # The verdict reads the samples: a median edited by hand beside them would be
        # silently ignored, so the two must agree (up to the 4-decimal rounding of both).
        for metric, values in self.samples.items():
            if metric not in JUDGED_BY_NAME:
                raise field_error(f"samples.{metric}", f"unknown metric {metric!r}")
            median = getattr(self, metric, None)
            if not values or median is None:
                continue
            expected = statistics.median(values)
            if abs(median - expected) > 0.01 + 1e-3 * abs(expected):
                raise field_error(
                    metric,
                    f"{median} is not the median of its samples ({expected:g}): baselines are "
                    "recorded by --forge-update-baselines, not edited by hand",
                )
        return self

    def values(self, metric: str) -> list[float]:
        """The baseline's per-repeat values of ``metric``, else its median alone, else []."""
        if self.samples.get(metric):
            return list(self.samples[metric])
        median = getattr(self, metric, None)
        return [float(median)] if isinstance(median, (int, float)) else []
