"""A stand-in for a pytest process: boots a fake vLLM through VllmServer, then waits.

``python fake_vllm_owner.py RUN_DIR PID_FILE``: writes the server's pid to PID_FILE once
it is ready and sleeps until killed. Tests SIGKILL it and check the server goes too.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from types import SimpleNamespace

from pytest_forge.server import VllmServer

LAUNCHER = Path(__file__).with_name("fake_vllm_launcher.py")


def main(run_dir: str, pid_file: str) -> int:
    recipe = SimpleNamespace(
        id="owner",
        model="fake-model",
        content_hash="00000000",
        hardware=SimpleNamespace(vendor="cpu"),
        vllm_cli_args=lambda: [],
        server_env=lambda: {},
    )
    server = VllmServer(
        recipe,
        Path(run_dir),
        boot_timeout_s=20,
        command_override=[sys.executable, str(LAUNCHER), "--mode", "ok"],
        poll_interval_s=0.05,
    )
    server.start()
    tmp = Path(pid_file + ".tmp")
    tmp.write_text(str(server.pid))
    tmp.replace(pid_file)
    while True:
        time.sleep(1)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1], sys.argv[2]))
