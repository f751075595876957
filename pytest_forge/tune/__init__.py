"""`pytest --forge-tune`: agents propose recipe mutations, the tuner runs and keeps them.

Modules: ``playbook`` (heuristics + per-hardware search spaces), ``agent`` (Anthropic,
OpenAI-compatible and offline playbook agents), ``objective``, ``store``, ``tuner``.
Nothing is re-exported here so that importing one part does not import the LLM SDKs.
"""

from __future__ import annotations
