"""A stand-in for a pytest process: boots a server through VllmServer, then waits.

``python fake_vllm_owner.py RUN_DIR PID_FILE [--real]`` writes the server's pid to
PID_FILE once it is ready and sleeps until killed; tests SIGKILL or SIGTERM it and check
that the server goes too. By default the server is the fake launcher; ``--real`` boots
real vLLM with the tiny Llama (e2e only).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from types import SimpleNamespace

from pytest_forge.server import VllmServer

LAUNCHER = Path(__file__).with_name("fake_vllm_launcher.py")


def main(run_dir: str, pid_file: str, real: bool = False) -> int:
    recipe = SimpleNamespace(
        id="owner",
        model="forge:tiny-llama" if real else "fake-model",
        content_hash="00000000",
        hardware=SimpleNamespace(vendor="cpu"),
        vllm_cli_args=lambda: ["--enforce-eager", "--max-model-len", "2048"],
        server_env=lambda: {"VLLM_CPU_KVCACHE_SPACE": "1"},
    )
    server = VllmServer(
        recipe,
        Path(run_dir),
        boot_timeout_s=300 if real else 20,
        command_override=None if real else [sys.executable, str(LAUNCHER), "--mode", "ok"],
        poll_interval_s=0.5 if real else 0.05,
    )
    server.start()
    tmp = Path(pid_file + ".tmp")
    tmp.write_text(str(server.pid))
    tmp.replace(pid_file)
    while True:
        time.sleep(1)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1], sys.argv[2], real="--real" in sys.argv[3:]))
