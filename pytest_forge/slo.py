"""Service-level objectives shared by recipes (gates) and workloads (sidecars)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class SLO(BaseModel):
    """Latency objectives in milliseconds.

    As a gate, each p99 of the run must be at most its value. For goodput (as in vLLM's
    `--goodput`), a request is good when its own TTFT, TPOT and E2EL are each at most the
    value; ITL has no per-request value and only gates.
    """

    model_config = ConfigDict(extra="forbid")

    ttft_p99_ms: float | None = Field(default=None, gt=0)
    tpot_p99_ms: float | None = Field(default=None, gt=0)
    itl_p99_ms: float | None = Field(default=None, gt=0)
    e2el_p99_ms: float | None = Field(default=None, gt=0)

    def is_empty(self) -> bool:
        """True when no objective is set."""
        return all(v is None for v in self.model_dump().values())

    def merged(self, override: SLO | None) -> SLO:
        """This SLO with every value set in `override` taking precedence."""
        if override is None:
            return self
        data = self.model_dump()
        data.update({k: v for k, v in override.model_dump().items() if v is not None})
        return SLO(**data)
