"""A tune's options and the limits they set: experiment budget, time, spend, the layers.

:func:`stop_reason` decides whether the run's limits allow another experiment; time and
spend count across resumes, so a resumed run stops where the first would have. Patience
counts per layer (``layers.py`` decides when a layer is done).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pytest_forge.errors import ForgeError
from pytest_forge.tune import objective as obj


@dataclass(frozen=True)
class TuneOptions:
    """How one recipe is tuned: how many experiments, for what, and when a change counts."""

    budget: int  # candidate experiments per recipe (the baseline is not one)
    max_hours: float | None = None  # active tuning time, counted across resumes
    max_dollars: float | None = None  # agent spend, counted across resumes
    min_improvement: float = 0.02
    objective: str = "throughput"
    patience: int = 3  # a layer converged after this many experiments in a row without a keep
    noise_sigmas: float = 2.0
    # The layers (layers.py): which run, and at most how many experiments each may use.
    skip_config: bool = False
    skip_quant: bool = False
    start_layer: int = 1
    max_config_experiments: int | None = None
    max_quant_experiments: int | None = None

    def __post_init__(self) -> None:
        obj.objective(self.objective)  # raises, naming the valid choices
        problem = layer_options_problem(
            skip_config=self.skip_config,
            skip_quant=self.skip_quant,
            start_layer=self.start_layer,
            max_config_experiments=self.max_config_experiments,
            max_quant_experiments=self.max_quant_experiments,
        )
        if problem:
            raise ForgeError(problem)
        if self.budget < 0:
            raise ForgeError(f"tune budget must be >= 0, got {self.budget}")
        if self.patience < 1:
            raise ForgeError(f"tune patience must be >= 1, got {self.patience}")
        if self.min_improvement < 0:
            raise ForgeError(f"min improvement must be >= 0, got {self.min_improvement}")
        if self.noise_sigmas < 0:
            raise ForgeError(f"noise sigmas must be >= 0, got {self.noise_sigmas}")
        if self.max_hours is not None and self.max_hours <= 0:
            raise ForgeError(f"max hours must be > 0, got {self.max_hours}")
        if self.max_dollars is not None and self.max_dollars < 0:
            raise ForgeError(f"max dollars must be >= 0, got {self.max_dollars}")


def layer_options_problem(
    *,
    skip_config: bool,
    skip_quant: bool,
    start_layer: Any,
    max_config_experiments: Any,
    max_quant_experiments: Any,
) -> str | None:
    """What is wrong with the layer options, naming the option (None: nothing)."""
    if isinstance(start_layer, bool) or start_layer not in (1, 2, 3):
        return (
            "--forge-start-layer must be 1 (config), 2 (quantization) or 3 (kernels), "
            f"got {start_layer!r}"
        )
    for flag, cap in (
        ("--forge-max-config-experiments", max_config_experiments),
        ("--forge-max-quant-experiments", max_quant_experiments),
    ):
        if cap is not None and (not isinstance(cap, int) or isinstance(cap, bool) or cap < 1):
            return f"{flag} must be an integer >= 1, got {cap!r}"
    config = not skip_config and start_layer <= 1
    quant = not skip_quant and start_layer <= 2
    if not (config or quant):
        given = [
            flag
            for flag, on in (
                ("--forge-skip-config", skip_config),
                ("--forge-skip-quant", skip_quant),
                (f"--forge-start-layer {start_layer}", start_layer > 1),
            )
            if on
        ]
        return (
            f"{' with '.join(given)} skips every layer: layer 3 (kernels) is scaffolded and "
            "proposes nothing yet, so nothing would be tuned; keep layer 1 (config) or "
            "layer 2 (quantization)"
        )
    return None


def stop_reason(
    options: TuneOptions,
    slot: int,
    done: Sequence[Mapping[str, Any]],
    *,
    elapsed_s: float,
    spent_usd: float,
) -> str | None:
    """Why experiment ``slot`` must not run (a limit of the run is reached), or None when
    it may. Convergence is per layer: see ``layers.decide_layer``.

    ``done`` is the stored candidate experiments (the baseline is not one), oldest first.
    """
    o = options
    if len(done) >= o.budget or slot > o.budget:
        return f"budget of {o.budget} experiments used ({len(done)} run)"
    if o.max_hours is not None and elapsed_s >= o.max_hours * 3600:
        return (
            f"time limit of {o.max_hours:g} h reached ({elapsed_s / 3600:.2f} h of tuning so far)"
        )
    if o.max_dollars is not None and spent_usd >= o.max_dollars:
        return f"budget of ${o.max_dollars:.2f} spent (${spent_usd:.2f} on agent calls)"
    return None


__all__ = ["TuneOptions", "layer_options_problem", "stop_reason"]
