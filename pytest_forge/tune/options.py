"""A tune's options and the limits they set: experiment budget, time, spend, patience.

:func:`stop_reason` is the one place that decides whether another experiment may run;
time and spend count across resumes, so a resumed run stops where the first would have.
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
    patience: int = 3  # converged after this many experiments in a row without a keep
    noise_sigmas: float = 2.0

    def __post_init__(self) -> None:
        obj.objective(self.objective)  # raises, naming the valid choices
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


def stop_reason(
    options: TuneOptions,
    slot: int,
    done: Sequence[Mapping[str, Any]],
    *,
    elapsed_s: float,
    spent_usd: float,
    best_score: float,
) -> str | None:
    """Why experiment ``slot`` must not run (a limit is reached), or None when it may.

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
    streak = 0
    for record in reversed(done):
        if record.get("status") == "kept":
            break
        streak += 1
    if streak >= o.patience:
        return (
            f"converged: {streak} experiments in a row without a keep (patience "
            f"{o.patience}, min improvement {o.min_improvement:.1%}); best score "
            f"{best_score:.3f}"
        )
    return None


__all__ = ["TuneOptions", "stop_reason"]
