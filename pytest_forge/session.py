"""ForgeSession: owns a pytest run's forge state — servers, run directory, results.

One server per recipe: the first test of a recipe boots it, the recipe's collector tears it
down when pytest leaves that recipe (tests are grouped by recipe file). A boot failure is
remembered so the recipe's other tests fail at once with the same log tail, not re-boot.
"""

from __future__ import annotations

import datetime as _dt
import os
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from pytest_forge.ab import SideEndpoint, git_toplevel, recipe_at_ref, side_a_label
from pytest_forge.endpoint import ENDPOINT_KEY_ENV, Endpoint
from pytest_forge.errors import ForgeError, ServerError
from pytest_forge.hardware import HostHardware, backend_name, detect_hardware
from pytest_forge.options import CONFIG_KEY, ForgeConfig
from pytest_forge.pipeline import measured_with
from pytest_forge.recipe import MeasuredWith, Recipe
from pytest_forge.results import CaseResult
from pytest_forge.server import VllmServer
from pytest_forge.vllm_args import VllmArgSpec, installed_vllm_version, load_arg_spec
from pytest_forge.vllm_values import RecipeChecker


@dataclass
class _RecipeServer:
    server: VllmServer | None = None
    endpoint: Endpoint | None = None
    error: ServerError | None = None


@dataclass(frozen=True)
class Unmeasured:
    """A gate test that produced no measurement: it failed before one, or was skipped."""

    test: str  # the pytest node id
    outcome: str  # "failed" or "skipped"
    reason: str


@dataclass
class ForgeSession:
    """A pytest run's forge state: its servers, results and what was not measured."""

    config: ForgeConfig
    results: list[CaseResult] = field(default_factory=list)
    # So the step summary, results.json and the HTML report also say what was not measured
    # (a vLLM upgrade that breaks every boot must not produce an empty report).
    unmeasured: list[Unmeasured] = field(default_factory=list)
    # On a pytest-xdist controller: the workers' tune summaries and run stores.
    remote_tune_blocks: list[str] = field(default_factory=list)
    remote_tune_runs: list[Path] = field(default_factory=list)
    _servers: dict[str, _RecipeServer] = field(default_factory=dict)
    _arg_spec: VllmArgSpec | None = None
    _recipe_checker: RecipeChecker | None = None
    _hardware: HostHardware | None = None
    _run_dir: Path | None = None
    _endpoint_version: str | None = None
    _reference_recipes: dict[str, Recipe | None] = field(default_factory=dict)
    boots: int = 0

    # -- environment -------------------------------------------------------------------
    @property
    def arg_spec(self) -> VllmArgSpec:
        """The installed vLLM's arguments (else the bundled list, with a warning)."""
        if self._arg_spec is None:
            self._arg_spec = load_arg_spec()
            if self._arg_spec.warning:
                # Validation then uses the bundled 0.32 list: say so in pytest's summary.
                warnings.warn(self._arg_spec.warning, UserWarning, stacklevel=2)
        return self._arg_spec

    @property
    def recipe_checker(self) -> RecipeChecker:
        """Names and values of every recipe in recipes_dir, checked by vLLM in one subprocess
        the first time a recipe is checked (collection: before any boot)."""
        if self._recipe_checker is None:
            checker = RecipeChecker(self.arg_spec)
            checker.prefetch(sorted(self.config.recipes_dir.glob("*.y*ml")))
            if checker.warning:
                warnings.warn(checker.warning, UserWarning, stacklevel=2)
            self._recipe_checker = checker
        return self._recipe_checker

    @property
    def hardware(self) -> HostHardware:
        """This machine's accelerators, detected once."""
        if self._hardware is None:
            self._hardware = detect_hardware()
        return self._hardware

    @property
    def vllm_version(self) -> str | None:
        """The vLLM measured: the running endpoint's, else the installed one (None: none)."""
        if self.config.endpoint_url:
            return self._endpoint_version
        found = installed_vllm_version()
        return found[1] if found else None

    def measured_with(self) -> MeasuredWith:
        """Versions and hardware a baseline recorded now says it was measured with."""
        return measured_with(
            self.vllm_version, self.hardware.describe(), backend_name(self.hardware)
        )

    @property
    def run_dir(self) -> Path:
        """``<run_root>/gate/<timestamp>``: server logs of this gate run."""
        if self._run_dir is None:
            stamp = _dt.datetime.now().strftime("%Y-%m-%dT%H-%M-%S")
            path = self.config.run_root / "gate" / f"{stamp}_{os.getpid()}"
            path.mkdir(parents=True, exist_ok=True)
            self._run_dir = path
        return self._run_dir

    # -- servers -----------------------------------------------------------------------
    def endpoint_for(self, recipe: Recipe) -> tuple[Endpoint, VllmServer | None]:
        """The endpoint serving ``recipe``: booted once, reused by its other tests."""
        if self.config.endpoint_url:
            endpoint = Endpoint(
                self.config.endpoint_url,
                api_key=os.environ.get(ENDPOINT_KEY_ENV) or None,
                credentials=self.config.endpoint_credentials,
            )
            if self._endpoint_version is None:
                self._endpoint_version = _endpoint_version(endpoint)
            return endpoint, None
        return self._boot(str(recipe.path or recipe.id), recipe, None)

    def _boot(
        self, key: str, recipe: Recipe, python: str | None
    ) -> tuple[Endpoint, VllmServer | None]:
        slot = self._servers.setdefault(key, _RecipeServer())
        if slot.error is not None:
            raise ServerError(
                f"the server for recipe {recipe.id} failed to boot earlier in this run: "
                f"{slot.error.message}",
                slot.error.log_tail,
                slot.error.log_path,
            )
        if slot.endpoint is None:
            server = VllmServer(
                recipe,
                self.run_dir,
                boot_timeout_s=self.config.boot_timeout_s,
                extra_env=self.device_env(recipe),
                python=python or sys.executable,
            )
            self.boots += 1
            try:
                slot.endpoint = server.start()
            except ServerError as exc:
                slot.error = exc
                raise
            slot.server = server
        return slot.endpoint, slot.server

    @property
    def live_servers(self) -> set[str]:
        """The keys of the servers up now."""
        return {k for k, slot in self._servers.items() if slot.endpoint is not None}

    def device_env(self, recipe: Recipe) -> dict[str, str]:
        """Under pytest-xdist, worker i owns the i-th equal share of the visible GPUs and
        runs each recipe on the first ``hardware.count`` GPUs of its share. Shares are
        fixed per worker (not sized by each recipe), so two workers never overlap."""
        worker = os.environ.get("PYTEST_XDIST_WORKER", "")
        if not worker.startswith("gw") or recipe.hardware.vendor == "cpu":
            return {}
        index = int(worker[2:])
        workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or index + 1)
        var = (
            "CUDA_VISIBLE_DEVICES" if recipe.hardware.vendor == "nvidia" else "HIP_VISIBLE_DEVICES"
        )
        visible = os.environ.get(var)
        devices = (
            [d for d in visible.split(",") if d]
            if visible
            else [str(i) for i in range(self.hardware.count)]
        )
        share = len(devices) // max(workers, 1)
        count = recipe.hardware.count
        if count > share:
            raise ForgeError(
                f"pytest-xdist worker {worker} needs {count} {recipe.hardware.vendor} GPU(s) "
                f"for recipe {recipe.id}, but {len(devices)} visible GPU(s) over {workers} "
                f"workers give each {share}: run fewer workers (-n {len(devices) // count})"
            )
        return {var: ",".join(devices[index * share : index * share + count])}

    # -- A/B ---------------------------------------------------------------------------
    @property
    def ab(self) -> bool:
        """Whether this run measures A/B (--forge-ab-ref or --forge-ab-python)."""
        return bool(self.config.ab_ref or self.config.ab_python)

    def reference_recipe(self, recipe: Recipe) -> Recipe | None:
        """Side A's recipe: the file at --forge-ab-ref, else the same recipe."""
        if not self.config.ab_ref:
            return recipe
        key = str(recipe.path)
        if key not in self._reference_recipes:
            root = git_toplevel(recipe.path.parent if recipe.path else Path.cwd())
            self._reference_recipes[key] = recipe_at_ref(recipe, self.config.ab_ref, root)
        return self._reference_recipes[key]

    def reference_label(self, recipe: Recipe) -> str:
        """What side A is, as the report names it."""
        return side_a_label(recipe, self.config.ab_ref, self.config.ab_python)

    def ab_side_live(self, recipe_b: Recipe, side: str) -> bool:
        """Whether the server of one A/B side of this recipe is up."""
        return f"{recipe_b.path or recipe_b.id}#{side}" in self.live_servers

    def ab_endpoint(self, recipe_b: Recipe, recipe_a: Recipe, side: str) -> SideEndpoint:
        """The live server of one side, booted on demand. At level "boot" only one side of
        a recipe is up at a time: asking for the other stops this one first."""
        base = str(recipe_b.path or recipe_b.id)
        key, other = f"{base}#{side}", f"{base}#{'B' if side == 'A' else 'A'}"
        if self.config.ab_level == "boot":
            self.stop_server(other)
        booted = key not in self.live_servers
        python = self.config.ab_python if side == "A" and self.config.ab_python else None
        endpoint, server = self._boot(key, recipe_a if side == "A" else recipe_b, python)
        return SideEndpoint(
            endpoint,
            server.check_alive if server else None,
            fresh=booted,
            settle=server.wait_until_idle if server else None,
        )

    def stop_server(self, recipe_key: str) -> None:
        """Stop the recipe's server(s): the gate's, and both sides of an A/B run."""
        for key in (recipe_key, f"{recipe_key}#A", f"{recipe_key}#B"):
            slot = self._servers.get(key)
            if slot is not None and slot.server is not None:
                slot.server.stop()
                slot.server = None
                slot.endpoint = None

    def stop_all(self) -> None:
        """Stop every server this session booted."""
        for key in list(self._servers):
            self.stop_server(key)


def _endpoint_version(endpoint: Endpoint) -> str | None:
    try:
        response = httpx.get(
            f"{endpoint.url}/version", headers=endpoint.headers, auth=endpoint.auth, timeout=10
        )
        if response.status_code == 200:
            return str(response.json().get("version"))
    except (httpx.HTTPError, ValueError):
        pass
    return None


def check_recipe(recipe: Recipe, session: ForgeSession) -> None:
    """Fail fast, before any boot, on args the installed vLLM doesn't know or whose values
    its parser refuses; only this recipe's tests fail."""
    if session.config.endpoint_url:
        return
    session.recipe_checker.check(recipe)


SESSION_KEY = pytest.StashKey[ForgeSession]()


def forge_session(config: pytest.Config) -> ForgeSession:
    """The run's ForgeSession, created on first use (a recipe collected, a forge test's
    report arriving): a run without recipes never imports what it needs."""
    session = config.stash.get(SESSION_KEY, None)
    if session is None:
        session = config.stash[SESSION_KEY] = ForgeSession(config.stash[CONFIG_KEY])
    return session


def existing_session(config: pytest.Config) -> ForgeSession | None:
    """The run's ForgeSession if one was created, without creating one."""
    return config.stash.get(SESSION_KEY, None)


__all__ = [
    "SESSION_KEY",
    "ForgeConfig",
    "ForgeSession",
    "Unmeasured",
    "check_recipe",
    "existing_session",
    "forge_session",
]
