"""Local stand-ins for the things pytest-forge talks to (vLLM servers, launchers, smi tools)."""
