"""Where the bench sends requests: a server we booted, or one given with --forge-endpoint."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Endpoint:
    base_url: str  # e.g. "http://127.0.0.1:8000" (no trailing /v1)
    model: str | None = None  # None: the bench asks /v1/models
    # Read from the environment by the caller; never written anywhere.
    api_key: str | None = field(default=None, repr=False)
    # True when pytest-forge booted the server (so dev endpoints like /reset_prefix_cache exist)
    managed: bool = False

    @property
    def url(self) -> str:
        return self.base_url.rstrip("/")
