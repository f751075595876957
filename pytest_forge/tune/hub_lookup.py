"""Pre-quantized checkpoints of a model on the Hugging Face Hub, found with huggingface_hub.

For ``Qwen/Qwen2.5-7B-Instruct`` the lookup searches the Hub (per trusted author) for
models named ``Qwen2.5-7B-Instruct`` plus quantization markers only (``-AWQ``,
``-GPTQ-Int4``, ``-FP8-dynamic``, ``-quantized.w8a8``, ...), so a fine-tune of another name
is never taken for the same model, and reads each candidate's config.json to learn how it
is quantized. Deterministic (sorted, capped) and bounded: every request has a short
timeout and no retries, and the first sign of no network ends the lookup with a note.

Environment: ``HF_ENDPOINT`` (the Hub, e.g. a mirror), ``HF_TOKEN`` (sent to it, never
logged; no other token source is used), ``HF_HUB_OFFLINE=1`` (skip the lookup),
``FORGE_HUB_AUTHORS`` (comma-separated authors whose checkpoints may be proposed; ``*``
for any; the model's own author always counts).
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pytest_forge import __version__
from pytest_forge.tune.checkpoint_quant import CheckpointQuant, from_config

__all__ = ["DEFAULT_AUTHORS", "HubCheckpoint", "HubLookup", "HubResult", "base_name"]

DEFAULT_ENDPOINT = "https://huggingface.co"
# Authors who publish vLLM-ready quantized checkpoints of many models.
DEFAULT_AUTHORS: tuple[str, ...] = ("RedHatAI", "neuralmagic", "hugging-quants")
OFFLINE = "Hub lookup skipped: offline (HF_HUB_OFFLINE or no network)"

# Name parts that say how a checkpoint was quantized; at least one METHOD part marks a
# quantized variant, the others only qualify it (FP8-dynamic, GPTQ-Int4, AWQ-INT4-g128).
_METHOD_PARTS = r"awq|gptq|fp8|int4|int8|w8a8|w4a16|w8a16|w4a8|quantized|nvfp4|mxfp4"
_QUALIFIERS = r"dynamic|static|marlin|4bit|8bit|g128|gs128|128g|e4m3|ptpc|kv|channelwise|block|sym"
_SUFFIX = re.compile(rf"[-_.]({_METHOD_PARTS}|{_QUALIFIERS})$", re.IGNORECASE)
_METHOD = re.compile(rf"^({_METHOD_PARTS})$", re.IGNORECASE)
_TRUE = ("1", "true", "yes", "on")


def _strip_markers(name: str) -> tuple[str, list[str]]:
    """``Qwen2.5-7B-Instruct-GPTQ-Int4`` -> (``Qwen2.5-7B-Instruct``, [``GPTQ``, ``Int4``])."""
    parts: list[str] = []
    while (match := _SUFFIX.search(name)) is not None:
        parts.insert(0, match.group(1))
        name = name[: match.start()]
    return name, parts


def base_name(model_id: str) -> str:
    """The model's name without its author and quantization markers."""
    return _strip_markers(model_id.rsplit("/", 1)[-1])[0]


@dataclass(frozen=True)
class HubCheckpoint:
    """A pre-quantized checkpoint found on the Hub and how its config.json says it is."""

    repo_id: str
    quant: CheckpointQuant


@dataclass
class HubResult:
    """What a lookup found (sorted), and notes on what it skipped or could not read."""

    checkpoints: list[HubCheckpoint] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


class _Offline(Exception):
    """The Hub cannot be reached: the rest of the lookup is skipped."""


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in _TRUE


class HubLookup:
    """Reads config.json files and searches models on a Hugging Face Hub endpoint."""

    def __init__(
        self,
        *,
        endpoint: str | None = None,
        token: str | None = None,
        authors: tuple[str, ...] | None = None,
        timeout_s: float = 5.0,
        deadline_s: float = 30.0,
        max_candidates: int = 6,
        offline: bool | None = None,
    ) -> None:
        self.endpoint = (endpoint or DEFAULT_ENDPOINT).rstrip("/")
        self._token = token or None  # private: never part of a repr, note or log
        self.authors = DEFAULT_AUTHORS if authors is None else authors
        self.timeout_s = timeout_s
        self.deadline_s = deadline_s
        self.max_candidates = max_candidates
        self.offline_reason: str | None = "HF_HUB_OFFLINE is set" if offline else None
        self._started = time.monotonic()  # of the current public call: its deadline

    @classmethod
    def from_env(cls, **kwargs: Any) -> HubLookup:
        """A lookup configured from HF_ENDPOINT, HF_TOKEN, HF_HUB_OFFLINE, FORGE_HUB_AUTHORS.

        Read now rather than from huggingface_hub's constants, which it reads once at
        import time.
        """
        raw = os.environ.get("FORGE_HUB_AUTHORS")
        authors = None if raw is None else tuple(a.strip() for a in raw.split(",") if a.strip())
        kwargs.setdefault("endpoint", os.environ.get("HF_ENDPOINT") or None)
        kwargs.setdefault("token", os.environ.get("HF_TOKEN") or None)
        kwargs.setdefault("authors", authors)
        kwargs.setdefault(
            "offline", _env_true("HF_HUB_OFFLINE") or _env_true("TRANSFORMERS_OFFLINE")
        )
        return cls(**kwargs)

    def __repr__(self) -> str:
        return f"HubLookup(endpoint={self.endpoint!r}, authors={list(self.authors)!r})"

    # -- requests ----------------------------------------------------------------------
    def _get(self, url: str, params: Mapping[str, Any] | None = None) -> Any:
        """One GET through huggingface_hub's session: JSON, HfHubHTTPError, or _Offline.

        Not HfApi.list_models: it retries 5xx with backoff for half a minute and has no
        timeout, and a tune must not wait on the Hub.
        """
        if self.offline_reason:
            raise _Offline(self.offline_reason)
        if time.monotonic() - self._started > self.deadline_s:
            self.offline_reason = f"the lookup took over {self.deadline_s:g} s"
            raise _Offline(self.offline_reason)
        from huggingface_hub import get_session
        from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled
        from huggingface_hub.utils import build_hf_headers, hf_raise_for_status

        # token=False: no token from huggingface_hub's own stores, only HF_TOKEN.
        headers = build_hf_headers(
            token=self._token or False, library_name="pytest-forge", library_version=__version__
        )
        try:
            response = get_session().get(
                url, params=dict(params or {}), headers=headers, timeout=self.timeout_s
            )
            hf_raise_for_status(response)
            return response.json()
        except HfHubHTTPError:
            raise
        except OfflineModeIsEnabled:
            self.offline_reason = "HF_HUB_OFFLINE is set"
        except Exception as exc:  # the transport's errors differ between versions
            names = " ".join(k.__name__ for k in type(exc).__mro__)
            if "Timeout" in names:
                self.offline_reason = f"no answer from {self.endpoint} within {self.timeout_s:g} s"
            elif isinstance(exc, ValueError):  # not JSON: not a Hub
                self.offline_reason = f"{self.endpoint} did not answer like a Hub ({exc})"
            else:
                self.offline_reason = f"cannot reach {self.endpoint} ({type(exc).__name__})"
        raise _Offline(self.offline_reason)

    def _redact(self, text: str) -> str:
        return text.replace(self._token, "***") if self._token else text

    def _http_note(self, what: str, exc: Exception) -> str:
        status = getattr(getattr(exc, "response", None), "status_code", None)
        hint = ""
        if status in (401, 403):
            hint = " (gated or private: set HF_TOKEN)" if not self._token else " (no access)"
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return self._redact(f"Hub lookup: {what}: HTTP {status}{hint}: {first}")

    # -- what the quant layer asks -----------------------------------------------------
    def checkpoint(self, repo_id: str) -> tuple[CheckpointQuant | None, str | None]:
        """How ``repo_id`` is quantized (its config.json on the Hub), or (None, why not)."""
        self._started = time.monotonic()
        return self._checkpoint(repo_id)

    def _checkpoint(self, repo_id: str) -> tuple[CheckpointQuant | None, str | None]:
        from huggingface_hub import hf_hub_url
        from huggingface_hub.errors import HfHubHTTPError

        url = hf_hub_url(repo_id, "config.json", endpoint=self.endpoint)
        try:
            data = self._get(url)
        except _Offline as exc:
            return None, f"{OFFLINE}: {exc}"
        except HfHubHTTPError as exc:
            return None, self._http_note(f"config.json of {repo_id}", exc)
        if not isinstance(data, Mapping):
            return None, f"Hub lookup: config.json of {repo_id} is not a JSON object"
        return from_config(data, "config.json on the Hub"), None

    def _search(self, base: str, author: str | None) -> list[str]:
        params: dict[str, Any] = {"search": base, "limit": 100}
        if author:
            params["author"] = author
        data = self._get(f"{self.endpoint}/api/models", params)
        items = data if isinstance(data, list) else []
        return [str(i.get("id") or i.get("modelId")) for i in items if isinstance(i, Mapping)]

    def _authors(self, model_id: str) -> list[str] | None:
        """Whose checkpoints count, in preference order; None for anyone's."""
        if "*" in self.authors:
            return None
        own = model_id.split("/", 1)[0] if "/" in model_id else None
        ordered = [own] if own else []
        return ordered + [a for a in self.authors if a.lower() != (own or "").lower()]

    def quantized_variants(self, model_id: str) -> HubResult:
        """Pre-quantized checkpoints of ``model_id``'s model: the trusted authors' first,
        then by name; at most ``max_candidates``, each with its config.json read."""
        from huggingface_hub.errors import HfHubHTTPError

        self._started = time.monotonic()
        result = HubResult()
        base = base_name(model_id)
        authors = self._authors(model_id)
        found: set[str] = set()
        try:
            for author in authors if authors is not None else [None]:
                found.update(self._search(base, author))
        except _Offline as exc:
            result.notes.append(f"{OFFLINE}: {exc}")
            return result
        except HfHubHTTPError as exc:
            result.notes.append(self._http_note(f"searching {base!r}", exc))
            return result
        rank = {a.lower(): i for i, a in enumerate(authors or [])}
        matches = sorted(
            (r for r in found if self._is_variant(r, base, model_id)),
            key=lambda r: (rank.get(r.split("/", 1)[0].lower(), len(rank)), r.lower()),
        )
        if len(matches) > self.max_candidates:
            result.notes.append(
                f"Hub lookup: {len(matches) - self.max_candidates} more quantized checkpoints "
                f"of {base} left out (at most {self.max_candidates}): "
                + ", ".join(matches[self.max_candidates :])
            )
        for repo_id in matches[: self.max_candidates]:
            quant, why = self._checkpoint(repo_id)
            if quant is None:
                result.notes.append(f"{repo_id} left out: {why}")
                if self.offline_reason:
                    break
            elif not quant.quantized:
                result.notes.append(f"{repo_id} left out: its config.json says it is not quantized")
            else:
                result.checkpoints.append(HubCheckpoint(repo_id, quant))
        if authors is not None:
            result.notes.append(
                f"Hub lookup searched {base!r} by {', '.join(authors)} "
                "(FORGE_HUB_AUTHORS sets the authors; * allows any)"
            )
        return result

    @staticmethod
    def _is_variant(repo_id: str, base: str, model_id: str) -> bool:
        """Same model name plus quantization markers only (not a fine-tune, not itself)."""
        if repo_id == model_id or "/" not in repo_id:
            return False
        stem, parts = _strip_markers(repo_id.split("/", 1)[1])
        return stem.lower() == base.lower() and any(_METHOD.match(p) for p in parts)
