"""Strict mode, latency regressions, repeats added until decided, and A/B against fakes.

The statistics themselves are tested in test_stats.py; real vLLM runs in tests/e2e.
"""

from __future__ import annotations

import json
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from pytest_forge.ab import SideEndpoint, recipe_at_ref, round_order, run_ab_case
from pytest_forge.endpoint import Endpoint
from pytest_forge.errors import ForgeError
from pytest_forge.pipeline import GateOptions, run_case
from pytest_forge.recipe import Recipe
from pytest_forge.report import markdown_summary
from pytest_forge.results import CaseResult
from pytest_forge.workload import Workload, load_workload
from tests.fakes.fake_openai_server import FakeServer, running_fake_server
from tests.unit.test_plugin import CACHE, SIDE, _run, _workload

pytest_plugins = ["pytester"]

# The fake's sub-millisecond latencies are noise except where a test makes one slow.
RECIPE = """\
id: {id}
model: fake-model
hardware: {{vendor: {vendor}}}
gates:
  accuracy_scorer: agreement
  latency_tolerance: {latency}
"""
NOISY_LATENCY = "9"


@pytest.fixture
def fake() -> Iterator[FakeServer]:
    with running_fake_server(token_delay_s=0.001) as server:
        yield server


@pytest.fixture
def project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    monkeypatch.setenv("FORGE_CACHE_DIR", CACHE)
    monkeypatch.delenv("CI", raising=False)
    (pytester.path / "recipes").mkdir()
    (pytester.path / "workloads").mkdir()
    (pytester.path / "recipes" / "alpha.yaml").write_text(
        RECIPE.format(id="alpha", vendor="cpu", latency=NOISY_LATENCY)
    )
    (pytester.path / "workloads" / "short.jsonl").write_text(_workload(6))
    (pytester.path / "workloads" / "short.yaml").write_text(SIDE)
    return pytester


def _results_json(project: pytest.Pytester) -> dict:
    found = sorted((project.path / ".forge" / "gate").glob("*/results.json"))
    return json.loads(found[-1].read_text())


# ------------------------------------------------------------------ strict mode


def test_strict_fails_a_test_without_a_baseline_and_names_the_fix(
    project: pytest.Pytester, fake: FakeServer
) -> None:
    result = _run(project, fake, "--forge-strict")
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    assert "not judged (strict mode)" in out and "no committed baseline" in out
    assert "--forge-update-baselines" in out and "--forge-ab-ref" in out
    doc = _results_json(project)
    assert (doc["judged"], doc["not_judged"]) == (0, 1)


def test_ci_makes_strict_the_default_and_no_strict_opts_out(
    project: pytest.Pytester, fake: FakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CI", "true")
    _run(project, fake).assert_outcomes(failed=1)
    lenient = _run(project, fake, "--forge-no-strict")
    lenient.assert_outcomes(passed=1)
    # Outside strict mode the run still says, loudly, that nothing was judged.
    assert "WARNING: 0 of 1 gate test(s) judged" in lenient.stdout.str()
    assert "1 NOT judged" in lenient.stdout.str()


def test_strict_and_no_strict_together_is_a_usage_error(project: pytest.Pytester) -> None:
    result = project.runpytest_subprocess("--forge-strict", "--forge-no-strict")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "contradict" in result.stderr.str()


def test_strict_fails_a_recipe_for_other_hardware_instead_of_skipping(
    project: pytest.Pytester,
) -> None:
    (project.path / "recipes" / "alpha.yaml").write_text(
        RECIPE.format(id="alpha", vendor="nvidia", latency=NOISY_LATENCY)
    )
    lenient = project.runpytest_subprocess("-p", "no:cacheprovider")
    lenient.assert_outcomes(skipped=1)
    strict = project.runpytest_subprocess("-p", "no:cacheprovider", "--forge-strict")
    strict.assert_outcomes(failed=1)
    out = strict.stdout.str()
    assert "needs other hardware" in out and "pytest -k 'not alpha'" in out
    doc = _results_json(project)
    assert (doc["judged"], doc["not_judged"]) == (0, 1)


def test_a_judged_run_counts_as_judged_everywhere(
    project: pytest.Pytester, fake: FakeServer
) -> None:
    _run(project, fake, "--forge-update-baselines").assert_outcomes(passed=1)
    gate = _run(project, fake, "--forge-strict", "--forge-tolerance=0.9", "--junitxml=j.xml")
    gate.assert_outcomes(passed=1)
    assert "1 of 1 gate test(s) judged" in gate.stdout.str()
    doc = _results_json(project)
    assert (doc["judged"], doc["not_judged"]) == (1, 0)
    row = doc["results"][0]
    throughput = row["comparisons"]["throughput"]
    assert throughput["ci_low"] <= throughput["ratio"] <= throughput["ci_high"]
    assert throughput["outcome"] == "pass" and not throughput["paired"]
    props = {
        p.get("name"): p.get("value") for p in ET.parse(project.path / "j.xml").iter("property")
    }
    assert props["judged"] == "True" and props["throughput_outcome"] == "pass"
    assert float(props["throughput_ci_low"]) <= float(props["throughput_ci_high"])


# ------------------------------------------------------------------ latency


def test_a_latency_regression_fails_against_the_baseline(
    project: pytest.Pytester, fake: FakeServer
) -> None:
    # TTFT is judged at the default 15 % (p50) and 30 % (p99); the rest is the fake's noise.
    latency = "{ttft_p50_ms: 0.15, ttft_p99_ms: 0.3, tpot_p50_ms: 9, tpot_p99_ms: 9, " + (
        "itl_p50_ms: 9, itl_p99_ms: 9, e2el_p50_ms: 9, e2el_p99_ms: 9}"
    )
    (project.path / "recipes" / "alpha.yaml").write_text(
        RECIPE.format(id="alpha", vendor="cpu", latency=latency)
    )
    fake.knobs.ttft_delay_s = 0.005
    _run(project, fake, "--forge-update-baselines", "--forge-repeats=3").assert_outcomes(passed=1)
    fake.knobs.ttft_delay_s = 0.05  # 10x slower first token; throughput barely moves
    gate = _run(project, fake, "--forge-repeats=3", "--forge-tolerance=0.9")
    gate.assert_outcomes(failed=1)
    out = gate.stdout.str()
    assert "ttft_p50_ms now" in out and "vs baseline" in out
    assert "above 1 + tolerance 15% = 1.15 with confidence" in out
    assert "baseline measured with vLLM 0.0.0-fake" in out
    fake.knobs.ttft_delay_s = 0.005
    _run(project, fake, "--forge-repeats=3", "--forge-tolerance=0.9").assert_outcomes(passed=1)


# ------------------------------------------------------------------ more repeats


def _recipe(tmp_path: Path, text: str) -> Recipe:
    path = tmp_path / "recipes" / "alpha.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return Recipe.load(path)


def _load_workload(tmp_path: Path, repeats: int = 2) -> Workload:
    (tmp_path / "w.jsonl").write_text(_workload(6))
    (tmp_path / "w.yaml").write_text(
        f"mode: closed\nconcurrency: 2\nwarmup: 1\nrepeats: {repeats}\n"
    )
    return load_workload(tmp_path / "w.jsonl")


def test_an_inconclusive_verdict_adds_repeats_up_to_the_limit(
    tmp_path: Path, fake: FakeServer
) -> None:
    # A baseline whose own repeats spread 1:6 can neither clear nor convict anything.
    base = RECIPE.format(id="alpha", vendor="cpu", latency=NOISY_LATENCY) + (
        "baselines:\n  w:\n    output_throughput: 1500\n    repeats: 3\n    cv: 0.7\n"
        "    samples: {output_throughput: [500, 1500, 3000]}\n    measured_with: "
        "{vllm: x, pytest_forge: x, hardware: x, backend: cpu, date: x}\n"
    )
    recipe = _recipe(tmp_path, base)
    workload = _load_workload(tmp_path)
    options = GateOptions(max_repeats=5, tolerance=0.05)
    result = run_case(recipe, workload, Endpoint(fake.url), options, vllm_version="x")
    assert len(result.measurement.repeats) == 5  # 2, then added until the limit
    assert result.verdict.status == "inconclusive"
    assert "too noisy to decide" in result.verdict.undecided_message()
    # One warmup request only: added repeats reuse the running, warm server.
    assert fake.stats.requests == 1 + 5 * 6


# ------------------------------------------------------------------ A/B


def _ab(
    tmp_path: Path,
    a: FakeServer,
    b: FakeServer,
    *,
    tolerance: float,
    max_repeats: int = 8,
    gates: str = "",
) -> CaseResult:
    text = RECIPE.format(id="alpha", vendor="cpu", latency=NOISY_LATENCY) + gates
    recipe = _recipe(tmp_path, text)
    workload = _load_workload(tmp_path)
    fresh = {"A", "B"}

    def endpoints(side: str) -> SideEndpoint:
        server = a if side == "A" else b
        booted = side in fresh
        fresh.discard(side)
        return SideEndpoint(Endpoint(server.url), None, fresh=booted)

    options = GateOptions(tolerance=tolerance, max_repeats=max_repeats)
    return run_ab_case(recipe, recipe, workload, endpoints, options, reference_label="A = x")


def test_rounds_alternate_abba() -> None:
    assert [round_order(i) for i in range(4)] == [("A", "B"), ("B", "A"), ("A", "B"), ("B", "A")]


def test_ab_same_server_on_both_sides_passes(tmp_path: Path, fake: FakeServer) -> None:
    result = _ab(tmp_path, fake, fake, tolerance=0.25)
    verdict = result.verdict
    assert verdict.status == "pass", verdict.failure_message() + verdict.undecided_message()
    assert verdict.mode == "ab" and result.reference is not None
    assert len(result.reference.repeats) == len(result.measurement.repeats) >= 4
    c = verdict.comparison()
    assert c is not None and c["paired"] and c["ci_low"] >= 0.75
    assert result.accuracy is not None and result.accuracy.value == 1.0  # B agrees with A


def test_ab_a_slower_side_b_fails_with_a_b_and_the_interval(tmp_path: Path) -> None:
    with (
        running_fake_server(token_delay_s=0.001) as a,
        running_fake_server(token_delay_s=0.002) as b,
    ):
        result = _ab(tmp_path, a, b, tolerance=0.05)
    verdict = result.verdict
    assert verdict.status == "fail"
    message = verdict.failure_message()
    assert "throughput: output_throughput B" in message and "vs A" in message
    assert "paired" in message and "CI" in message and "interleaved rounds" in message
    c = verdict.comparison()
    assert c is not None and c["ci_high"] < 0.95 and c["ratio"] < 0.8
    # The step summary shows A, B, the ratio and its interval for every judged metric.
    summary = markdown_summary([result])
    assert "Against the reference, per metric" in summary
    (row,) = [line for line in summary.splitlines() if "| output_throughput |" in line]
    assert "| A " in row and "| B " in row and "[" in row and "| fail |" in row
    assert sum("| alpha / w |" in line for line in summary.splitlines()) >= 5  # + latencies


def test_ab_agreement_compares_b_with_a_from_the_same_run(tmp_path: Path) -> None:
    def other(prompt: str, n: int) -> list[str]:
        return ["zz"] * n

    with (
        running_fake_server(token_delay_s=0.001) as a,
        running_fake_server(token_delay_s=0.001, output_text=other) as b,
    ):
        floor = "  accuracy_floor: 0.9\n"
        result = _ab(tmp_path, a, b, tolerance=0.5, max_repeats=4, gates=floor)
    assert result.accuracy is not None and result.accuracy.value == 0.0
    assert not result.verdict.passed
    assert "accuracy 0.000 (agreement) < floor 0.9" in result.verdict.failure_message()


# ------------------------------------------------------------------ git ref


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)


def test_recipe_at_ref_reads_the_committed_version(tmp_path: Path) -> None:
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "config", "user.email", "t@example.com")
    _git(tmp_path, "config", "user.name", "t")
    text = RECIPE.format(id="alpha", vendor="cpu", latency=NOISY_LATENCY)
    recipe = _recipe(tmp_path, text + "config: {max_num_seqs: 16}\n")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "commit", "-q", "-m", "a")
    recipe = _recipe(tmp_path, text + "config: {max_num_seqs: 64}\n")
    old = recipe_at_ref(recipe, "HEAD", tmp_path)
    assert old is not None and old.config == {"max_num_seqs": 16}
    assert recipe.config == {"max_num_seqs": 64}
    new = tmp_path / "recipes" / "beta.yaml"
    new.write_text(RECIPE.format(id="beta", vendor="cpu", latency=NOISY_LATENCY))
    assert recipe_at_ref(Recipe.load(new), "HEAD", tmp_path) is None  # new in the change
    with pytest.raises(ForgeError, match="not a commit"):
        recipe_at_ref(recipe, "no-such-branch", tmp_path)


def test_ab_options_are_checked_at_start_up(project: pytest.Pytester, fake: FakeServer) -> None:
    both = _run(project, fake, "--forge-ab-ref", "HEAD")
    assert both.ret == pytest.ExitCode.USAGE_ERROR and "--forge-endpoint" in both.stderr.str()
    level = project.runpytest_subprocess("--forge-ab-level", "sideways")
    assert level.ret == pytest.ExitCode.USAGE_ERROR and "repeat" in level.stderr.str()
    python = project.runpytest_subprocess("--forge-ab-python", "/no/such/python")
    assert (
        python.ret == pytest.ExitCode.USAGE_ERROR and "no such interpreter" in python.stderr.str()
    )


def test_baseline_samples_are_written_on_one_line_each(
    project: pytest.Pytester, fake: FakeServer
) -> None:
    _run(project, fake, "--forge-update-baselines").assert_outcomes(passed=1)
    text = (project.path / "recipes" / "alpha.yaml").read_text()
    assert "    samples:\n      output_throughput: [" in text
    data = yaml.safe_load(text)
    samples = data["baselines"]["short"]["samples"]
    assert len(samples["output_throughput"]) == data["baselines"]["short"]["repeats"] == 2
    assert "ttft_p99_ms" in samples and "tpot_p50_ms" in samples


def test_bad_option_values_are_usage_errors_at_start_up(project: pytest.Pytester) -> None:
    ini_file = project.makeini("[pytest]\nforge_repeats = abc\n")
    ini = project.runpytest_subprocess()
    assert ini.ret == pytest.ExitCode.USAGE_ERROR
    assert "forge_repeats = 'abc': expected an integer" in ini.stderr.str()
    ini_file.unlink()
    objective = project.runpytest_subprocess("--forge-objective=speed")
    assert objective.ret == pytest.ExitCode.USAGE_ERROR
    assert "throughput, goodput, latency" in objective.stderr.str()
    missing = project.runpytest_subprocess("--forge-recipes=nonexistent")
    assert missing.ret == pytest.ExitCode.USAGE_ERROR
    assert "--forge-recipes nonexistent: no such directory" in missing.stderr.str()
