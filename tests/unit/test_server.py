"""VllmServer lifecycle against fake launchers: boot, readiness, failures, teardown."""

from __future__ import annotations

import contextlib
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

from pytest_forge import cpu_affinity, server_process, server_registry
from pytest_forge import server as server_mod
from pytest_forge.errors import ServerError
from pytest_forge.server import VllmServer, detect_launcher, live_servers, stop_all
from pytest_forge.supervisor import server_tree

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
    # pid is the supervisor's (and the group's); vLLM runs under it.
    fake = _pid_from_log(server.log_tail())
    assert server.vllm_pid == fake
    assert set(server.processes()) == {pid, fake}

    server.stop()
    assert _wait_gone(pid, 5.0) and _wait_gone(fake, 5.0)
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
    assert pid is not None and _wait_gone(pid, 5.0)


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
    # 3 s: time for the supervisor and the fake to start (and log) on a loaded runner.
    server = make_server("hang", boot_timeout_s=3.0)
    started = time.monotonic()
    with pytest.raises(ServerError, match=r"did not become ready within 3s") as info:
        server.start()
    elapsed = time.monotonic() - started
    assert 3.0 <= elapsed < 8.0
    assert "mode=hang" in info.value.log_tail
    assert server._proc is None
    assert _gone(_pid_from_log(info.value.log_tail))


def _pid_from_log(tail: str) -> int:
    line = next(line for line in tail.splitlines() if "fake-vllm: mode=" in line)
    return int(line.split("pid=")[1].split()[0])


def test_models_without_completions_is_not_ready(make_server) -> None:
    server = make_server("no-completions", boot_timeout_s=5.0)
    with pytest.raises(ServerError, match=r"/v1/completions -> HTTP 500"):
        server.start()


def test_stop_kills_grandchildren(make_server, tmp_path: Path) -> None:
    pid_file = tmp_path / "grandchild.pid"
    server = make_server("grandchild", "--pid-file", str(pid_file))
    server.start()
    grandchild = int(pid_file.read_text())
    assert not _gone(grandchild)
    server.stop()
    assert _wait_gone(grandchild, 5.0)


def test_sigterm_ignored_escalates_to_sigkill(make_server) -> None:
    server = make_server("ignore-term", stop_timeout_s=0.3)
    server.start()
    pid, fake = server.pid, server.vllm_pid
    assert pid is not None and fake is not None
    started = time.monotonic()
    server.stop()
    assert time.monotonic() - started < 3
    assert _wait_gone(pid, 5.0) and _wait_gone(fake, 5.0)
    assert server.log_path is not None
    assert "sending SIGKILL" in server.log_path.read_text()  # the supervisor escalated


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
    assert env["VLLM_SERVER_DEV_MODE"] == "1"  # prefix caching is on: the bench resets it
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
    assert all(pid is not None and _wait_gone(pid, 5.0) for pid in pids)
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
    assert _wait_gone(server_pid, 5.0)


def test_signal_handler_chains_previous_handler(monkeypatch) -> None:
    calls: list[str] = []
    monkeypatch.setattr(server_registry, "stop_all", lambda: calls.append("stop_all"))
    handler = server_registry._make_signal_handler(
        lambda signum, frame: calls.append(f"prev {signum}")
    )
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
    monkeypatch.setattr(server_mod, "vllm_executable", lambda python: "/opt/bin/vllm")
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
    monkeypatch.setattr(server_process, "_distribution_installed", lambda name: name in installed)
    monkeypatch.setattr(server_process, "vllm_executable", lambda python: exe)
    assert detect_launcher("python") == expected


def test_this_environment_uses_the_module_launcher() -> None:
    # The dev venv has vllm-cpu, whose `vllm` console script cannot start.
    import importlib.metadata

    try:
        importlib.metadata.distribution("vllm-cpu")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("vllm-cpu not installed")
    assert detect_launcher(sys.executable) == "python-module"


def test_env_cpu_default_respects_recipe_and_gpu(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    cpu = VllmServer(FakeRecipe(env={"VLLM_CPU_KVCACHE_SPACE": "4"}), tmp_path)
    assert cpu.build_env()["VLLM_CPU_KVCACHE_SPACE"] == "4"
    gpu_recipe = FakeRecipe(hardware=FakeHardware(vendor="nvidia", count=1))
    env = VllmServer(gpu_recipe, tmp_path).build_env()
    assert env["VLLM_SERVER_DEV_MODE"] == "1"
    assert "VLLM_CPU_KVCACHE_SPACE" not in env


KEYS = {
    "GITHUB_TOKEN": "ghp_secret",
    "FORGE_PR_TOKEN": "ghp_pr_secret",
    "AWS_SECRET_ACCESS_KEY": "aws-secret",
    "AWS_ACCESS_KEY_ID": "AKIA0000",
    "ANTHROPIC_API_KEY": "sk-ant-secret",
    "OPENAI_API_KEY": "sk-secret",
    "FORGE_ENDPOINT_API_KEY": "endpoint-secret",
    "VLLM_API_KEY": "vllm-secret",
    "SOME_NEW_SERVICE_TOKEN": "unknown-secret",  # an allowlist needs no list of secrets
}
NEEDED = {
    "PATH": "/usr/bin:/bin",
    "HOME": "/home/me",
    "HF_HOME": "/tmp/hf",
    "HF_TOKEN": "hf_gated",  # vLLM downloads gated models itself
    "VLLM_LOGGING_LEVEL": "DEBUG",
    "OMP_NUM_THREADS": "2",
    "LC_ALL": "C.UTF-8",
    "LD_LIBRARY_PATH": "/usr/local/cuda/lib64",
}


def test_server_env_is_an_allowlist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {**KEYS, **NEEDED, "CUDA_VISIBLE_DEVICES": "0"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("PYTHONPATH", "/some/project")  # would shadow vLLM's modules
    monkeypatch.setenv("VLLM_SERVER_DEV_MODE", "1")  # decided per run, never inherited
    recipe = FakeRecipe(args=["--no-enable-prefix-caching"], env={"MY_RECIPE_VAR": "x"})
    env = VllmServer(recipe, tmp_path, extra_env={"CUDA_VISIBLE_DEVICES": "1"}).build_env()
    assert sorted(set(KEYS) & set(env)) == []
    assert "PYTHONPATH" not in env and "VLLM_SERVER_DEV_MODE" not in env
    assert {k: env.get(k) for k in NEEDED} == NEEDED
    assert env["CUDA_VISIBLE_DEVICES"] == "1"  # the caller's extra_env wins
    assert env["MY_RECIPE_VAR"] == "x"  # the recipe's own env is passed as written
    # All else that is passed on is named by the allowlist.
    inherited = set(env) - {"MY_RECIPE_VAR", "VLLM_CPU_KVCACHE_SPACE"}
    assert inherited <= set(server_process.inherited_env())


def test_the_server_process_never_sees_the_keys(
    make_server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in KEYS.items():
        monkeypatch.setenv(name, value)
    env_file = tmp_path / "env.json"
    make_server("ok", "--env-file", str(env_file)).start()
    env = json.loads(env_file.read_text())
    assert sorted(set(KEYS) & set(env)) == []
    assert set(env.values()) & set(KEYS.values()) == set()


@pytest.mark.parametrize(
    ("args", "recipe_env", "dev_mode", "expected"),
    [
        ([], {}, None, "1"),  # prefix caching is on by default: the bench resets it
        (["--enable-prefix-caching"], {}, None, "1"),
        (["--no-enable-prefix-caching"], {}, None, None),  # nothing to reset
        (["--no-enable-prefix-caching", "--enable-prefix-caching"], {}, None, "1"),
        ([], {}, False, None),  # a caller that never resets
        (["--no-enable-prefix-caching"], {"VLLM_SERVER_DEV_MODE": "1"}, None, "1"),  # asked
    ],
)
def test_dev_mode_only_when_the_run_needs_it(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    recipe_env: dict[str, str],
    dev_mode: bool | None,
    expected: str | None,
) -> None:
    monkeypatch.delenv("VLLM_SERVER_DEV_MODE", raising=False)
    recipe = FakeRecipe(args=args, env=recipe_env)
    server = VllmServer(recipe, tmp_path, dev_mode=dev_mode)
    assert server.build_env().get("VLLM_SERVER_DEV_MODE") == expected


# -- no process outlives its owner ---------------------------------------------------------

# A stand-in for pytest: boots a fake server whose process has a child (from the main
# thread, or from another thread), writes the server's pid and waits to be killed.
OWNER_SCRIPT = """
import sys, threading, time
from pathlib import Path
from types import SimpleNamespace
from pytest_forge.server import VllmServer

run_dir, pid_file, launcher, how = sys.argv[1:5]
recipe = SimpleNamespace(
    id="owner", model="fake-model", content_hash="0", hardware=SimpleNamespace(vendor="cpu"),
    vllm_cli_args=lambda: [], server_env=lambda: {},
)
server = VllmServer(
    recipe, Path(run_dir), boot_timeout_s=20, poll_interval_s=0.05, stop_timeout_s=3,
    command_override=[sys.executable, launcher, "--mode", "grandchild",
                      "--pid-file", pid_file + ".grandchild"],
)
if how == "thread":
    booter = threading.Thread(target=server.start)
    booter.start()
    booter.join()
else:
    server.start()
Path(pid_file + ".tmp").write_text(str(server.pid))
Path(pid_file + ".tmp").replace(pid_file)
while True:
    time.sleep(1)
"""


def _tree(root: int) -> set[int]:
    """root and its live descendants, from /proc (the test's own walk)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                stat = (entry / "stat").read_text()
                parents[int(entry.name)] = int(stat[stat.rfind(")") + 2 :].split()[1])
    found: set[int] = set()
    todo = [root]
    while todo:
        pid = todo.pop()
        if pid not in found and not _gone(pid):
            found.add(pid)
            todo.extend(child for child, parent in parents.items() if parent == pid)
    return found


@pytest.mark.parametrize("how", ["main", "thread"])
def test_sigkilled_owner_takes_every_server_process_along(tmp_path: Path, how: str) -> None:
    """With PR_SET_PDEATHSIG on vLLM's process alone (and none at all for a server booted
    from a thread), the children of vLLM's process outlived a SIGKILLed pytest."""
    pid_file = tmp_path / "server.pid"
    argv = [sys.executable, "-c", OWNER_SCRIPT, str(tmp_path / "run"), str(pid_file)]
    owner = subprocess.Popen(
        [*argv, str(LAUNCHER), how], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    tree: set[int] = set()
    try:
        deadline = time.monotonic() + 20
        while not pid_file.exists():
            if owner.poll() is not None or time.monotonic() > deadline:
                owner.kill()
                pytest.fail(f"owner did not start a server: {owner.communicate()[1].decode()}")
            time.sleep(0.05)
        tree = _tree(int(pid_file.read_text()))
        grandchild = int(Path(f"{pid_file}.grandchild").read_text())
        assert grandchild in tree
        owner.kill()
        owner.wait()
        deadline = time.monotonic() + 5
        while any(not _gone(pid) for pid in tree) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [pid for pid in sorted(tree) if not _gone(pid)] == []
    finally:
        owner.kill()
        owner.wait()
        for pid in tree:  # only if the test failed: never leave the fakes behind
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


# The fake launcher, after leaving behind a process in a session (so a process group) of
# its own whose parent has exited, as a daemonizing helper would.
ESCAPE_SCRIPT = """
import runpy, subprocess, sys
DAEMON = (
    "import subprocess, sys\\n"
    "sleeper = [sys.executable, '-c', 'import time; time.sleep(600)']\\n"
    "escaped = subprocess.Popen(sleeper, start_new_session=True)\\n"
    "open(sys.argv[1], 'w').write(str(escaped.pid))\\n"
)
subprocess.run([sys.executable, "-c", DAEMON, sys.argv[1]], check=True)
sys.argv = [sys.argv[2], "--mode", "ok", *sys.argv[3:]]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_stop_reaches_a_process_that_left_the_group(tmp_path: Path) -> None:
    """killpg misses a process in another group; the supervisor adopts it and stops it."""
    escaped_file = tmp_path / "escaped.pid"
    server = VllmServer(
        FakeRecipe(),
        tmp_path / "run",
        boot_timeout_s=10,
        poll_interval_s=0.05,
        stop_timeout_s=2,
        command_override=[sys.executable, "-c", ESCAPE_SCRIPT, str(escaped_file), str(LAUNCHER)],
    )
    escaped = None
    try:
        server.start()
        escaped = int(escaped_file.read_text())
        assert server.pid is not None and os.getpgid(escaped) != server.pid
        assert not _gone(escaped)
        server.stop()
        assert _wait_gone(escaped, 5.0)
    finally:
        server.stop()
        if escaped is not None and not _gone(escaped):
            os.kill(escaped, signal.SIGKILL)


def test_affinity_finds_a_servers_processes_outside_its_group() -> None:
    """The engine core is looked up in the tree under the supervisor, not its group alone."""
    script = (
        "import subprocess, sys, time\n"
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)'],"
        " start_new_session=True)\n"
        "time.sleep(30)\n"
    )
    root = subprocess.Popen([sys.executable, "-c", script], start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while len(_tree(root.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        found = {pid for pids in cpu_affinity.processes_by_name(root.pid).values() for pid in pids}
        assert found == _tree(root.pid) and len(found) == 2
        assert set(server_tree(root.pid)) == found
    finally:
        for pid in _tree(root.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        root.wait()
