"""A recipe's tune layers built from the pytest session: each layer's search space on this
hardware (layer 2 through the quantization layer's gates and Hub lookup), and the
``--forge-dry-run`` plan that shows them without booting or writing anything."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pytest_forge.recipe import Recipe
    from pytest_forge.session import ForgeSession
    from pytest_forge.tune.layer_spaces import QuantLayerLike
    from pytest_forge.tune.layers import LayerSpaces
    from pytest_forge.tune.search_space import SearchSpace
    from pytest_forge.tune.store import RunStore


def layer_spaces(
    session: ForgeSession, recipe: Recipe, hw_class: str, search_space: SearchSpace
) -> LayerSpaces:
    """Each tuning layer's space for ``recipe`` on this host: layer 1 and 3 cut from the
    playbook's class space, layer 2 gated by ``quant_space.quant_layer_space`` (built only
    when a tune reaches it)."""
    from pytest_forge.tune.layer_spaces import playbook_layer_spaces

    def quant() -> QuantLayerLike:
        from pytest_forge.tune.hub_lookup import HubLookup
        from pytest_forge.tune.quant_space import quant_layer_space

        return quant_layer_space(
            recipe,
            session.hardware,
            hw_class,
            playbook_space=search_space,
            lookup=HubLookup.from_env(),  # HF_ENDPOINT, HF_TOKEN, HF_HUB_OFFLINE
        )

    return playbook_layer_spaces(search_space, quant)


def dry_run_plan(
    session: ForgeSession,
    recipe: Recipe,
    agent_spec: str,
    agent_why: str,
    store: RunStore | None,
) -> str:
    """The plan of ``recipe``'s tune (of the run ``store`` a resume would continue, when
    given): nothing booted, no run created, nothing written to the run or to recipes/."""
    from pytest_forge.tune.agent import make_agent
    from pytest_forge.tune.dry_run import PlanInputs, render_plan
    from pytest_forge.tune.hardware_classes import hardware_class
    from pytest_forge.tune.layer_spaces import RunLayerSpaces
    from pytest_forge.tune.playbook import load_playbook
    from pytest_forge.tune.replay import replay
    from pytest_forge.tune.settings import fresh_settings, resumed_settings

    hardware = session.hardware
    if store is not None:
        settings = resumed_settings(
            session.config,
            store.config,
            store.path,
            agent_spec,
            hardware.describe(),
            session.vllm_version,
        )
    else:
        settings = fresh_settings(session.config, agent_spec)
    playbook = load_playbook(settings.playbook)
    hw_class = hardware_class(hardware)
    space = playbook.search_space(hw_class)
    build = layer_spaces(session, recipe, hw_class, space)
    # A resume's spaces are read from its layers.json when kept there; nothing is written.
    spaces = RunLayerSpaces(build, store.path if store is not None else None, keep=False)
    records = store.experiments() if store is not None else []
    standing = (
        replay(records, recipe, settings.options.objective, store.path)
        if store is not None
        else None
    )
    return render_plan(
        PlanInputs(
            recipe=standing.best if standing is not None else recipe,
            agent=make_agent(settings.agent, playbook, os.environ),
            agent_spec=agent_spec,
            agent_why=agent_why,
            options=settings.options,
            hardware=hardware,
            hardware_class=hw_class,
            spaces=spaces,
            records=records,
            best_score=standing.best_score if standing is not None else 1.0,
            run_dir=str(store.path) if store is not None else None,
        )
    )


__all__ = ["dry_run_plan", "layer_spaces"]
