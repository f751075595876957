from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from pytest_forge.errors import WorkloadError
from pytest_forge.workload import (
    Replay,
    Workload,
    WorkloadRequest,
    discover_workloads,
    load_replay,
    load_workload,
)

BUNDLED = Path(__file__).resolve().parents[2] / "workloads"


def write(directory: Path, name: str, lines: list[object], sidecar: str | None = None) -> Path:
    path = directory / f"{name}.jsonl"
    path.write_text(
        "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines)
    )
    if sidecar is not None:
        (directory / f"{name}.yaml").write_text(sidecar)
    return path


def load_error(path: Path) -> WorkloadError:
    with pytest.raises(WorkloadError) as info:
        load_workload(path)
    return info.value


REQ = {"prompt": "Hello", "expected_output_tokens": 8}


# --- valid files -----------------------------------------------------------------------------


def test_valid_file_defaults_ids_skips_blank_lines_and_resolves_closed(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "chat",
        [
            REQ,
            "",
            {
                "id": "mine",
                "messages": [{"role": "user", "content": "Hi"}],
                **{"expected_output_tokens": 4},
            },
            {**REQ, "reference": 42, "metadata": {"k": "v"}},
        ],
    )
    w = load_workload(path)
    assert w.name == "chat" and w.path == path
    assert [r.id for r in w.requests] == ["chat-1", "mine", "chat-4"]
    assert [r.line for r in w.requests] == [1, 3, 4]
    assert w.requests[1].messages == [{"role": "user", "content": "Hi"}]
    assert w.requests[2].reference == "42"  # a numeric reference is kept as text
    assert w.mode == "closed" and w.replay.mode == "closed"
    assert w.replay.max_concurrency == 8
    assert w.has_references
    assert w.total_expected_output_tokens == 20
    assert w.arrival_offsets() is None


def test_no_references(tmp_path: Path) -> None:
    assert not load_workload(write(tmp_path, "w", [REQ])).has_references


def test_offsets_make_open_mode_without_concurrency_cap(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "b",
        [{**REQ, "arrival_offset_s": 0.5}, {**REQ, "arrival_offset_s": 0}],
    )
    w = load_workload(path)
    assert w.mode == "open" and w.replay.mode == "open"
    assert w.replay.max_concurrency is None
    assert w.arrival_offsets() == [0.5, 0.0]


def test_open_mode_cap_only_when_concurrency_given(tmp_path: Path) -> None:
    path = write(tmp_path, "b", [{**REQ, "arrival_offset_s": 0.1}], sidecar="concurrency: 3\n")
    assert load_workload(path).replay.max_concurrency == 3


def test_explicit_closed_mode_wins_over_offsets(tmp_path: Path) -> None:
    path = write(tmp_path, "b", [{**REQ, "arrival_offset_s": 1.0}], sidecar="mode: closed\n")
    w = load_workload(path)
    assert w.mode == "closed" and w.arrival_offsets() is None


def test_open_mode_with_request_rate_draws_seeded_arrivals(tmp_path: Path) -> None:
    path = write(tmp_path, "p", [REQ] * 200, sidecar="mode: open\nrequest_rate: 10\nseed: 7\n")
    first = load_workload(path).arrival_offsets()
    again = load_workload(path).arrival_offsets()
    assert first is not None and first == again
    assert first == sorted(first)
    # Mean gap of a rate-10 process is 0.1 s: 200 arrivals span about 20 s.
    assert 14 < first[-1] < 26
    (tmp_path / "p.yaml").write_text("mode: open\nrequest_rate: 10\nseed: 8\n")
    assert load_workload(path).arrival_offsets() != first


def test_open_mode_without_arrivals_names_sidecar_mode(tmp_path: Path) -> None:
    err = load_error(write(tmp_path, "w", [REQ], sidecar="warmup: 1\nmode: open\n"))
    assert err.path == tmp_path / "w.yaml" and err.line == 2 and err.field == "mode"
    assert "request_rate" in err.message


def test_partial_offsets_with_a_request_rate_name_the_conflict(tmp_path: Path) -> None:
    # Offsets default to 0 where missing (seed 001), so a rate on top is still ambiguous.
    reqs = [{**REQ, "arrival_offset_s": 0.0}, REQ]
    err = load_error(write(tmp_path, "w", reqs, sidecar="mode: open\nrequest_rate: 5\n"))
    assert err.field == "request_rate" and "drop request_rate or the offsets" in str(err)


def test_sidecar_values_are_read(tmp_path: Path) -> None:
    sidecar = (
        "# comment\nconcurrency: 4\nwarmup: 0\nrepeats: 5\ntemperature: 0.7\nseed: 3\n"
        "ignore_eos: false\nslo:\n  ttft_p99_ms: 250\n"
        "accuracy:\n  scorer: exact\n  floor: 0.9\nrequest_timeout_s: 30\n"
    )
    w = load_workload(write(tmp_path, "w", [REQ], sidecar=sidecar))
    r = w.replay
    assert (r.concurrency, r.warmup, r.repeats, r.temperature, r.seed) == (4, 0, 5, 0.7, 3)
    assert r.ignore_eos is False and r.request_timeout_s == 30
    assert r.slo.ttft_p99_ms == 250
    assert (r.accuracy.scorer, r.accuracy.floor) == ("exact", 0.9)
    assert type(r.temperature) is float  # plain values, not ruamel scalar types


def test_empty_sidecar_means_defaults(tmp_path: Path) -> None:
    w = load_workload(write(tmp_path, "w", [REQ], sidecar="# nothing\n"))
    assert w.replay.concurrency == 8 and w.replay.warmup == 2 and w.replay.repeats is None


def test_discover_workloads_sorted_and_only_jsonl(tmp_path: Path) -> None:
    for name in ("zeta", "alpha"):
        write(tmp_path, name, [REQ])
    (tmp_path / "alpha.yaml").write_text("")
    (tmp_path / "notes.txt").write_text("")
    found = discover_workloads(tmp_path)
    assert list(found) == ["alpha", "zeta"]
    assert found["alpha"] == tmp_path / "alpha.jsonl"
    assert discover_workloads(tmp_path / "missing") == {}


# --- errors name file:line and field ---------------------------------------------------------


def test_bad_json_names_line(tmp_path: Path) -> None:
    path = write(tmp_path, "w", [REQ, '{"prompt": "x",'])
    err = load_error(path)
    assert (err.path, err.line, err.field) == (path, 2, None)
    assert str(err).startswith(f"{path}:2: invalid JSON")


def test_non_object_line(tmp_path: Path) -> None:
    err = load_error(write(tmp_path, "w", ["[1, 2]"]))
    assert err.line == 1 and "JSON object" in err.message and "a list" in err.message


def test_missing_expected_output_tokens(tmp_path: Path) -> None:
    path = write(tmp_path, "w", [REQ, "", {"prompt": "x"}])
    err = load_error(path)
    assert (err.line, err.field) == (3, "expected_output_tokens")
    assert str(err) == f"{path}:3: expected_output_tokens: required key is missing"


@pytest.mark.parametrize("tokens", [0, -3, "many"])
def test_bad_expected_output_tokens(tmp_path: Path, tokens: object) -> None:
    err = load_error(write(tmp_path, "w", [{"prompt": "x", "expected_output_tokens": tokens}]))
    assert (err.line, err.field) == (1, "expected_output_tokens")


def test_both_prompt_and_messages(tmp_path: Path) -> None:
    line = {**REQ, "messages": [{"role": "user", "content": "x"}]}
    err = load_error(write(tmp_path, "w", [line]))
    assert (err.line, err.field) == (1, "prompt/messages") and "both" in err.message


def test_neither_prompt_nor_messages(tmp_path: Path) -> None:
    err = load_error(write(tmp_path, "w", [{"expected_output_tokens": 3}]))
    assert err.field == "prompt/messages" and "neither" in err.message


def test_message_without_role(tmp_path: Path) -> None:
    line = {"messages": [{"content": "x"}], "expected_output_tokens": 3}
    err = load_error(write(tmp_path, "w", [line]))
    assert err.field == "messages" and "'role'" in err.message


def test_negative_offset(tmp_path: Path) -> None:
    err = load_error(write(tmp_path, "w", [REQ, {**REQ, "arrival_offset_s": -0.5}]))
    assert (err.line, err.field) == (2, "arrival_offset_s") and "-0.5" in err.message


def test_duplicate_id(tmp_path: Path) -> None:
    err = load_error(write(tmp_path, "w", [{**REQ, "id": "a"}, REQ, {**REQ, "id": "a"}]))
    assert (err.line, err.field) == (3, "id") and "line 1" in err.message


def test_explicit_id_clashing_with_default_id(tmp_path: Path) -> None:
    err = load_error(write(tmp_path, "w", [REQ, {**REQ, "id": "w-1"}]))
    assert (err.line, err.field) == (2, "id")


def test_unknown_key_suggests_nearest(tmp_path: Path) -> None:
    err = load_error(write(tmp_path, "w", [{"promt": "x", "expected_output_tokens": 3}]))
    assert (err.line, err.field) == (1, "promt")
    assert "did you mean 'prompt'?" in err.message


def test_empty_file(tmp_path: Path) -> None:
    err = load_error(write(tmp_path, "w", ["", "  "]))
    assert err.line is None and "no requests" in err.message


def test_missing_file(tmp_path: Path) -> None:
    err = load_error(tmp_path / "nope.jsonl")
    assert err.path == tmp_path / "nope.jsonl" and "not found" in err.message


def test_bad_sidecar_key_names_sidecar_line_and_suggestion(tmp_path: Path) -> None:
    err = load_error(write(tmp_path, "w", [REQ], sidecar="mode: closed\nconcurency: 4\n"))
    assert (err.path, err.line, err.field) == (tmp_path / "w.yaml", 2, "concurency")
    assert "did you mean 'concurrency'?" in err.message


def test_bad_nested_sidecar_key(tmp_path: Path) -> None:
    err = load_error(write(tmp_path, "w", [REQ], sidecar="slo:\n  ttft_p99: 5\n"))
    assert (err.line, err.field) == (2, "slo.ttft_p99") and "'ttft_p99_ms'" in err.message


@pytest.mark.parametrize(
    ("sidecar", "line", "field"),
    [
        ("warmup: -1\n", 1, "warmup"),
        ("seed: 1\naccuracy:\n  scorer: fuzzy\n", 3, "accuracy.scorer"),
        ("accuracy:\n  floor: 1.5\n", 2, "accuracy.floor"),
        ("mode: sometimes\n", 1, "mode"),
        ("request_rate: 0\n", 1, "request_rate"),
    ],
)
def test_bad_sidecar_values(tmp_path: Path, sidecar: str, line: int, field: str) -> None:
    err = load_error(write(tmp_path, "w", [REQ], sidecar=sidecar))
    assert (err.path.name, err.line, err.field) == ("w.yaml", line, field)


def test_sidecar_invalid_yaml_and_non_mapping(tmp_path: Path) -> None:
    sidecar = tmp_path / "x.yaml"
    sidecar.write_text("mode: closed\nwarmup: [\n")
    with pytest.raises(WorkloadError, match="invalid YAML") as info:
        load_replay(sidecar)
    assert info.value.path == sidecar and info.value.line is not None
    sidecar.write_text("- 1\n")
    with pytest.raises(WorkloadError, match="mapping"):
        load_replay(sidecar)


def test_regex_sidecar_rejects_bad_pattern_at_load(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "w",
        [{**REQ, "reference": "ok"}, {**REQ, "id": "q2", "reference": "(unclosed"}],
        sidecar="accuracy:\n  scorer: regex\n",
    )
    err = load_error(path)
    assert (err.path, err.line, err.field) == (path, 2, "reference") and "'q2'" in err.message


def test_models_in_code() -> None:
    r = WorkloadRequest(id="a", prompt="p", expected_output_tokens=1)
    w = Workload(name="n", path=Path("n.jsonl"), requests=[r], replay=Replay())
    assert w.mode == "closed" and w.by_id == {"a": r}


def test_loader_is_fast_on_10k_lines(tmp_path: Path) -> None:
    line = json.dumps({"prompt": "Explain attention. " * 10, "expected_output_tokens": 64})
    path = tmp_path / "big.jsonl"
    path.write_text((line + "\n") * 10_000)
    start = time.perf_counter()
    w = load_workload(path)
    elapsed = time.perf_counter() - start
    assert len(w) == 10_000 and w.requests[-1].id == "big-10000"
    # A generous ceiling, not a speed claim: catches an accidental quadratic loop.
    assert elapsed < 5.0


# --- the bundled workloads -------------------------------------------------------------------


def test_bundled_workloads_load_with_expected_shape() -> None:
    found = discover_workloads(BUNDLED)
    assert set(found) == {"chat", "shared-prefix", "bursty", "accuracy", "steady", "crowd"}
    loaded = {name: load_workload(path) for name, path in found.items()}

    chat = loaded["chat"]
    assert len(chat) == 50 and chat.mode == "closed" and chat.replay.concurrency == 8
    tokens = sorted(r.expected_output_tokens for r in chat)
    assert tokens[0] == 16 and tokens[-1] == 256
    assert tokens[len(tokens) // 2] <= 64  # skewed short, like real chat

    shared = loaded["shared-prefix"]
    assert len(shared) == 40 and shared.mode == "closed" and shared.replay.concurrency == 8
    prompts = [r.prompt or "" for r in shared]
    prefix = prompts[0].split("Customer:")[0]
    assert len(prefix) > 1200 and all(p.startswith(prefix) for p in prompts)
    assert len(set(prompts)) == 40
    assert all(16 <= r.expected_output_tokens <= 64 for r in shared)

    bursty = loaded["bursty"]
    assert len(bursty) == 48 and bursty.mode == "open" and bursty.replay.max_concurrency is None
    offsets = bursty.arrival_offsets()
    assert offsets is not None and offsets == sorted(offsets)
    assert len({int(t // 1.5) for t in offsets}) == 4
    assert all(32 <= r.expected_output_tokens <= 128 for r in bursty)

    acc = loaded["accuracy"]
    assert len(acc) == 24 and acc.mode == "closed" and acc.replay.concurrency == 4
    assert all(r.reference for r in acc)
    assert (acc.replay.accuracy.scorer, acc.replay.accuracy.floor) == ("contains", 0.8)
    assert all(8 <= r.expected_output_tokens <= 16 for r in acc)

    steady = loaded["steady"]
    assert len(steady) == 128 and steady.mode == "closed" and steady.replay.concurrency == 32
    assert {r.expected_output_tokens for r in steady} == {128}  # one last wave, no tail
    assert len({r.prompt for r in steady}) == 128  # prefix caching cannot flatter it

    # The CPU recipe's tuning landscape: more users than its batch cap of 16 runs at once.
    crowd = loaded["crowd"]
    assert len(crowd) == 256 and crowd.mode == "closed" and crowd.replay.concurrency == 64
    assert {r.expected_output_tokens for r in crowd} == {128}
    assert len({r.prompt for r in crowd}) == 256

    for w in loaded.values():
        assert all(r.prompt and r.messages is None for r in w)
        # Budget for the tiny model: ~1.4 chars/token on its 512-token BPE, pessimistically.
        assert all(len(r.prompt or "") / 1.4 + r.expected_output_tokens < 1500 for r in w)


def test_bundled_generator_is_deterministic(tmp_path: Path) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_workloads", BUNDLED / "make_workloads.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(tmp_path)
    for name in ("chat", "shared-prefix", "bursty", "accuracy", "steady"):
        generated = (tmp_path / f"{name}.jsonl").read_text()
        assert generated == (BUNDLED / f"{name}.jsonl").read_text(), name


def test_arrival_offset_defaults_to_zero_when_some_requests_have_one(tmp_path: Path) -> None:
    # The Forge workload format (seed 001) gives arrival_offset_s a default of 0.
    path = tmp_path / "mixed.jsonl"
    path.write_text(
        '{"prompt": "a", "expected_output_tokens": 4}\n'
        '{"prompt": "b", "expected_output_tokens": 4, "arrival_offset_s": 0.5}\n'
        '{"prompt": "c", "expected_output_tokens": 4}\n'
    )
    workload = load_workload(path)
    assert workload.mode == "open"
    assert workload.arrival_offsets() == [0.0, 0.5, 0.0]
    assert [r.line for r in workload.requests] == [1, 2, 3]
