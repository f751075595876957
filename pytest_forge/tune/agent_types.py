"""The agent contract: what a tuning agent is given (context, history) and what it returns.

Plain data and one Protocol, no I/O, so the tuner, the run records and every agent share
them without importing one another.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

if TYPE_CHECKING:
    from pytest_forge.hardware import HostHardware
    from pytest_forge.recipe import Recipe
    from pytest_forge.tune.search_space import SearchSpace

__all__ = [
    "Agent",
    "AgentUsage",
    "HistoryEntry",
    "Proposal",
    "ProposalContext",
    "Status",
    "snippet",
]

Status = Literal["baseline", "kept", "rejected", "invalid", "crashed"]
SNIPPET_CHARS = 400


@dataclass(frozen=True)
class Proposal:
    """One mutation of the best recipe: dotted keys to new values, and why."""

    rationale: str
    changes: dict[str, Any]
    # What the validation read differently from the answer ("max_num_seqs read as
    # config.max_num_seqs"); the experiment's record keeps them.
    notes: tuple[str, ...] = ()


@dataclass
class AgentUsage:
    """What an agent has spent so far: calls, tokens and dollars (0 when unknown)."""

    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0

    def add(self, input_tokens: int = 0, output_tokens: int = 0, cost_usd: float = 0.0) -> None:
        """Count one call and what it cost."""
        self.calls += 1
        self.input_tokens += input_tokens
        self.output_tokens += output_tokens
        self.cost_usd += cost_usd


@dataclass(frozen=True)
class HistoryEntry:
    """One finished experiment as the agent sees it."""

    exp: int
    recipe_id: str  # the candidate's content hash
    changes: dict[str, Any]
    rationale: str
    status: Status
    score: float | None = None
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)  # per workload headline
    reason: str | None = None  # why rejected / the error snippet of a failure


@dataclass
class ProposalContext:
    """Everything an agent may base its next proposal on."""

    recipe: Recipe  # the best so far: proposals are mutations of it
    hardware: HostHardware
    hardware_class: str
    search_space: SearchSpace
    history: list[HistoryEntry] = field(default_factory=list)
    objective: str = "output_throughput"
    tried_hashes: set[str] = field(default_factory=set)
    layer: int = 1  # the tuning layer (tune/layers.py); search_space holds its keys only


@runtime_checkable
class Agent(Protocol):
    """A tuning agent: proposes one validated mutation per call."""

    name: str
    usage: AgentUsage

    def propose(self, ctx: ProposalContext) -> Proposal:
        """A validated proposal, or AgentError(reason)."""
        ...


def snippet(text: str | None, limit: int = SNIPPET_CHARS) -> str:
    """``text`` on one line, at most ``limit`` characters, keeping its end."""
    text = " ".join((text or "").split())
    # The end of an error log says what went wrong; keep that.
    return text if len(text) <= limit else "..." + text[-(limit - 3) :]
