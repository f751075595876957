"""Recipes, hosts, contexts and a secret shared by the agent tests (test_agent*.py)."""

from __future__ import annotations

from typing import Any

from pytest_forge.hardware import GpuInfo, HostHardware
from pytest_forge.recipe import Recipe
from pytest_forge.tune.agent import HistoryEntry, ProposalContext
from pytest_forge.tune.playbook import load_playbook
from pytest_forge.tune.search_space import ParamSpec, SearchSpace

PLAYBOOK = load_playbook()
CPU_SPACE = PLAYBOOK.spaces["CPU"]
SECRET = "sk-test-5ecr3t-DO-NOT-LEAK"

CPU_RECIPE = """\
id: tiny-cpu
model: forge:tiny-llama
hardware: {vendor: cpu}
config:
  max_num_seqs: 16
  max_num_batched_tokens: 2048
  enable_prefix_caching: true
  enable_chunked_prefill: true
  enforce_eager: true
env: {VLLM_CPU_KVCACHE_SPACE: "1"}
"""
GPU_RECIPE = """\
id: llama-gpu
model: meta-llama/Llama-3.2-1B-Instruct
hardware: {vendor: nvidia, count: 1}
config: {max_num_seqs: 256}
"""

CPU_HOST = HostHardware("cpu", [], "AMD EPYC", 2)
T4_HOST = HostHardware("nvidia", [GpuInfo("Tesla T4", 15.0, "550.54", "7.5")], "Xeon", 8)
H100_HOST = HostHardware(
    "nvidia", [GpuInfo("NVIDIA H100 80GB HBM3", 79.6, "550.54", "9.0")] * 2, "Xeon", 64
)
GATE_SPACE = SearchSpace(
    params={
        "config.max_num_seqs": ParamSpec(values=[128, 256, 512], priority=1),
        "quant.method": ParamSpec(values=["none", "fp8", "awq"], priority=2),
        "quant.kv_cache_quant": ParamSpec(values=["none", "fp8"], priority=2),
        "config.tensor_parallel_size": ParamSpec(values=[1, 2, 4], priority=3),
    }
)


def cpu_ctx(**kw: Any) -> ProposalContext:
    recipe = kw.pop("recipe", None) or Recipe.from_yaml_text(CPU_RECIPE)
    return ProposalContext(
        recipe=recipe,
        hardware=CPU_HOST,
        hardware_class="CPU",
        search_space=CPU_SPACE,
        history=kw.pop("history", [HistoryEntry(0, recipe.content_hash, {}, "", "baseline", 1.0)]),
        objective="output_throughput",
        tried_hashes=kw.pop("tried_hashes", {recipe.content_hash}),
    )


def gpu_ctx(host: HostHardware, cls: str) -> ProposalContext:
    recipe = Recipe.from_yaml_text(GPU_RECIPE)
    return ProposalContext(recipe, host, cls, GATE_SPACE, [], "output_throughput", set())


GOOD = '{"rationale": "more batching", "changes": {"config.max_num_seqs": 64}}'
