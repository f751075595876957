"""Boot one vLLM server for a recipe, wait until it really serves, and always tear it down.

vLLM runs under a small supervisor process (supervisor.py, started by server_process.py)
that leads its own session and process group, so stopping a server reaches vLLM's
engine-core and worker processes too, and only them. Three layers make sure no vLLM
process outlives the test run: ``stop()`` (fixtures, context manager), a registry stopped
from ``atexit`` and from SIGTERM/SIGHUP handlers, and the supervisor, which stops the
whole tree by itself when pytest dies by any signal, SIGKILL included.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Literal, Protocol

import httpx

from pytest_forge.cpu_affinity import pin_engine_core, wait_until_idle
from pytest_forge.endpoint import Endpoint
from pytest_forge.errors import ForgeError, ServerError
from pytest_forge.server_log import open_log, tail
from pytest_forge.server_process import (
    Launcher,
    SupervisedProcess,
    describe_exit_code,
    detect_launcher,
    inherited_env,
    needs_dev_mode,
    vllm_executable,
)
from pytest_forge.server_registry import install_hooks, live_servers, register, stop_all, unregister
from pytest_forge.tiny_model import resolve_model

__all__ = [
    "Launcher",
    "VllmServer",
    "detect_launcher",
    "live_servers",
    "stop_all",
]

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
POLL_INTERVAL_S = 0.5
LOG_TAIL_LINES = 40
_ADDRESS_IN_USE_MARKERS = ("address already in use", "errno 98", "eaddrinuse")


class RecipeLike(Protocol):
    """What the server needs from a Recipe (see recipe.py)."""

    id: str
    model: str
    hardware: Any

    @property
    def content_hash(self) -> str: ...

    def vllm_cli_args(self) -> list[str]: ...

    def server_env(self) -> dict[str, str]: ...


# -- helpers ------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _vendor(recipe: RecipeLike) -> str:
    hardware = getattr(recipe, "hardware", None)
    vendor = getattr(hardware, "vendor", None)
    if vendor is None and isinstance(hardware, Mapping):
        vendor = hardware.get("vendor")
    return str(getattr(vendor, "value", vendor) or "").lower()


# -- the server --------------------------------------------------------------------------


class VllmServer:
    """One vLLM OpenAI-compatible server for one recipe, on 127.0.0.1 and a free port."""

    def __init__(
        self,
        recipe: RecipeLike,
        run_dir: Path,
        *,
        boot_timeout_s: float = 900,
        python: str = sys.executable,
        launcher: Launcher = "auto",
        stop_timeout_s: float = 15,
        extra_env: Mapping[str, str] | None = None,
        port: int | None = None,
        command_override: Sequence[str] | None = None,
        poll_interval_s: float = POLL_INTERVAL_S,
        dev_mode: bool | None = None,
    ) -> None:
        """``command_override`` replaces the launcher prefix (``vllm serve`` / ``python -m
        ...``); the model, host, port and recipe args are still appended. Tests use it to
        run fake servers through the real lifecycle. ``dev_mode`` turns vLLM's development
        endpoints on or off; None decides from the recipe (server_process.needs_dev_mode)."""
        self.recipe = recipe
        self.recipe_id = str(recipe.id)
        self.run_dir = Path(run_dir)
        self.boot_timeout_s = boot_timeout_s
        self.python = python
        self.launcher = launcher
        self.stop_timeout_s = stop_timeout_s
        self.extra_env = dict(extra_env or {})
        self.requested_port = port
        self.command_override = list(command_override) if command_override else None
        self.poll_interval_s = poll_interval_s
        self.dev_mode = dev_mode

        self.served_model_name = str(recipe.model)
        self.port: int | None = None
        self.command: list[str] | None = None
        self.log_path: Path | None = None
        self.boot_seconds: float | None = None
        self.placement: str | None = None  # what cpu_affinity changed after the boot
        self.endpoint: Endpoint | None = None
        self._proc: SupervisedProcess | None = None
        self._log_file: IO[bytes] | None = None
        self._lock = threading.RLock()
        self._starting = False

    # -- what gets run ---------------------------------------------------------------
    def resolved_launcher(self) -> Literal["vllm-serve", "python-module"]:
        """The launcher this server uses (``auto`` decided from the installed vLLM)."""
        if self.launcher == "auto":
            return detect_launcher(self.python)
        return self.launcher

    def build_command(self, model: str, port: int) -> list[str]:
        """vLLM's argv: launcher, ``model`` (as vLLM loads it), host, port, recipe args."""
        serve_args = [
            "--host",
            HOST,
            "--port",
            str(port),
            "--served-model-name",
            self.served_model_name,
            *self.recipe.vllm_cli_args(),
        ]
        if self.command_override is not None:
            return [*self.command_override, "--model", model, *serve_args]
        if self.resolved_launcher() == "vllm-serve":
            exe = vllm_executable(self.python) or "vllm"
            return [exe, "serve", model, *serve_args]
        module = [self.python, "-m", "vllm.entrypoints.openai.api_server"]
        return [*module, "--model", model, *serve_args]

    def uses_dev_mode(self) -> bool:
        """Whether vLLM's development endpoints are on (README: "What a server exposes")."""
        if self.dev_mode is not None:
            return self.dev_mode
        return needs_dev_mode(self.recipe.vllm_cli_args())

    def build_env(self) -> dict[str, str]:
        """vLLM's environment: the allowlisted part of ours, dev mode, recipe and extra env."""
        # An allowlist of pytest's environment (server_process.SERVER_ENV_ALLOWLIST): a
        # token there (GITHUB_TOKEN, FORGE_PR_TOKEN, AWS_*, the tuner's LLM keys) must not
        # reach a process that logs, dumps and loads third-party code. The recipe's own
        # env and the caller's extra_env (e.g. CUDA_VISIBLE_DEVICES) are added as given.
        env = inherited_env()
        if self.uses_dev_mode():
            # Only for POST /reset_prefix_cache, which the bench sends before each repeat;
            # it also opens /collective_rpc, /sleep, /update_weights, ... to local
            # processes, unauthenticated (vLLM's --api-key guards only /v1 and the like).
            env["VLLM_SERVER_DEV_MODE"] = "1"
        env.update({k: str(v) for k, v in self.recipe.server_env().items()})
        env.update({k: str(v) for k, v in self.extra_env.items()})
        if _vendor(self.recipe) == "cpu":
            # vLLM-CPU reserves 4 GiB of KV cache by default; 1 GiB fits shared CI boxes.
            env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        return env

    # -- lifecycle ---------------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        """The supervisor's pid, which is also the server's process-group id."""
        return self._proc.pid if self._proc is not None else None

    @property
    def vllm_pid(self) -> int | None:
        """vLLM's main process (the API server), under the supervisor."""
        return self._proc.server_pid() if self._proc is not None else None

    def processes(self) -> list[int]:
        """Every live process of this server: supervisor, vLLM and vLLM's children."""
        return self._proc.tree() if self._proc is not None else []

    @property
    def is_running(self) -> bool:
        """Whether vLLM's main process was started and has not exited."""
        return self._proc is not None and not self._proc.server_exited()

    def start(self) -> Endpoint:
        """Boot vLLM and return its endpoint once it answers a real completion."""
        # The lock guards state only, never the boot wait: stop() from another thread or
        # a signal handler must be able to interrupt a 15-minute boot.
        with self._lock:
            if self._proc is not None or self._starting:
                raise ServerError(f"vLLM for recipe {self.recipe_id} is already running")
            self._starting = True
        try:
            install_hooks()
            try:
                model = resolve_model(self.served_model_name, python=self.python)
            except ForgeError as exc:
                raise ServerError(
                    f"could not prepare model {self.served_model_name!r} for recipe "
                    f"{self.recipe_id}: {exc}"
                ) from exc
            env = self.build_env()
            port = self.requested_port or _free_port()
            try:
                return self._boot(model, env, port)
            except ServerError as exc:
                # Another process can grab the port between our probe and vLLM's bind.
                if self.requested_port is None and self._address_in_use(exc.log_tail):
                    log.info("pytest-forge: port %d was taken, retrying on a new one", port)
                    return self._boot(model, env, _free_port())
                raise
        finally:
            self._starting = False

    def _address_in_use(self, tail: str) -> bool:
        text = tail.lower()
        return any(marker in text for marker in _ADDRESS_IN_USE_MARKERS)

    def _boot(self, model: str, env: dict[str, str], port: int) -> Endpoint:
        command = self.build_command(model, port)
        title = f"recipe {self.recipe_id} ({self.recipe.content_hash})"
        log_path, log_file = open_log(self.run_dir / self.recipe_id, title, command)
        started = time.monotonic()
        try:
            proc = SupervisedProcess(
                command, env=env, log_file=log_file, grace_s=self.stop_timeout_s
            )
        except OSError as exc:
            log_file.close()
            raise ServerError(
                f"could not start vLLM for recipe {self.recipe_id}: {command[0]}: {exc}",
                log_path=log_path,
            ) from exc
        with self._lock:
            self._proc, self._log_file = proc, log_file
            self.command, self.log_path, self.port = command, log_path, port
        register(self)

        base_url = f"http://{HOST}:{port}"
        deadline = started + self.boot_timeout_s
        last_probe = "no probe yet"
        with httpx.Client(base_url=base_url, trust_env=False) as client:
            while True:
                if self._proc is not proc:
                    raise ServerError(
                        f"vLLM for recipe {self.recipe_id} was stopped during boot",
                        self.log_tail(),
                        log_path,
                    )
                proc.server_pid()  # known as soon as the supervisor has started vLLM
                if proc.server_exited():
                    self.stop()  # the supervisor clears the rest and exits with vLLM's code
                    code = proc.poll()
                    raise ServerError(
                        f"vLLM for recipe {self.recipe_id} exited with code "
                        f"{describe_exit_code(code)} during boot",
                        self.log_tail(),
                        log_path,
                    )
                ready, last_probe = self._probe(client, deadline)
                if ready and not proc.server_exited():
                    break
                now = time.monotonic()
                if now >= deadline:
                    self.stop()
                    raise ServerError(
                        f"vLLM for recipe {self.recipe_id} did not become ready within "
                        f"{self.boot_timeout_s:g}s (last readiness probe: {last_probe})",
                        self.log_tail(),
                        log_path,
                    )
                time.sleep(min(self.poll_interval_s, max(0.0, deadline - now)))
        self.boot_seconds = time.monotonic() - started
        log.info(
            "pytest-forge: vLLM for recipe %s ready on %s after %.1fs",
            self.recipe_id,
            base_url,
            self.boot_seconds,
        )
        proc.server_pid()  # noted now, while vLLM's process is the supervisor's only child
        if _vendor(self.recipe) == "cpu":
            # The largest source of run-to-run spread on the CPU path (cpu_affinity.py).
            self.placement = pin_engine_core(proc.pid)
            if self.placement:
                log.info("pytest-forge: %s", self.placement)
        self.endpoint = Endpoint(base_url, model=self.served_model_name, managed=True)
        return self.endpoint

    def _probe(self, client: httpx.Client, deadline: float) -> tuple[bool, str]:
        """Ready means serving: /v1/models lists our model and a 1-token completion works.

        /health turns green before the engine can generate, so it is not enough.
        """
        timeout = max(0.1, min(30.0, deadline - time.monotonic()))
        try:
            models = client.get("/v1/models", timeout=timeout)
            if models.status_code != 200:
                return False, f"GET /v1/models -> HTTP {models.status_code}"
            ids = [m.get("id") for m in models.json().get("data", []) if isinstance(m, dict)]
            if self.served_model_name not in ids:
                return False, f"GET /v1/models lists {ids}, not {self.served_model_name!r}"
            completion = client.post(
                "/v1/completions",
                json={
                    "model": self.served_model_name,
                    "prompt": "Hello",
                    "max_tokens": 1,
                    "temperature": 0,
                },
                timeout=max(0.1, min(60.0, deadline - time.monotonic())),
            )
            if completion.status_code != 200:
                return False, f"POST /v1/completions -> HTTP {completion.status_code}"
            if not completion.json().get("choices"):
                return False, "POST /v1/completions answered without choices"
        except (httpx.HTTPError, ValueError, AttributeError) as exc:
            return False, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        return True, "ready"

    def wait_until_idle(self) -> float:
        """Wait until the server's processes stop using CPU (see cpu_affinity); seconds."""
        pid = self.pid
        return wait_until_idle(pid) if pid is not None and _vendor(self.recipe) == "cpu" else 0.0

    def check_alive(self) -> None:
        """Raise ServerError with the log tail if the server died since it booted."""
        proc = self._proc
        if proc is None:
            raise ServerError(f"vLLM for recipe {self.recipe_id} is not running", "", self.log_path)
        if not proc.server_exited():
            return
        pid = proc.server_pid() or proc.pid
        self.stop()  # clears what is left of its tree; the supervisor exits with vLLM's code
        code = proc.poll()
        raise ServerError(
            f"vLLM for recipe {self.recipe_id} (pid {pid}) died with code "
            f"{describe_exit_code(code)} while serving",
            self.log_tail(),
            self.log_path,
        )

    def stop(self) -> None:
        """Stop every process of the server; safe to call any number of times."""
        with self._lock:
            proc, self._proc = self._proc, None
            log_file, self._log_file = self._log_file, None
            self.endpoint = None
        try:
            if proc is not None:
                proc.stop(f"recipe {self.recipe_id}")
        finally:
            if log_file is not None:
                log_file.close()
            unregister(self)

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The last ``lines`` lines of the server's log (empty before the first boot)."""
        if self._log_file is not None:
            with contextlib.suppress(ValueError):
                self._log_file.flush()
        return tail(self.log_path, lines)

    # -- context manager ---------------------------------------------------------------
    def __enter__(self) -> Endpoint:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"pid {self.pid}, port {self.port}" if self.is_running else "stopped"
        return f"<VllmServer recipe={self.recipe_id} {state}>"
