"""A tune's layers at run time: each layer's search space, cut from the playbook's class space
(layer 2 gated by the quantization layer's own lookup), built once per run and kept in the
run's ``layers.json``; and :class:`TuneLayers`, what the Tuner asks of its layers.

Keeping them with the run means a resumed tune proposes from the spaces it started with
(layer 2's depends on a Hub lookup that may answer differently tomorrow), and the notes on
what each layer left out, and why, stay with the run for its report.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from pytest_forge.fileio import atomic_write
from pytest_forge.tune.layers import (
    LAYER_CONFIG,
    LAYER_KERNELS,
    LAYER_NAMES,
    LAYER_QUANT,
    SCAFFOLDED_NOTE,
    LayerDecision,
    LayerPlan,
    LayerSpace,
    LayerSpaces,
    decide_layer,
    layer_label,
    layer_of,
    layer_problem,
    record_layer,
    restrict,
    unrestricted_spaces,
)
from pytest_forge.tune.search_space import ParamSpec, SearchSpace

LAYERS_FILE = "layers.json"


class QuantLayerLike(Protocol):
    """What the quantization layer's builder returns (``quant_space.QuantLayer``)."""

    @property
    def params(self) -> Mapping[str, ParamSpec]:
        """Layer 2's parameters: only values that can boot here."""
        ...

    @property
    def notes(self) -> Sequence[str]:
        """What was left out, and why."""
        ...


def config_layer(space: SearchSpace) -> LayerSpace:
    """Layer 1: the playbook space's serving keys; the rest is named as moved to its layer."""
    moved = [k for k in space.params if layer_of(k) != LAYER_CONFIG]
    notes = (
        ("left to later layers: " + ", ".join(f"{k} ({layer_label(layer_of(k))})" for k in moved),)
        if moved
        else ()
    )
    return LayerSpace(restrict(space, LAYER_CONFIG), notes)


def quant_layer(space: SearchSpace, built: QuantLayerLike | None) -> LayerSpace:
    """Layer 2: the quantization layer's params (only values that can boot here; its notes
    say what the gates left out and why) in the playbook's order; without a builder
    (``built`` None), the playbook's ``quant.*`` keys as they are."""
    playbook = restrict(space, LAYER_QUANT)
    if built is None:
        return LayerSpace(playbook, ())
    offered = dict(built.params)
    params = {k: offered.pop(k) for k in playbook.params if k in offered}
    params.update(offered)  # keys the playbook does not list (a pre-quantized `model`)
    return LayerSpace(SearchSpace(params=params), tuple(built.notes))


def kernels_layer(space: SearchSpace) -> LayerSpace:
    """Layer 3: scaffolded, so empty; the playbook's kernel switches are named as waiting."""
    waiting = [k for k in space.params if layer_of(k) == LAYER_KERNELS]
    notes = [SCAFFOLDED_NOTE]
    if waiting:
        notes.append(f"the playbook's kernel switches wait for it: {', '.join(waiting)}")
    return LayerSpace(SearchSpace(params={}), tuple(notes))


def playbook_layer_spaces(
    space: SearchSpace, quant: Callable[[], QuantLayerLike] | None = None
) -> LayerSpaces:
    """Each layer's space from a playbook class space; ``quant`` builds layer 2's gated
    params (``quant_space.quant_layer_space`` bound to the recipe and hardware), called only
    when layer 2 is asked for."""

    def spaces(layer: int) -> LayerSpace:
        if layer == LAYER_CONFIG:
            return config_layer(space)
        if layer == LAYER_QUANT:
            return quant_layer(space, quant() if quant is not None else None)
        return kernels_layer(space)

    return spaces


# -- kept with the run --------------------------------------------------------------------
def _to_json(space: LayerSpace) -> dict[str, Any]:
    params = None
    if space.space is not None:
        params = {k: v.model_dump(mode="json") for k, v in space.space.params.items()}
    return {"params": params, "notes": list(space.notes)}


def _from_json(data: Any) -> LayerSpace | None:
    if not isinstance(data, Mapping) or not isinstance(data.get("params"), Mapping):
        return None
    try:
        space = SearchSpace.model_validate({"params": data["params"]})
    except ValueError:
        return None  # an unreadable entry is built again
    notes = data.get("notes")
    return LayerSpace(space, tuple(str(n) for n in notes) if isinstance(notes, list) else ())


class RunLayerSpaces:
    """A run's layer spaces: each built once (by ``build``) and kept in ``layers.json``
    under ``run_dir``; a space already kept there is read back instead of built again.
    ``keep=False`` (a dry run) reads the file but writes nothing."""

    def __init__(self, build: LayerSpaces, run_dir: Path | None, *, keep: bool = True) -> None:
        self._build = build
        self._keep = keep
        self._path = Path(run_dir) / LAYERS_FILE if run_dir is not None else None
        self._spaces: dict[int, LayerSpace] = {}
        self._stored = self._read()

    def __call__(self, layer: int) -> LayerSpace:
        """Layer ``layer``'s space (built and stored on first use)."""
        if layer not in self._spaces:
            kept = _from_json(self._stored.get(str(layer)))
            if kept is None:
                kept = self._build(layer)
                self._store(layer, kept)
            self._spaces[layer] = kept
        return self._spaces[layer]

    def _read(self) -> dict[str, Any]:
        if self._path is None or not self._path.is_file():
            return {}
        try:
            data = json.loads(self._path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        layers = data.get("layers") if isinstance(data, dict) else None
        return dict(layers) if isinstance(layers, dict) else {}

    def _store(self, layer: int, space: LayerSpace) -> None:
        # Unrestricted (None) spaces come from Tuners built without a playbook: not kept,
        # so a later run with one restricts as it should.
        if self._path is None or space.space is None or not self._keep:
            return
        self._stored[str(layer)] = {"name": LAYER_NAMES.get(layer, "?"), **_to_json(space)}
        text = json.dumps({"layers": self._stored}, indent=2, ensure_ascii=False)
        atomic_write(self._path, text + "\n")


__all__ = [
    "LAYERS_FILE",
    "QuantLayerLike",
    "RunLayerSpaces",
    "TuneLayers",
    "config_layer",
    "kernels_layer",
    "playbook_layer_spaces",
    "quant_layer",
]


class TuneLayers:
    """A tune's layers: its plan and its spaces, and what the Tuner asks of them."""

    def __init__(self, plan: LayerPlan, spaces: LayerSpaces) -> None:
        self.plan = plan
        self.spaces = spaces

    @classmethod
    def for_run(
        cls,
        options: Any,
        search_space: SearchSpace | None,
        layer_spaces: LayerSpaces | None,
        run_dir: Path | None,
    ) -> TuneLayers:
        """The layers of a run: ``layer_spaces`` when given, else cut from ``search_space``
        (None: layer 1 unrestricted, as a Tuner without a playbook space always was)."""
        if layer_spaces is None:
            layer_spaces = (
                playbook_layer_spaces(search_space)
                if search_space is not None
                else unrestricted_spaces
            )
        return cls(LayerPlan.from_options(options), RunLayerSpaces(layer_spaces, run_dir))

    def decide(self, records: Sequence[Mapping[str, Any]], best_score: float) -> LayerDecision:
        """The layer of the next experiment, from the stored records (baseline included)."""
        done = [r for r in records if r.get("status") != "baseline"]
        return decide_layer(self.plan, done, self.spaces, best_score=best_score)

    def entering(self, decision: LayerDecision, records: Sequence[Mapping[str, Any]]) -> str | None:
        """A note for the first experiment of a layer reached after others: why they ended."""
        layer = decision.layer
        if layer is None or not decision.passed:
            return None
        if any(r.get("status") != "baseline" and record_layer(r) == layer for r in records):
            return None
        return f"first experiment of {layer_label(layer)}: " + "; ".join(decision.passed)

    def space(self, layer: int) -> SearchSpace | None:
        """The search space the agent is given in ``layer`` (None: unrestricted)."""
        return self.spaces(layer).space

    def problem(self, changes: Iterable[str], layer: int) -> str | None:
        """Why these changed keys may not be proposed in ``layer`` (None: they may)."""
        return layer_problem(changes, layer, self.spaces(layer))
