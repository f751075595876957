"""The pytest plugin end to end against a fast fake OpenAI-compatible server (--forge-endpoint).

Real vLLM runs in tests/e2e; here the point is the plugin's behaviour: collection, ids,
verdicts, baselines, reports, and bad input isolated to its own tests.
"""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.fakes.fake_openai_server import FakeServer, running_fake_server

pytest_plugins = ["pytester"]

RECIPE = """\
# a user's comment that must survive baseline updates
id: {id}
model: fake-model
hardware:
  vendor: cpu
config:
  max_num_seqs: 8   # inline comment
gates:
  accuracy_scorer: agreement
  latency_tolerance: 9  # the fake's sub-millisecond latencies are noise, not a signal
"""

# pytester points HOME at a temp dir; keep the real cache so vLLM's args are introspected
# once per machine, not once per test.
CACHE = os.environ.get("FORGE_CACHE_DIR") or str(Path.home() / ".cache" / "pytest-forge")

SIDE = "mode: closed\nconcurrency: 2\nwarmup: 1\nrepeats: 2\n"


def _workload(n: int, tokens: int = 8) -> str:
    return "".join(
        json.dumps({"id": f"r{i}", "prompt": f"prompt {i}", "expected_output_tokens": tokens})
        + "\n"
        for i in range(n)
    )


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeServer]:
    with running_fake_server(token_delay_s=0.0005) as server:
        yield server


@pytest.fixture
def project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    monkeypatch.setenv("FORGE_CACHE_DIR", CACHE)
    # Strict mode is on by default under CI: tests choose it explicitly.
    monkeypatch.delenv("CI", raising=False)
    (pytester.path / "recipes").mkdir()
    (pytester.path / "workloads").mkdir()
    (pytester.path / "recipes" / "alpha.yaml").write_text(RECIPE.format(id="alpha"))
    (pytester.path / "recipes" / "beta.yaml").write_text(RECIPE.format(id="beta"))
    for name, n in (("short", 4), ("long", 6)):
        (pytester.path / "workloads" / f"{name}.jsonl").write_text(_workload(n))
        (pytester.path / "workloads" / f"{name}.yaml").write_text(SIDE)
    return pytester


def _run(project: pytest.Pytester, fake: FakeServer, *args: str) -> pytest.RunResult:
    return project.runpytest_subprocess(
        "-p", "no:cacheprovider", f"--forge-endpoint={fake.url}", *args
    )


def _junit(path: Path) -> dict[str, ET.Element]:
    root = ET.parse(path).getroot()
    return {tc.get("name"): tc for tc in root.iter("testcase")}


def _props(tc: ET.Element) -> dict[str, str]:
    return {p.get("name"): p.get("value") for p in tc.iter("property")}


def test_collect_one_test_per_recipe_and_workload(project: pytest.Pytester) -> None:
    result = project.runpytest_subprocess("--collect-only", "-q", "-p", "no:cacheprovider")
    ids = [line for line in result.outlines if "::" in line]
    assert sorted(ids) == [
        "recipes/alpha.yaml::long",
        "recipes/alpha.yaml::short",
        "recipes/beta.yaml::long",
        "recipes/beta.yaml::short",
    ]


def test_gate_without_baseline_measures_and_says_so(
    project: pytest.Pytester, fake: FakeServer
) -> None:
    result = _run(project, fake, "--junitxml=junit.xml", "-k", "alpha")
    result.assert_outcomes(passed=2)
    out = result.stdout.str()
    assert "pytest-forge summary" in out
    assert "no baseline" in out
    assert "--forge-update-baselines" in out
    cases = _junit(project.path / "junit.xml")
    props = _props(cases["short"])
    # xunit2 (pytest's default family) still carries the metrics as properties.
    assert float(props["output_throughput"]) > 0
    for key in ("ttft_p99_ms", "tpot_p99_ms", "vllm_version", "accuracy", "verdict"):
        assert key in props
    assert props["verdict"] == "no-baseline"


def test_update_baselines_then_gate_then_raised_baseline_fails(
    project: pytest.Pytester, fake: FakeServer
) -> None:
    recipe_path = project.path / "recipes" / "alpha.yaml"
    update = _run(project, fake, "-k", "alpha", "--forge-update-baselines")
    update.assert_outcomes(passed=2)
    summary = update.stdout.str().split("pytest-forge summary", 1)[1]
    assert summary.count("new baseline") == 2 and summary.count("RECORDED") == 2

    text = recipe_path.read_text()
    assert "# a user's comment that must survive baseline updates" in text
    assert "# inline comment" in text
    data = yaml.safe_load(text)
    for name in ("short", "long"):
        base = data["baselines"][name]
        assert base["output_throughput"] > 0
        assert base["repeats"] == 2
        assert set(base["measured_with"]) == {
            "vllm",
            "pytest_forge",
            "hardware",
            "backend",
            "date",
        }
    # agreement needs recorded greedy outputs beside the recipe
    assert (project.path / "recipes" / "alpha.outputs" / "short.jsonl").is_file()

    # the committed baseline now gates (generous tolerance: the fake is fast and noisy)
    # (--forge-max-repeats: no repeats added to settle the fake's noise, so counts are exact)
    gate = _run(
        project,
        fake,
        "-k",
        "alpha",
        "--forge-tolerance=0.9",
        "--forge-max-repeats=2",
        "--junitxml=gate.xml",
    )
    gate.assert_outcomes(passed=2)
    # --forge-repeats on the command line overrides the sidecar's `repeats: 2`
    more = _run(
        project,
        fake,
        "-k",
        "alpha and short",
        "--forge-repeats=4",
        "--forge-tolerance=0.9",
        "--forge-max-repeats=4",
        "--junitxml=r4.xml",
    )
    more.assert_outcomes(passed=1)
    assert _props(_junit(project.path / "gate.xml")["short"])["repeats"] == "2"
    assert _props(_junit(project.path / "r4.xml")["short"])["repeats"] == "4"

    short = data["baselines"]["short"]
    short["output_throughput"] *= 3  # far beyond the fake's noise
    # ... and so is every repeat the baseline kept (the verdict tests against those).
    short["samples"]["output_throughput"] = [3 * v for v in short["samples"]["output_throughput"]]
    recipe_path.write_text(yaml.safe_dump(data, sort_keys=False))
    result = _run(project, fake, "-k", "alpha", "--forge-tolerance=0.05")
    result.assert_outcomes(passed=1, failed=1)
    out = result.stdout.str()
    assert "alpha x short" in out
    assert "output_throughput" in out and "baseline" in out and "tolerance 5%" in out


def test_update_baselines_re_records_outputs_that_drifted(
    project: pytest.Pytester, fake: FakeServer
) -> None:
    _run(project, fake, "-k", "beta", "--forge-update-baselines").assert_outcomes(passed=2)
    recorded = project.path / "recipes" / "beta.outputs" / "short.jsonl"
    good = recorded.read_text()
    # Outputs drift (a vLLM upgrade, other CPU kernels): agreement now breaks the floor.
    lines = [json.loads(line) for line in good.splitlines()]
    drifted = [{**row, "text": "something else entirely"} for row in lines]
    recorded.write_text("".join(json.dumps(row) + "\n" for row in drifted))
    gate = _run(project, fake, "-k", "beta", "--forge-accuracy-floor=0.9", "--forge-tolerance=0.9")
    gate.assert_outcomes(passed=1, failed=1)
    assert "accuracy" in gate.stdout.str() and "floor 0.9" in gate.stdout.str()

    # Updating is the snapshot update: the new outputs become the reference, and the
    # summary says how far they had moved.
    update = _run(
        project, fake, "-k", "beta", "--forge-update-baselines", "--forge-accuracy-floor=0.9"
    )
    update.assert_outcomes(passed=2)
    out = update.stdout.str()
    assert out.count("agreement with the previous recording was") == 1  # only short moved
    assert "short.jsonl" in out.split("agreement with the previous recording was", 1)[1]
    assert recorded.read_text() == good
    again = _run(project, fake, "-k", "beta", "--forge-accuracy-floor=0.9", "--forge-tolerance=0.9")
    again.assert_outcomes(passed=2)


def test_accuracy_floor_above_one_fails(project: pytest.Pytester, fake: FakeServer) -> None:
    _run(project, fake, "-k", "beta", "--forge-update-baselines").assert_outcomes(passed=2)
    result = _run(project, fake, "-k", "beta", "--forge-accuracy-floor=1.5")
    result.assert_outcomes(failed=2)
    assert "floor 1.5" in result.stdout.str()


def test_bad_recipe_and_bad_workload_line_fail_alone(
    project: pytest.Pytester, fake: FakeServer
) -> None:
    (project.path / "recipes" / "broken.yaml").write_text("id: broken\nmodel: x\nhardwre: {}\n")
    (project.path / "workloads" / "bad.jsonl").write_text(
        _workload(2) + '{"prompt": "x", "expected_output_tokens": "many"}\n'
    )
    result = _run(project, fake, "--junitxml=junit.xml")
    out = result.stdout.str()
    # alpha/beta x short/long pass; alpha/beta x bad fail naming file:line; broken fails.
    result.assert_outcomes(passed=4, failed=3)
    assert "bad.jsonl:3" in out and "expected_output_tokens" in out
    assert "broken.yaml" in out and "hardwre" in out


def test_unknown_vllm_arg_fails_before_boot(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    (project.path / "recipes" / "old.yaml").write_text(
        RECIPE.format(id="old").replace("max_num_seqs: 8", "swap_space: 4")
    )
    summary = project.path / "step_summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    result = project.runpytest_subprocess(
        "-p", "no:cacheprovider", "-k", "old", "--forge-boot-timeout=1"
    )
    result.assert_outcomes(failed=2)
    out = result.stdout.str()
    assert "swap_space" in out and "0.32" in out
    assert "vLLM server boot" not in out  # nothing was booted
    # Nothing measured, and the CI step summary still says which tests and why.
    md = summary.read_text()
    assert "no test measured anything" in md and "Not measured:" in md
    assert "`recipes/old.yaml::short` | FAILED |" in md and "swap_space" in md
    doc = json.loads(next((project.path / ".forge" / "gate").glob("*/results.json")).read_text())
    assert {u["test"] for u in doc["not_measured"]} == {
        "recipes/old.yaml::short",
        "recipes/old.yaml::long",
    }


def test_recipe_for_other_hardware_is_skipped(project: pytest.Pytester) -> None:
    (project.path / "recipes" / "gpu.yaml").write_text(
        RECIPE.format(id="gpu").replace("vendor: cpu", "vendor: nvidia\n  gpu_type: H100")
    )
    result = project.runpytest_subprocess("-p", "no:cacheprovider", "-k", "gpu", "-rs")
    result.assert_outcomes(skipped=2)
    assert "needs other hardware" in result.stdout.str()


def test_recipe_with_quantization_its_hardware_cannot_run_is_skipped(
    project: pytest.Pytester,
) -> None:
    # seeds/001's table: no quantization on CPU (FP8 needs SM 9.0 / MI300X).
    (project.path / "recipes" / "q.yaml").write_text(
        RECIPE.format(id="q") + "quant: {method: fp8}\n"
    )
    result = project.runpytest_subprocess("-p", "no:cacheprovider", "-k", "q", "-rs")
    result.assert_outcomes(skipped=2)
    assert "quant.method on this runner: fp8 needs a GPU" in result.stdout.str()


def test_reports_benchmark_json_step_summary_and_action_benchmark(
    project: pytest.Pytester, fake: FakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    summary = project.path / "step_summary.md"
    summary.write_text("earlier step\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    # Run inside an xdist worker, the inner pytest would inherit the worker's variables
    # and act as a worker itself (no benchmark JSON, no session-end reports).
    for name in ("PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT", "PYTEST_XDIST_TESTRUNUID"):
        monkeypatch.delenv(name, raising=False)
    result = _run(
        project,
        fake,
        "-k",
        "alpha and short",
        # Absolute: under xdist the in-process run's working directory is not the project's.
        f"--benchmark-json={project.path / 'bench.json'}",
        f"--forge-bench-json={project.path / 'gab.json'}",
    )
    result.assert_outcomes(passed=1)

    bench = json.loads((project.path / "bench.json").read_text())
    (entry,) = bench["benchmarks"]
    assert entry["stats"]["rounds"] == 2  # each repeat a round
    assert entry["extra_info"]["output_throughput"] > 0
    assert entry["extra_info"]["workload"] == "short"

    md = summary.read_text()
    assert md.startswith("earlier step\n")  # appended, not overwritten
    assert "| alpha | short |" in md

    bigger = json.loads((project.path / "gab.json").read_text())
    smaller = json.loads((project.path / "gab.smaller.json").read_text())
    assert any(e["name"] == "alpha/short output_throughput" for e in bigger)
    assert all(e["unit"] == "ms" for e in smaller)


def test_tune_with_a_bad_agent_spec_fails_each_slot_and_creates_no_run(
    project: pytest.Pytester,
) -> None:
    result = project.runpytest_subprocess(
        "-p",
        "no:cacheprovider",
        "-k",
        "alpha",
        "--forge-tune",
        "--forge-agent=bogus/x",
        "--forge-budget=2",
    )
    out = result.stdout.str()
    assert result.ret != 0
    assert "bogus" in out
    runs = project.path / ".forge" / "runs"
    assert not runs.exists() or list(runs.iterdir()) == []  # nothing to --forge-resume


def test_forge_marker_selects_and_deselects_every_forge_test(project: pytest.Pytester) -> None:
    project.makepyfile(test_other="def test_other():\n    pass\n")
    (project.path / "recipes" / "broken.yaml").write_text("id: broken\nmodel: x\nhardwre: {}\n")

    def ids(*args: str) -> list[str]:
        result = project.runpytest_subprocess(
            "--co", "-q", "-p", "no:cacheprovider", "--strict-markers", *args
        )
        assert result.ret == 0, result.stdout.str() + result.stderr.str()
        return sorted(line for line in result.outlines if "::" in line)

    gate = ids("-m", "forge")
    assert "recipes/broken.yaml::recipe" in gate  # an error item is a forge test too
    assert len(gate) == 5 and all(i.startswith("recipes/") for i in gate)
    assert ids("-m", "not forge") == ["test_other.py::test_other"]
    tune = ("--forge-tune", "--forge-agent=playbook", "--forge-budget=1")
    tune_ids = ids("-m", "forge", *tune)
    assert "recipes/alpha.yaml::tune[baseline]" in tune_ids
    assert "recipes/beta.yaml::tune[winner]" in tune_ids
    assert ids("-m", "not forge", *tune) == ["test_other.py::test_other"]
    markers = project.runpytest_subprocess("--markers", "-p", "no:cacheprovider")
    assert any(line.startswith("@pytest.mark.forge:") for line in markers.outlines)


def test_outputs_are_written_without_the_terminal(
    project: pytest.Pytester, fake: FakeServer
) -> None:
    # Before: written from the terminal summary, so -p no:terminal left only JUnit.
    result = _run(project, fake, "-p", "no:terminal", "-k", "alpha", "--junitxml=junit.xml")
    assert result.ret == 0, result.stderr.str()
    (path,) = (project.path / ".forge" / "gate").glob("*/results.json")
    doc = json.loads(path.read_text())
    assert {(r["recipe"], r["workload"]) for r in doc["results"]} == {
        ("alpha", "short"),
        ("alpha", "long"),
    }
    assert set(_junit(project.path / "junit.xml")) == {"short", "long"}


HEAVY = ("numpy", "httpx", "pydantic", "scipy", "aiohttp", "anthropic")
# Prints the heavy modules (and pytest-forge's session module) loaded after running code.
PROBE = (
    "import sys\n{code}\n"
    "print(sorted(m for m in sys.modules if m.split('.')[0] in {heavy!r}"
    " or m == 'pytest_forge.session'))\n"
)


def _loaded_after(code: str, cwd: Path) -> list[str]:
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", PROBE.format(code=code, heavy=HEAVY)],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1].replace("'", '"'))


def test_the_plugin_imports_nothing_heavy_until_a_recipe_is_collected(
    pytester: pytest.Pytester,
) -> None:
    """pytest loads the plugin in every run: a repository without recipes (or with other
    YAML under recipes/) must not pay for numpy, httpx, pydantic and the rest."""
    assert _loaded_after("import pytest_forge.plugin", pytester.path) == []
    pytester.makepyfile(test_one="def test_one():\n    pass\n")
    (pytester.path / "recipes").mkdir()
    (pytester.path / "recipes" / "pancakes.yaml").write_text("flour: 200g\n")
    run = "import pytest\nassert pytest.main(['-q', '-p', 'no:cacheprovider']) == 0"
    assert _loaded_after(run, pytester.path) == []
    # ... and the probe sees them once a recipe is collected.
    (pytester.path / "recipes" / "alpha.yaml").write_text(RECIPE.format(id="alpha"))
    collect = "import pytest\npytest.main(['-q', '--co', '-p', 'no:cacheprovider'])"
    loaded = _loaded_after(collect, pytester.path)
    assert "pytest_forge.session" in loaded and "pydantic" in loaded
