"""Keys go only where they should: URLs with user:password are split at once (sent as Basic
auth, never shown), and no credential travels over plain http off this machine.

Every leak path of --forge-endpoint is checked end to end against the fake server: the
session header, the terminal, JUnit XML, results.json, the HTML report and a traceback
with ``--tb=long -l``.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_forge.bench import BenchOptions, run_bench
from pytest_forge.endpoint import (
    Credentials,
    Endpoint,
    InsecureCredentialsError,
    is_loopback,
    parse_endpoint,
    redact_text,
    redact_url,
    split_credentials,
)
from pytest_forge.errors import BenchError, ForgeError
from pytest_forge.workload import Replay, Workload, WorkloadRequest
from tests.fakes.fake_openai_server import FakeServer, running_fake_server

pytest_plugins = ["pytester"]

PASSWORD = "pw-5ecr3t-DO-NOT-LEAK"
BASIC = base64.b64encode(f"bob:{PASSWORD}".encode()).decode()
KEY = "sk-endpoint-5ecr3t-key"
CACHE = os.environ.get("FORGE_CACHE_DIR") or str(Path.home() / ".cache" / "pytest-forge")

RECIPE = """\
id: alpha
model: fake-model
hardware:
  vendor: cpu
config:
  max_num_seqs: 8
gates:
  accuracy_scorer: agreement
  latency_tolerance: 9
"""


def _with_userinfo(url: str) -> str:
    return url.replace("http://", f"http://bob:{PASSWORD}@")


def _workload() -> Workload:
    reqs = [WorkloadRequest(id=f"r{i}", prompt=f"p {i}", expected_output_tokens=2) for i in (0, 1)]
    return Workload("w", Path("w.jsonl"), reqs, Replay(warmup=0))


# ------------------------------------------------------------------ helpers


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (f"https://bob:{PASSWORD}@h:8/v1", "https://***@h:8/v1"),
        (f"http://{PASSWORD}@h", "http://***@h"),  # a token as the user name
        (f"http://bob:p@{PASSWORD}@h/v1", "http://***@h/v1"),  # a raw '@' in the password
        (f"http://bob:{PASSWORD}/x@h/v1", "http://***@h/v1"),  # a raw '/': not a valid URL
        (f"http://bob:{PASSWORD}#x@h/v1", "http://***@h/v1"),
        (f"bob:{PASSWORD}@h:80", "***@h:80"),  # no scheme
        ("https://h/v1", "https://h/v1"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_redact_text_hides_userinfo_auth_headers_and_key_values(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FORGE_ENDPOINT_API_KEY", KEY)
    text = (
        f"url = 'http://bob:{PASSWORD}@10.0.0.1:8000/v1/models'\n"
        f"headers = [('authorization', 'Basic {BASIC}'), ('x', 'Bearer {KEY}')]\n"
        f"key = {KEY!r}"
    )
    clean = redact_text(text)
    assert PASSWORD not in clean and BASIC not in clean and KEY not in clean
    assert "http://***@10.0.0.1:8000/v1/models" in clean


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("LOCALHOST.", True),
        ("10.0.0.1", False),
        ("localhost.example.com", False),
        ("example.com", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_userinfo_is_split_off_and_never_shown() -> None:
    clean, creds = split_credentials(f"https://bob:{PASSWORD}@llm.example/v1")
    assert clean == "https://llm.example/v1"
    assert creds == Credentials("bob", PASSWORD)
    assert PASSWORD not in repr(creds)
    # Percent-encoded characters are decoded, as curl and httpx do.
    _, creds = split_credentials("https://b%40b:p%2Fw@h")
    assert (creds.username, creds.password) == ("b@b", "p/w")  # type: ignore[union-attr]

    endpoint = Endpoint(f"http://bob:{PASSWORD}@127.0.0.1:8000")
    assert endpoint.url == "http://127.0.0.1:8000"
    assert endpoint.credentials == Credentials("bob", PASSWORD)
    assert PASSWORD not in repr(endpoint) and BASIC not in repr(endpoint)


@pytest.mark.parametrize(
    "url",
    [
        f"http://bob:{PASSWORD}/x@h",  # httpx: host "bob", port "pw-5ecr3t..."
        f"http://bob:{PASSWORD}#x@h",
        f"bob:{PASSWORD}@h:80",
        f"ftp://bob:{PASSWORD}@h",
    ],
)
def test_malformed_urls_are_refused_without_the_password(url: str) -> None:
    with pytest.raises(ForgeError) as info:
        parse_endpoint(url, None)
    assert "--forge-endpoint" in str(info.value)
    assert PASSWORD not in str(info.value) and "5ecr3t" not in str(info.value)


@pytest.mark.parametrize("host", ["10.0.0.5:8000", "example.com", "localhost.example.com"])
def test_a_key_over_plain_http_off_this_machine_is_refused(host: str) -> None:
    with pytest.raises(InsecureCredentialsError) as info:
        parse_endpoint(f"http://{host}", KEY)
    message = str(info.value)
    assert message.startswith(f"--forge-endpoint http://{host}: refusing to send ")
    assert "FORGE_ENDPOINT_API_KEY" in message and KEY not in message
    with pytest.raises(InsecureCredentialsError) as info:
        parse_endpoint(f"http://bob:{PASSWORD}@{host}", None)
    assert "user:password" in str(info.value) and PASSWORD not in str(info.value)
    # Without any credential, plain http anywhere is fine.
    assert parse_endpoint(f"http://{host}", None).api_key is None
    # Over https, or plain http to a loopback host, credentials may go.
    assert parse_endpoint(f"https://{host}", KEY).api_key == KEY
    assert parse_endpoint(f"https://bob:{PASSWORD}@{host}", None).credentials is not None
    for url in (
        "http://127.0.0.1:8000",
        "http://127.1.2.3:1",
        "http://[::1]:8",
        "http://localhost",
    ):
        assert parse_endpoint(url, KEY).api_key == KEY


def test_userinfo_and_a_key_together_are_refused() -> None:
    with pytest.raises(ForgeError, match="give one") as info:
        parse_endpoint(f"https://bob:{PASSWORD}@example.com", KEY)
    assert PASSWORD not in str(info.value) and KEY not in str(info.value)


def test_the_bench_refuses_a_key_for_plain_http_off_this_machine() -> None:
    with pytest.raises(InsecureCredentialsError):
        run_bench(Endpoint("http://10.9.9.9:1", api_key=KEY), _workload(), BenchOptions())


# ------------------------------------------------------------------ the bench


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeServer]:
    with running_fake_server(token_delay_s=0.0005) as server:
        yield server


@pytest.mark.parametrize("transport", ["aiohttp", "h11"])
def test_bench_sends_userinfo_as_basic_auth(
    fake: FakeServer, transport: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: aiohttp raised "ValueError: Cannot combine AUTHORIZATION header with AUTH
    argument or credentials encoded in URL"."""
    from pytest_forge import bench_client

    if transport == "h11":
        monkeypatch.setattr(bench_client, "fast_transport", lambda pool: None)
    elif importlib.util.find_spec("aiohttp") is None:
        pytest.skip("aiohttp not installed")
    fake.stats.auth_headers.clear()
    m = run_bench(Endpoint(_with_userinfo(fake.url)), _workload(), BenchOptions(repeats=1))
    assert m.repeats[0].completed == 2
    assert set(fake.stats.auth_headers) == {f"Basic {BASIC}"}
    assert PASSWORD not in json.dumps(m.to_dict(include_records=True))
    # A server that is gone: the error names the URL, without the credentials.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(BenchError) as info:
        run_bench(Endpoint(f"http://bob:{PASSWORD}@127.0.0.1:{port}"), _workload(), BenchOptions())
    assert f"127.0.0.1:{port}" in str(info.value) and PASSWORD not in str(info.value)


# ------------------------------------------------------------------ the plugin, end to end


@pytest.fixture
def project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    monkeypatch.setenv("FORGE_CACHE_DIR", CACHE)
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("FORGE_ENDPOINT_API_KEY", raising=False)
    (pytester.path / "recipes").mkdir()
    (pytester.path / "workloads").mkdir()
    (pytester.path / "recipes" / "alpha.yaml").write_text(RECIPE)
    lines = [
        json.dumps({"id": f"r{i}", "prompt": f"prompt {i}", "expected_output_tokens": 4})
        for i in range(3)
    ]
    (pytester.path / "workloads" / "short.jsonl").write_text("\n".join(lines) + "\n")
    (pytester.path / "workloads" / "short.yaml").write_text(
        "mode: closed\nconcurrency: 2\nwarmup: 1\nrepeats: 2\n"
    )
    return pytester


def _outputs(project: pytest.Pytester, result: pytest.RunResult) -> dict[str, str]:
    """Everything a run wrote that a user or CI may publish."""
    out = {"stdout": result.stdout.str(), "stderr": result.stderr.str()}
    for path in project.path.rglob("*"):
        if path.is_file() and path.suffix in (".xml", ".json", ".html", ".md", ".log"):
            out[str(path.relative_to(project.path))] = path.read_text(errors="replace")
    return out


def _assert_no_secret(outputs: dict[str, str]) -> None:
    for where, text in outputs.items():
        for secret in (PASSWORD, BASIC, KEY):
            assert secret not in text, f"{secret} in {where}"


def test_endpoint_with_userinfo_runs_and_no_output_shows_it(
    project: pytest.Pytester, fake: FakeServer
) -> None:
    args = [f"--forge-endpoint={_with_userinfo(fake.url)}", "--junitxml=junit.xml"]
    if importlib.util.find_spec("matplotlib") is not None:
        args.append("--forge-report=report")
    result = project.runpytest_subprocess("-p", "no:cacheprovider", "--tb=long", "-l", *args)
    result.assert_outcomes(passed=1)
    outputs = _outputs(project, result)
    assert f"benchmarking the running server at {fake.url}" in outputs["stdout"]  # the header
    assert "junit.xml" in outputs and any(k.endswith("results.json") for k in outputs)
    _assert_no_secret(outputs)


CONFTEST_RAISING = f"""
import pytest_forge.pipeline as pipeline

def run_case(recipe, workload, endpoint, *args, **kwargs):
    url = "http://bob:{PASSWORD}@10.0.0.1:8000/v1/models"
    headers = [("authorization", "Basic {BASIC}")]
    raise RuntimeError(f"a bug, while sending to {{url}}")

pipeline.run_case = run_case
"""


def test_a_traceback_with_locals_shows_no_credentials(
    project: pytest.Pytester, fake: FakeServer
) -> None:
    """A bug (not a ForgeError) gets pytest's full traceback; with -l it lists the locals
    of every frame. Nothing of the credentials may reach the terminal, JUnit, results.json
    or the HTML report."""
    project.makeconftest(CONFTEST_RAISING)
    args = [f"--forge-endpoint={_with_userinfo(fake.url)}", "--junitxml=junit.xml"]
    if importlib.util.find_spec("matplotlib") is not None:
        args.append("--forge-report=report")
    result = project.runpytest_subprocess("-p", "no:cacheprovider", "--tb=long", "-l", *args)
    result.assert_outcomes(failed=1)
    outputs = _outputs(project, result)
    assert "RuntimeError: a bug, while sending to http://***@10.0.0.1" in outputs["stdout"]
    assert "Basic ***" in outputs["stdout"]  # the locals were shown, redacted
    results = next(v for k, v in outputs.items() if k.endswith("results.json"))
    assert "RuntimeError" in results  # the failure is recorded...
    _assert_no_secret(outputs)  # ...without the credentials


def test_plain_http_endpoint_with_a_key_is_a_usage_error_and_loopback_runs(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, fake: FakeServer
) -> None:
    monkeypatch.setenv("FORGE_ENDPOINT_API_KEY", KEY)
    result = project.runpytest_subprocess(
        "-p", "no:cacheprovider", "--forge-endpoint=http://10.0.0.1:8000"
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    err = result.stderr.str()
    assert "--forge-endpoint http://10.0.0.1:8000: refusing to send FORGE_ENDPOINT_API_KEY" in err
    assert KEY not in err + result.stdout.str()
    result = project.runpytest_subprocess("-p", "no:cacheprovider", f"--forge-endpoint={fake.url}")
    result.assert_outcomes(passed=1)
    assert KEY not in result.stdout.str()


def test_agent_spec_over_plain_http_with_a_key_is_a_usage_error(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    result = project.runpytest_subprocess(
        "-p", "no:cacheprovider", "--forge-tune", "--forge-agent=http://10.0.0.1:8000/v1#m"
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    err = result.stderr.str()
    assert "--forge-agent http://10.0.0.1:8000/v1: refusing to send OPENAI_API_KEY" in err
    assert KEY not in err + result.stdout.str()


def test_agent_spec_with_userinfo_is_not_shown_in_the_header(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    result = project.runpytest_subprocess(
        "-p",
        "no:cacheprovider",
        "--co",
        "--forge-tune",
        f"--forge-agent=https://bob:{PASSWORD}@llm.example/v1#m",
    )
    assert "forge tune: agent https://***@llm.example/v1#m" in result.stdout.str()
    _assert_no_secret(_outputs(project, result))
