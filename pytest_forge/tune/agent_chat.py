"""The LLM agents' shared loop: ask, validate the answer, re-ask with the refusal reason.

A provider subclass only sends one chat request (:meth:`ChatAgent._complete`); transport
retries (timeouts, 429, 5xx) are its SDK's business. This loop retries what an SDK cannot
see: an answer that is not the JSON asked for, or a proposal the validation refuses, is
sent back with the reason, at most :data:`MAX_ATTEMPTS` asks in all.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from pytest_forge.errors import AgentError
from pytest_forge.tune.agent_check import check_proposal
from pytest_forge.tune.agent_prompt import build_prompt, parse_answer
from pytest_forge.tune.agent_types import AgentUsage, Proposal, ProposalContext

if TYPE_CHECKING:
    from pytest_forge.tune.playbook import Playbook

__all__ = ["MAX_ANSWER_TOKENS", "MAX_ATTEMPTS", "ChatAgent", "redact"]

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 3  # one ask + two re-asks with the refusal reason
MAX_ANSWER_TOKENS = 1024


def redact(text: str, secrets: tuple[str, ...]) -> str:
    """``text`` with every secret (4 characters or more) replaced by ``[redacted]``."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "[redacted]")
    return text


class ChatAgent:
    """Base of the LLM agents: the ask → validate → re-ask loop around one chat call."""

    name: str
    usage: AgentUsage
    playbook: Playbook
    _secrets: tuple[str, ...] = ()

    def _complete(self, system: str, messages: list[dict[str, str]]) -> str:
        """The assistant's text for one chat request (provider-specific)."""
        raise NotImplementedError

    def propose(self, ctx: ProposalContext) -> Proposal:
        """Ask for one mutation until one passes validation, at most MAX_ATTEMPTS times."""
        system, user = build_prompt(ctx, self.playbook)
        messages = [{"role": "user", "content": user}]
        reason = ""
        for attempt in range(1, MAX_ATTEMPTS + 1):
            text = self._complete(system, messages)
            try:
                proposal, refusal = check_proposal(ctx, parse_answer(text))
            except AgentError as e:
                proposal, refusal = None, str(e)
            if proposal is not None:
                return proposal
            reason = refusal or "refused"
            log.info("%s: attempt %d refused: %s", self.name, attempt, reason)
            messages += [
                {"role": "assistant", "content": text or "(empty)"},
                {
                    "role": "user",
                    "content": f"Refused: {reason}\nPropose a different, legal mutation. "
                    "Answer with the JSON object only.",
                },
            ]
        raise AgentError(
            f"{self.name}: no acceptable proposal after {MAX_ATTEMPTS} attempts: {reason}"
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"
