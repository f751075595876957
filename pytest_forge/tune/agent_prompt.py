"""The LLM agents' conversation: the prompt asking for one mutation, and the answer's parsing.

The system message is the rules plus the playbook; the user message is the hardware, the
legal search space, the best recipe and the experiment history. The answer must be one
strict JSON object ``{"rationale": ..., "changes": {...}}``; anything else raises an
AgentError whose text is sent back to the LLM.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

import yaml

from pytest_forge.errors import AgentError
from pytest_forge.tune.agent_types import HistoryEntry, Proposal, ProposalContext, snippet
from pytest_forge.tune.hardware_classes import classify_hardware

if TYPE_CHECKING:
    from pytest_forge.tune.playbook import Playbook

__all__ = ["build_prompt", "parse_answer"]


_SYSTEM = """\
You are an expert vLLM performance engineer tuning a deployment recipe. Each turn you \
propose exactly ONE mutation of the best recipe so far (usually one knob; two only when \
they only make sense together). The mutation is booted and benchmarked; it is kept if it \
beats the best score and every accuracy floor and SLO holds, otherwise reverted.

Rules:
- Use only keys and values listed in the legal search space for this hardware.
- Never repeat an experiment from the history, never repeat a change set that crashed.
- Ground the rationale in the evidence (history metrics) and the playbook heuristics.

Answer with ONE JSON object and nothing else, exactly this shape:
{"rationale": "<one or two sentences>", "changes": {"config.max_num_seqs": 128}}

The playbook follows.

"""


def _yaml_block(data: Any, compact: bool = True) -> str:
    # Compact: leaf lists and maps in flow style, so value lists and change sets stay on
    # one line each; the recipe reads better as a plain block.
    flow = None if compact else False
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=flow, width=100).rstrip()


def _round(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 4 if abs(value) < 10 else 1)
    if isinstance(value, dict):
        return {k: _round(v) for k, v in value.items()}
    return value


def _history_data(history: list[HistoryEntry]) -> list[dict[str, Any]]:
    out = []
    for entry in history:
        item: dict[str, Any] = {"exp": entry.exp, "status": entry.status}
        item["score"] = _round(entry.score)
        item["changes"] = dict(entry.changes)
        if entry.rationale:
            item["rationale"] = entry.rationale
        if entry.metrics:
            item["metrics"] = _round(dict(entry.metrics))
        if entry.reason:
            item["reason"] = snippet(entry.reason)
        out.append(item)
    return out


def build_prompt(ctx: ProposalContext, playbook: Playbook) -> tuple[str, str]:
    """The (system, user) messages asking for one mutation as strict JSON."""
    system = _SYSTEM + playbook.text.strip() + "\n"
    _, note = classify_hardware(ctx.hardware)
    data = ctx.recipe.model_dump(mode="json", exclude_none=True)
    recipe = {s: data[s] for s in ("model", "config", "compilation", "quant", "env") if data.get(s)}
    history = _history_data(ctx.history)
    parts = [
        f"Hardware: {ctx.hardware.describe()}",
        f"Hardware class: {ctx.hardware_class}" + (f" ({note})" if note else ""),
        f"Objective (higher score is better): {ctx.objective}",
        "",
        f"Legal search space for {ctx.hardware_class} in tuning layer {ctx.layer} "
        "(1 serving config, 2 quantization; dotted recipe keys):",
        _yaml_block(ctx.search_space.to_prompt_dict()),
        "",
        f"Best recipe so far (content hash {ctx.recipe.content_hash}):",
        _yaml_block(recipe, compact=False),
        "",
        "Experiment history (oldest first; status baseline|kept|rejected|invalid|crashed):",
        _yaml_block(history) if history else "(none yet)",
        "",
        "Propose ONE mutation of the best recipe. Answer with the JSON object only: "
        '{"rationale": "...", "changes": {"<dotted key>": <value>}}',
    ]
    return system, "\n".join(parts)


_FENCED_RE = re.compile(r"\A```(?:json|JSON)?[ \t]*\n(?P<body>.*?)\n?```\Z", re.S)


def parse_answer(text: str) -> Proposal:
    """A strict-JSON answer (optionally inside one ```json fence) as a Proposal."""
    stripped = (text or "").strip()
    if not stripped:
        raise AgentError("the answer is empty: expected a JSON object")
    fenced = _FENCED_RE.match(stripped)
    if fenced:
        stripped = fenced.group("body").strip()
    try:
        data = json.loads(stripped)
    except json.JSONDecodeError as e:
        raise AgentError(
            f"the answer is not valid JSON ({e.msg} at line {e.lineno} column {e.colno}): "
            "answer with the JSON object only, no prose"
        ) from None
    if not isinstance(data, dict):
        raise AgentError(f"the answer must be a JSON object, not {type(data).__name__}")
    missing = [k for k in ("rationale", "changes") if k not in data]
    if missing:
        raise AgentError(f"the answer lacks {', '.join(repr(k) for k in missing)}")
    extra = sorted(set(data) - {"rationale", "changes"})
    if extra:
        raise AgentError(
            f"unexpected key(s) {', '.join(repr(k) for k in extra)}: "
            "the answer has exactly 'rationale' and 'changes'"
        )
    rationale, changes = data["rationale"], data["changes"]
    if not isinstance(rationale, str) or not rationale.strip():
        raise AgentError("'rationale' must be a non-empty string")
    if not isinstance(changes, dict):
        raise AgentError(
            f"'changes' must be an object of dotted key -> value, not {type(changes).__name__}"
        )
    for key, value in changes.items():
        if value is not None and not isinstance(value, (str, int, float, bool)):
            raise AgentError(
                f"'changes'.'{key}' must be a string, number or boolean, not {type(value).__name__}"
            )
    return Proposal(rationale=rationale.strip(), changes=dict(changes))
