"""The tune run store: durable appends, derived tables, redaction, resume lookup, report."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pytest_forge.errors import ForgeError
from pytest_forge.tune.redact import REDACTED, redact
from pytest_forge.tune.run_report import render_report
from pytest_forge.tune.store import RunStore


def _record(exp: int, status: str, **kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "exp": exp,
        "slot": None if status == "baseline" else exp,
        "status": status,
        "recipe_id": f"{exp:08x}",
        "generation": exp,
        "parent_id": "00000000",
        "changes": {} if status == "baseline" else {"config.max_num_seqs": 64 * exp},
        "rationale": "" if status == "baseline" else f"try {exp}",
        "score": 1.0 + exp / 10,
        "metrics": {"chat": {"output_throughput": 100.0 + exp, "e2el_p99_ms": 200.0 - exp}},
        "accuracy": {"chat": 0.99},
        "reason": "",
        "usage": {"cost_usd": 0.01},
        "duration_s": 1.5,
        "objective": "throughput",
    }
    base.update(kw)
    return base


def test_create_numbers_runs_and_redacts_every_secret(tmp_path: Path) -> None:
    config = {
        "recipe_id": "tiny",
        "api_key": "plain-secret-1",
        "agent": {"name": "anthropic/x", "apiKey": "plain-secret-2"},
        "headers": {"Authorization": "plain-secret-3"},
        "env": {"HF_TOKEN": "plain-secret-4", "VLLM_CPU_KVCACHE_SPACE": "1"},
        "endpoint_note": "Bearer plain-secret-5",
        "max_num_batched_tokens": 8192,
        "budget": 8,
    }
    first = RunStore.create(tmp_path, config)
    second = RunStore.create(tmp_path, {"recipe_id": "tiny"})
    assert re.fullmatch(r"001_\d{4}-\d\d-\d\dT\d\d-\d\d-\d\d", first.path.name)
    assert second.path.name.startswith("002_")

    text = (first.path / "config.json").read_text()
    assert "plain-secret" not in text
    saved = json.loads(text)
    assert saved["api_key"] == REDACTED
    assert saved["agent"] == {"name": "anthropic/x", "apiKey": REDACTED}
    assert saved["headers"]["Authorization"] == REDACTED
    assert saved["env"] == {"HF_TOKEN": REDACTED, "VLLM_CPU_KVCACHE_SPACE": "1"}
    assert saved["endpoint_note"] == REDACTED
    # "tokens" is a count, not a credential: options keep their values.
    assert saved["max_num_batched_tokens"] == 8192
    assert saved["budget"] == 8
    assert RunStore.open(first.path).config["recipe_id"] == "tiny"


def test_an_environment_dump_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin", "HOME": "/root", "ANYTHING": "x"}
    with pytest.raises(ForgeError, match="environment dump"):
        RunStore.create(tmp_path / "runs", {"recipe_id": "x", "env": env})
    with pytest.raises(ForgeError, match="environment dump"):
        redact({"inherited": os.environ})
    assert not (tmp_path / "runs").exists()


def test_open_rejects_a_directory_that_is_not_a_run(tmp_path: Path) -> None:
    with pytest.raises(ForgeError, match=r"not a tune run \(no config.json\)"):
        RunStore.open(tmp_path)


def test_append_fsyncs_the_file_and_on_creation_the_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = RunStore.create(tmp_path, {"recipe_id": "x"})
    synced: list[str] = []
    real_fsync = os.fsync

    def spy(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    jsonl = str((store.path / "experiments.jsonl").resolve())
    store.append_experiment(_record(0, "baseline"))
    assert jsonl in synced
    assert str(store.path.resolve()) in synced  # the new file's directory entry
    synced.clear()
    store.append_experiment(_record(1, "kept"))
    assert jsonl in synced


def test_tables_are_regenerated_atomically_after_each_append(tmp_path: Path) -> None:
    store = RunStore.create(tmp_path, {"recipe_id": "x"})
    store.append_experiment(_record(0, "baseline"))
    store.append_experiment(_record(1, "kept", rationale="tab\there\nand newline"))
    store.append_experiment(_record(2, "rejected"))

    rows = (store.path / "experiments.tsv").read_text().splitlines()
    assert rows[0].split("\t")[:4] == ["exp", "slot", "status", "kept"]
    assert len(rows) == 4  # header + 3: the rationale's tab/newline did not split a row
    assert rows[2].split("\t")[2:4] == ["kept", "✓"]
    assert rows[3].split("\t")[2:4] == ["rejected", "✗"]
    assert "tab here and newline" in rows[2]

    table = json.loads((store.path / "experiments.json").read_text())
    assert [r["exp"] for r in table] == [0, 1, 2]
    assert [p.name for p in store.path.iterdir() if p.name.endswith(".tmp")] == []


def test_a_truncated_last_line_is_ignored_and_then_replaced(tmp_path: Path) -> None:
    store = RunStore.create(tmp_path, {"recipe_id": "x"})
    store.append_experiment(_record(0, "baseline"))
    store.append_experiment(_record(1, "kept"))
    path = store.path / "experiments.jsonl"
    with open(path, "ab") as fh:  # what a SIGKILL mid-write leaves behind
        fh.write(b'{"exp": 2, "status": "rejec')

    assert [r["exp"] for r in store.experiments()] == [0, 1]
    store.append_experiment(_record(2, "rejected"))
    assert [r["exp"] for r in store.experiments()] == [0, 1, 2]
    lines = path.read_text().splitlines()
    assert len(lines) == 3 and all(json.loads(line) for line in lines)


def test_a_corrupt_line_in_the_middle_is_an_error_naming_file_and_line(tmp_path: Path) -> None:
    store = RunStore.create(tmp_path, {"recipe_id": "x"})
    path = store.path / "experiments.jsonl"
    path.write_text('{"exp": 0}\nnot json\n{"exp": 2}\n')
    with pytest.raises(ForgeError, match=r"experiments\.jsonl:2: not a JSON experiment record"):
        store.experiments()


def test_records_are_redacted_and_kept_json_clean(tmp_path: Path) -> None:
    store = RunStore.create(tmp_path, {"recipe_id": "x"})
    rec = _record(
        0,
        "baseline",
        recipe={"env": {"HF_TOKEN": "hf_abcdefghijkl"}},
        noise=float("nan"),
        error="401 from https://x: header Authorization: Bearer abc.def-123 rejected; "
        "key sk-ant-0123456789abcdef; task-scheduler ok",
    )
    store.append_experiment(rec)
    (stored,) = store.experiments()
    assert stored["recipe"]["env"]["HF_TOKEN"] == REDACTED
    assert stored["noise"] is None
    assert stored["error"] == (
        f"401 from https://x: header Authorization: {REDACTED} rejected; key {REDACTED}; "
        "task-scheduler ok"
    )
    assert "hf_abcdefghijkl" not in (store.path / "experiments.jsonl").read_text()


def test_latest_unfinished_skips_completed_runs_and_filters_by_config(tmp_path: Path) -> None:
    assert RunStore.latest_unfinished(tmp_path / "missing") is None
    a = RunStore.create(tmp_path, {"recipe_id": "a"})
    b = RunStore.create(tmp_path, {"recipe_id": "b"})
    c = RunStore.create(tmp_path, {"recipe_id": "a"})
    (tmp_path / "notes").mkdir()  # not a run: ignored

    assert RunStore.latest_unfinished(tmp_path).path == c.path
    c.mark_completed({"message": "done"})
    assert c.is_completed and not b.is_completed
    assert RunStore.latest_unfinished(tmp_path).path == b.path
    assert RunStore.latest_unfinished(tmp_path, where={"recipe_id": "a"}).path == a.path
    a.mark_completed({"message": "done"})
    assert RunStore.latest_unfinished(tmp_path, where={"recipe_id": "a"}) is None


def test_server_log_dir_is_inside_the_run(tmp_path: Path) -> None:
    store = RunStore.create(tmp_path, {"recipe_id": "x"})
    assert store.server_log_dir == store.path / "logs"
    assert store.server_log_dir.is_dir()


def test_render_report_shows_the_best_and_every_experiment(tmp_path: Path) -> None:
    store = RunStore.create(tmp_path, {"recipe_id": "tiny", "objective": "throughput"})
    long = "enable_prefix_caching: the workload repeats a long system prompt " * 3
    store.append_experiment(_record(0, "baseline"))
    store.append_experiment(_record(1, "kept", rationale=long))
    store.append_experiment(_record(2, "rejected", score=0.98))
    store.append_experiment(
        _record(
            3, "crashed", score=None, metrics={}, accuracy={}, rationale="", reason="crashed: OOM"
        )
    )

    text = render_report(store.path)
    lines = text.splitlines()
    assert lines[0] == f"=== Forge Report: {store.path} ==="
    assert "Total experiments: 4" in text
    assert "Best score: 1.1000" in text
    assert "Best recipe ID: 00000001" in text
    assert "Best generation: 1" in text
    assert "Throughput: 101.0 tok/s" in text
    assert "P99 latency: 199 ms" in text
    assert "Status: unfinished" in text

    header = next(line for line in lines if line.startswith("exp"))
    assert header.split() == [
        "exp", "id", "gen", "score", "tok/s", "p99_ms", "accuracy", "kept", "status", "rationale"
    ]  # fmt: skip
    rows = {line.split()[0]: line for line in lines[lines.index(header) + 1 :]}
    assert rows["0"].split()[7:9] == ["✓", "baseline"]
    assert rows["1"].split()[7:9] == ["✓", "kept"]
    assert rows["2"].split()[7:9] == ["✗", "rejected"]
    assert rows["3"].split()[3] == "-" and rows["3"].split()[7:9] == ["-", "crashed"]
    assert rows["1"].endswith("...") and long[:40] in rows["1"]
    assert len(rows["1"].split("  ")[-1].strip()) <= 60
    assert rows["3"].endswith("crashed: OOM")  # no rationale: the reason stands in

    store.mark_completed({"message": "no candidate beat the committed baseline"})
    assert "Status: completed — no candidate beat" in render_report(store.path)


def test_render_report_of_an_empty_run_and_of_the_latest_run(tmp_path: Path) -> None:
    runs = tmp_path / ".forge" / "runs"
    RunStore.create(runs, {"recipe_id": "old"})
    store = RunStore.create(runs, {"recipe_id": "tiny"})
    text = render_report(store.path)
    assert "Total experiments: 0" in text
    assert "no experiments recorded yet" in text
    # `forge report .forge` (as in the seed's docs) shows the latest run.
    assert (
        render_report(tmp_path / ".forge").splitlines()[0] == f"=== Forge Report: {store.path} ==="
    )
    with pytest.raises(ForgeError, match="not a tune run"):
        render_report(tmp_path / "nowhere")


# -- concurrent writers ----------------------------------------------------------------------
def _append_loop(store_path: str, barrier: str, count: str) -> None:
    """In a child process: append ``count`` experiments, each numbered after the last stored
    one; a number another process took meanwhile is refused, and retried."""
    from tests.unit.concurrency import wait_for

    store = RunStore.open(Path(store_path))
    wait_for(Path(barrier))
    done = 0
    while done < int(count):
        exp = len(store.experiments())
        try:
            store.append_experiment(_record(exp, "baseline" if exp == 0 else "rejected"))
        except ForgeError as exc:
            assert "another process" in str(exc), exc
            continue
        done += 1


def test_two_processes_appending_to_one_store_keep_the_sequence(tmp_path: Path) -> None:
    from tests.unit.concurrency import run_together

    store = RunStore.create(tmp_path, {"recipe_id": "x"})
    results = run_together(
        "tests.unit.test_store",
        "_append_loop",
        [[str(store.path), str(tmp_path / "go"), "15"]] * 2,
        tmp_path / "go",
    )
    assert [r.returncode for r in results] == [0, 0], [r.stderr for r in results]
    # Before the lock both appended "the next" experiment, duplicating numbers.
    assert [r["exp"] for r in store.experiments()] == list(range(30))
    table = json.loads((store.path / "experiments.json").read_text())
    assert [r["exp"] for r in table] == list(range(30))  # the derived table agrees
    assert not list(store.path.glob(".*.lock"))  # no lock file left behind


def test_an_experiment_out_of_sequence_is_refused_and_nothing_is_stored(tmp_path: Path) -> None:
    store = RunStore.create(tmp_path, {"recipe_id": "x"})
    store.append_experiment(_record(0, "baseline"))
    store.append_experiment(_record(1, "kept"))
    with pytest.raises(ForgeError, match=r"experiment 1 cannot be stored: the run already holds 2"):
        store.append_experiment(_record(1, "rejected"))  # a second resume's exp 1
    assert [r["status"] for r in store.experiments()] == ["baseline", "kept"]


def test_a_run_claimed_by_one_process_is_refused_to_another(tmp_path: Path) -> None:
    store = RunStore.create(tmp_path, {"recipe_id": "x"}, claim=True)
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(store.path)], stdout=subprocess.PIPE, text=True
    )
    try:
        store.release()
        assert holder.stdout is not None and holder.stdout.readline().strip() == "claimed"
        with pytest.raises(ForgeError) as err:
            RunStore.open(store.path).claim()
        message = str(err.value)
        assert f"tune run {store.path} is in use by pid {holder.pid}" in message
        assert "start a new run" in message
    finally:
        holder.kill()
        holder.wait()
    # The holder died: its claim went with it.
    again = RunStore.open(store.path)
    again.claim()
    again.release()


_HOLD = (
    "import sys, time; from pathlib import Path; from pytest_forge.tune.store import RunStore; "
    "s = RunStore.open(Path(sys.argv[1])); s.claim(); print('claimed', flush=True); "
    "time.sleep(60)"
)
