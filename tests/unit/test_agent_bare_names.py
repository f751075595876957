"""The agent contract forgives an unambiguous bare name (``max_num_seqs`` for
``config.max_num_seqs``) with a note, and still refuses an ambiguous or unknown one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pytest_forge.tune.agent import Proposal, ProposalContext
from pytest_forge.tune.agent_chat import ChatAgent
from pytest_forge.tune.agent_check import check_proposal
from pytest_forge.tune.agent_types import AgentUsage
from pytest_forge.tune.search_space import ParamSpec, SearchSpace
from pytest_forge.tune.store import EXPERIMENTS
from tests.unit.agent_fixtures import CPU_HOST, PLAYBOOK, cpu_ctx
from tests.unit.test_tuner import RECIPE_YAML, Landscape, ScriptedAgent, make_tuner, new_store


@pytest.fixture
def recipe_path(tmp_path: Path) -> Path:
    path = tmp_path / "recipes" / "tiny.yaml"
    path.parent.mkdir()
    path.write_text(RECIPE_YAML)
    return path


def test_an_unambiguous_bare_name_is_read_as_its_key_with_a_note() -> None:
    checked, refusal = check_proposal(cpu_ctx(), Proposal("batch more", {"max_num_seqs": 64}))
    assert refusal is None and checked is not None
    assert checked.changes == {"config.max_num_seqs": 64}
    assert checked.notes == ("max_num_seqs read as config.max_num_seqs",)
    # A full key gets no note.
    checked, _ = check_proposal(cpu_ctx(), Proposal("x", {"config.max_num_seqs": 64}))
    assert checked is not None and checked.notes == ()


def test_a_bare_name_two_sections_share_is_refused_naming_both() -> None:
    space = SearchSpace(
        params={
            "config.max_num_seqs": ParamSpec(values=[16, 64], priority=1),
            "config.mode": ParamSpec(values=["a", "b"], priority=2),
            "compilation.mode": ParamSpec(values=[0, 3], priority=3),
        }
    )
    ctx = cpu_ctx()
    ctx = ProposalContext(ctx.recipe, CPU_HOST, "CPU", space, ctx.history, "tput", set())
    checked, refusal = check_proposal(ctx, Proposal("x", {"mode": 3}))
    assert checked is None and refusal is not None
    assert "'mode' is ambiguous" in refusal
    assert "config.mode or compilation.mode" in refusal
    assert "legal keys: config.max_num_seqs, config.mode, compilation.mode" in refusal


def test_an_unknown_name_is_refused_with_the_nearest_key() -> None:
    checked, refusal = check_proposal(cpu_ctx(), Proposal("x", {"max_num_seq": 64}))
    assert checked is None and refusal is not None
    assert "not in the CPU search space" in refusal
    assert "nearest valid name: 'config.max_num_seqs'" in refusal
    _, refusal = check_proposal(cpu_ctx(), Proposal("x", {"config.block_size": 32}))
    assert refusal is not None and "no close match" in refusal and "legal keys:" in refusal


def test_a_bare_name_and_its_full_key_together_are_refused() -> None:
    proposal = Proposal("x", {"max_num_seqs": 64, "config.max_num_seqs": 16})
    checked, refusal = check_proposal(cpu_ctx(), proposal)
    assert checked is None
    assert refusal == (
        "'max_num_seqs' and 'config.max_num_seqs' both name config.max_num_seqs: give it once"
    )


class CannedChat(ChatAgent):
    """A chat agent whose answers are scripted (no network)."""

    def __init__(self, answers: list[str]) -> None:
        self.name = "canned"
        self.usage = AgentUsage()
        self.playbook = PLAYBOOK
        self.answers = answers
        self.asked = 0

    def _complete(self, system: str, messages: list[dict[str, str]]) -> str:
        self.asked += 1
        return self.answers.pop(0)


def test_a_bare_name_costs_the_chat_agent_no_retry() -> None:
    answer = json.dumps({"rationale": "batch more", "changes": {"max_num_seqs": 64}})
    agent = CannedChat([answer])
    proposal = agent.propose(cpu_ctx())
    assert agent.asked == 1
    assert proposal.changes == {"config.max_num_seqs": 64}
    assert proposal.notes == ("max_num_seqs read as config.max_num_seqs",)


def test_the_note_reaches_the_run_store(tmp_path: Path, recipe_path: Path) -> None:
    note = "max_num_seqs read as config.max_num_seqs"
    proposal = Proposal("raise the cap", {"config.max_num_seqs": 256}, notes=(note,))
    store = new_store(tmp_path)
    tuner = make_tuner(recipe_path, store, ScriptedAgent([proposal]), Landscape())
    tuner.run_baseline()
    outcome = tuner.run_slot(1)
    assert outcome.status == "kept" and outcome.notes == [note]
    assert f"note: {note}" in outcome.summary()
    lines = (store.path / EXPERIMENTS).read_text().splitlines()
    assert json.loads(lines[1])["notes"] == [note]
    assert json.loads(lines[0])["notes"] == []  # the baseline read nothing into an answer
    # A resumed run reads the note back.
    resumed = make_tuner(recipe_path, store, ScriptedAgent([]), Landscape())
    assert resumed.run_slot(1).notes == [note]
