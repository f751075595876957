"""VllmServer lifecycle against fake launchers: boot, readiness, failures, teardown."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from pytest_forge import server as server_mod
from pytest_forge.errors import ServerError
from pytest_forge.server import VllmServer, detect_launcher, live_servers, stop_all

FAKES = Path(__file__).resolve().parent.parent / "fakes"
LAUNCHER = FAKES / "fake_vllm_launcher.py"
OWNER = FAKES / "fake_vllm_owner.py"
ERROR_LINE = "ValueError: fake-vllm: max_num_seqs must be positive, got -5"


@dataclass
class FakeHardware:
    vendor: str = "cpu"
    gpu_type: str | None = None
    count: int = 0
    memory_gb_per_gpu: float | None = None


@dataclass
class FakeRecipe:
    """The slice of Recipe that the server uses."""

    id: str = "fake-recipe"
    model: str = "fake-model"
    content_hash: str = "deadbeef"
    hardware: FakeHardware = field(default_factory=FakeHardware)
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)

    def vllm_cli_args(self) -> list[str]:
        return list(self.args)

    def server_env(self) -> dict[str, str]:
        return dict(self.env)


def _gone(pid: int) -> bool:
    """Dead or a zombie (orphans may wait for a PID 1 that does not reap)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rfind(")") + 2] in "ZX"


def _wait_gone(pid: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not _gone(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[Callable[..., VllmServer]]:
    made: list[VllmServer] = []

    def make(mode: str = "ok", *fake_args: str, recipe: FakeRecipe | None = None, **kw: object):
        kw.setdefault("boot_timeout_s", 10)
        kw.setdefault("poll_interval_s", 0.05)
        kw.setdefault("stop_timeout_s", 3)
        server = VllmServer(
            recipe or FakeRecipe(),
            tmp_path / "run",
            command_override=[sys.executable, str(LAUNCHER), "--mode", mode, *fake_args],
            **kw,  # type: ignore[arg-type]
        )
        made.append(server)
        return server

    yield make
    for server in made:
        server.stop()


pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc")


def test_start_serves_then_stop_leaves_no_process(make_server, tmp_path: Path) -> None:
    server = make_server("ok")
    endpoint = server.start()
    pid = server.pid
    assert pid is not None
    assert endpoint.base_url == f"http://127.0.0.1:{server.port}"
    assert endpoint.model == "fake-model"
    assert endpoint.managed is True
    assert server.boot_seconds is not None and server.boot_seconds > 0
    assert server in live_servers()
    reply = httpx.get(f"{endpoint.url}/v1/models", trust_env=False)
    assert reply.json()["data"][0]["id"] == "fake-model"
    assert server.log_path == tmp_path / "run" / "fake-recipe" / "vllm-1.log"

    server.stop()
    assert _wait_gone(pid, 1.0)
    assert server not in live_servers()
    assert "Application startup complete" in server.log_tail()
    server.stop()  # idempotent
    with pytest.raises(ServerError, match="not running"):
        server.check_alive()


def test_context_manager_stops_on_exit(make_server) -> None:
    server = make_server("ok")
    with server as endpoint:
        pid = server.pid
        assert httpx.get(f"{endpoint.url}/health", trust_env=False).status_code == 200
    assert pid is not None and _wait_gone(pid, 1.0)


def test_boot_exit_raises_with_the_printed_error(make_server) -> None:
    server = make_server("exit")
    started = time.monotonic()
    with pytest.raises(ServerError) as info:
        server.start()
    assert time.monotonic() - started < 5
    err = info.value
    assert "fake-recipe" in err.message and "exited with code 1 during boot" in err.message
    assert ERROR_LINE in err.log_tail
    assert ERROR_LINE in str(err) and str(err.log_path) in str(err)
    assert server not in live_servers()


def test_never_ready_times_out_and_kills_the_group(make_server) -> None:
    server = make_server("hang", boot_timeout_s=1.0)
    started = time.monotonic()
    with pytest.raises(ServerError, match=r"did not become ready within 1s") as info:
        server.start()
    elapsed = time.monotonic() - started
    assert 1.0 <= elapsed < 4.0
    assert "mode=hang" in info.value.log_tail
    assert server._proc is None
    assert server_mod._group_members(_pid_from_log(info.value.log_tail)) == []


def _pid_from_log(tail: str) -> int:
    line = next(line for line in tail.splitlines() if "fake-vllm: mode=" in line)
    return int(line.split("pid=")[1].split()[0])


def test_models_without_completions_is_not_ready(make_server) -> None:
    server = make_server("no-completions", boot_timeout_s=1.5)
    with pytest.raises(ServerError, match=r"/v1/completions -> HTTP 500"):
        server.start()


def test_stop_kills_grandchildren(make_server, tmp_path: Path) -> None:
    pid_file = tmp_path / "grandchild.pid"
    server = make_server("grandchild", "--pid-file", str(pid_file))
    server.start()
    grandchild = int(pid_file.read_text())
    assert not _gone(grandchild)
    server.stop()
    assert _wait_gone(grandchild, 1.0)


def test_sigterm_ignored_escalates_to_sigkill(make_server) -> None:
    server = make_server("ignore-term", stop_timeout_s=0.3)
    server.start()
    pid = server.pid
    assert pid is not None
    started = time.monotonic()
    server.stop()
    assert time.monotonic() - started < 3
    assert _wait_gone(pid, 1.0)


def test_check_alive_raises_after_death(make_server) -> None:
    server = make_server("die-after", "--die-after", "0.3")
    server.start()
    server.check_alive()
    deadline = time.monotonic() + 5
    while server.is_running and time.monotonic() < deadline:
        time.sleep(0.05)
    with pytest.raises(ServerError, match=r"died with code 3") as info:
        server.check_alive()
    assert "Application startup complete" in info.value.log_tail
    assert server not in live_servers()


def test_address_in_use_retries_once_on_a_new_port(make_server, tmp_path: Path) -> None:
    server = make_server("busy-once", "--marker", str(tmp_path / "marker"))
    endpoint = server.start()
    assert server.log_path is not None and server.log_path.name == "vllm-2.log"
    first_log = (server.log_path.parent / "vllm-1.log").read_text()
    assert "Address already in use" in first_log
    assert httpx.get(f"{endpoint.url}/v1/models", trust_env=False).status_code == 200


def test_server_process_gets_env_and_args_but_log_hides_secrets(
    make_server, tmp_path: Path
) -> None:
    env_file = tmp_path / "env.json"
    recipe = FakeRecipe(args=["--max-num-seqs", "4", "--api-key", "sekrit-123"], env={"A": "1"})
    server = make_server("ok", "--env-file", str(env_file), recipe=recipe, extra_env={"B": "2"})
    server.start()
    env = json.loads(env_file.read_text())
    assert env["VLLM_SERVER_DEV_MODE"] == "1"
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "1"
    assert (env["A"], env["B"]) == ("1", "2")
    assert server.command is not None and server.command[-4:] == [
        "--max-num-seqs",
        "4",
        "--api-key",
        "sekrit-123",
    ]
    assert server.log_path is not None
    header = server.log_path.read_text()
    assert "--max-num-seqs 4" in header and "sekrit-123" not in header


def test_stop_all_stops_every_live_server(make_server) -> None:
    servers = [make_server("ok"), make_server("ok")]
    for server in servers:
        server.start()
    pids = [server.pid for server in servers]
    stop_all()
    assert all(pid is not None and _wait_gone(pid, 1.0) for pid in pids)
    assert not any(server in live_servers() for server in servers)


def _spawn_owner(tmp_path: Path) -> tuple[subprocess.Popen[bytes], int]:
    pid_file = tmp_path / "server.pid"
    owner = subprocess.Popen(
        [sys.executable, str(OWNER), str(tmp_path / "run"), str(pid_file)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 20
    while not pid_file.exists():
        if owner.poll() is not None or time.monotonic() > deadline:
            owner.kill()
            pytest.fail(f"owner did not start a server: {owner.communicate()[1].decode()}")
        time.sleep(0.05)
    return owner, int(pid_file.read_text())


@pytest.fixture
def owner(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    proc, server_pid = _spawn_owner(tmp_path)
    yield proc, server_pid
    # Only if the test failed: never leave the fake behind.
    proc.kill()
    proc.wait()
    if not _gone(server_pid):
        os.kill(server_pid, signal.SIGKILL)


def test_sigkilled_owner_takes_its_server_along(owner) -> None:
    proc, server_pid = owner
    assert not _gone(server_pid)
    proc.kill()
    proc.wait()
    assert _wait_gone(server_pid, 5.0), "PR_SET_PDEATHSIG did not stop the server"


def test_sigterm_to_owner_stops_server_then_dies_by_sigterm(owner) -> None:
    proc, server_pid = owner
    proc.send_signal(signal.SIGTERM)
    # The handler stops the server, then re-raises so the exit status still says SIGTERM.
    assert proc.wait(timeout=10) == -signal.SIGTERM
    assert _wait_gone(server_pid, 2.0)


def test_signal_handler_chains_previous_handler(monkeypatch) -> None:
    calls: list[str] = []
    monkeypatch.setattr(server_mod, "stop_all", lambda: calls.append("stop_all"))
    handler = server_mod._make_signal_handler(lambda signum, frame: calls.append(f"prev {signum}"))
    handler(signal.SIGHUP, None)
    assert calls == ["stop_all", f"prev {int(signal.SIGHUP)}"]


@pytest.mark.parametrize(
    ("launcher", "prefix"),
    [
        ("python-module", ["PY", "-m", "vllm.entrypoints.openai.api_server", "--model", "M"]),
        ("vllm-serve", ["/opt/bin/vllm", "serve", "M"]),
    ],
)
def test_command_per_launcher(monkeypatch, tmp_path: Path, launcher, prefix) -> None:
    monkeypatch.setattr(server_mod, "_vllm_executable", lambda python: "/opt/bin/vllm")
    server = VllmServer(
        FakeRecipe(model="org/model", args=["--enforce-eager"]),
        tmp_path,
        python="PY",
        launcher=launcher,
    )
    server.served_model_name = "org/model"
    assert server.build_command("M", 1234) == [
        *prefix,
        "--host",
        "127.0.0.1",
        "--port",
        "1234",
        "--served-model-name",
        "org/model",
        "--enforce-eager",
    ]


@pytest.mark.parametrize(
    ("installed", "exe", "expected"),
    [
        ({"vllm"}, "/x/vllm", "vllm-serve"),
        ({"vllm-cpu"}, "/x/vllm", "python-module"),  # vllm-cpu's console script is broken
        ({"vllm"}, None, "python-module"),
        (set(), None, "python-module"),
    ],
)
def test_auto_launcher_detection(monkeypatch, installed, exe, expected) -> None:
    monkeypatch.setattr(server_mod, "_distribution_installed", lambda name: name in installed)
    monkeypatch.setattr(server_mod, "_vllm_executable", lambda python: exe)
    assert detect_launcher("python") == expected


def test_this_environment_uses_the_module_launcher() -> None:
    # The dev venv has vllm-cpu, whose `vllm` console script cannot start.
    import importlib.metadata

    try:
        importlib.metadata.distribution("vllm-cpu")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("vllm-cpu not installed")
    assert detect_launcher(sys.executable) == "python-module"


def test_env_cpu_default_respects_recipe_and_gpu(tmp_path: Path) -> None:
    cpu = VllmServer(FakeRecipe(env={"VLLM_CPU_KVCACHE_SPACE": "4"}), tmp_path)
    assert cpu.build_env()["VLLM_CPU_KVCACHE_SPACE"] == "4"
    gpu_recipe = FakeRecipe(hardware=FakeHardware(vendor="nvidia", count=1))
    env = VllmServer(gpu_recipe, tmp_path).build_env()
    assert env["VLLM_SERVER_DEV_MODE"] == "1"
    if "VLLM_CPU_KVCACHE_SPACE" not in os.environ:
        assert "VLLM_CPU_KVCACHE_SPACE" not in env


def test_vllm_never_gets_the_agents_api_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-secret")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret")
    monkeypatch.setenv("HF_HOME", "/tmp/hf")  # the rest of the environment is passed on
    env = VllmServer(FakeRecipe(), tmp_path).build_env()
    assert "ANTHROPIC_API_KEY" not in env and "OPENAI_API_KEY" not in env
    assert env["HF_HOME"] == "/tmp/hf"
