"""ExampleLog: ids, torn tails, deletes that leave nothing behind, limits, and kill -9
during add_examples losing nothing that was acknowledged."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from helpers.heads import small_config
from helpers.stores import close_store, stored_example_bytes
from ph.stores import example_files as example_log
from ph.errors import ConfigError
from ph.stores.example_files import ExampleLimits, ExampleLog
from ph.heads.service import HeadRegistry
from ph.stores import LocalStore, open_store


@pytest.fixture
def log(tmp_path):
    return ExampleLog(tmp_path / "examples.jsonl")


@pytest.fixture
def any_log(any_store, tmp_path):
    """(log, reopen) on each store backend: head 'h''s example log, and a function that
    opens it again as another process would (its own store and cache, nothing remembered)."""
    stores = []

    def reopen(folder="heads"):
        example_log._summaries.clear()  # what a local log remembers of the file
        stores.append(open_store(any_store, tmp_path / folder))
        return stores[-1].examples("h")

    stores.append(open_store(any_store, tmp_path / "heads"))
    stores[0].create("h", {"uuid": "h", "config": {}, "revision": 0, "labels": None})
    yield stores[0].examples("h"), lambda: reopen("heads" if any_store is None else "elsewhere")
    for store in stores:
        close_store(store)


def log_store(log):
    """The store a log belongs to (a local log: the heads folder it lies in)."""
    return getattr(log, "store", None) or LocalStore(log.path.parent.parent)


def rows(*texts, label="a"):
    return [{"label": label, "text": t} for t in texts]


def fresh_summary(log):
    """What another process, which has not read this log yet, sees."""
    example_log._summaries.clear()
    return log.summary()


def test_appends_get_increasing_ids_and_read_pages_in_order(any_log):
    log, reopen = any_log
    assert log.summary().count == 0 and log.read() == []
    assert log.append(rows("x", "y")).count == 2
    summary = log.append(rows("z", label="b"))
    assert (summary.count, summary.last_id, summary.names) == (3, 3, {"a", "b"})
    assert [(r["id"], r["text"]) for r in log.read()] == [(1, "x"), (2, "y"), (3, "z")]
    assert [r["id"] for r in log.read(offset=1, limit=1)] == [2]
    assert [r["text"] for r in log.iter()] == ["x", "y", "z"]
    assert reopen().summary().count == 3


def test_a_torn_last_call_is_ignored_then_cut_off_by_the_next_append(log):
    log.append(rows("kept"))
    with open(log.path, "ab") as fh:  # a call cut short by a crash: no commit line
        fh.write(b'{"id": 2, "label": "a", "text": "whole line"}\n{"id": 3, "label": "a", "te')
    assert [r["text"] for r in log.read()] == ["kept"]
    assert fresh_summary(log).count == 1
    assert log.append(rows("next")).count == 2
    assert [(r["id"], r["text"]) for r in log.read()] == [(1, "kept"), (2, "next")]
    assert b"whole line" not in log.path.read_bytes() and b'"te\n' not in log.path.read_bytes()


def test_an_unreadable_whole_line_is_skipped(log):
    log.append(rows("one"))
    with open(log.path, "ab") as fh:
        fh.write(b"\x00\x00 not json\n")
    log.append(rows("two"))
    assert [r["text"] for r in log.read()] == ["one", "two"]


def test_deleted_examples_leave_storage_and_ids_are_never_reused(any_log):
    log, reopen = any_log
    log.append(rows("secret", "public", "other"))
    assert log.delete({1, 3}) == 2
    assert b"secret" not in stored_example_bytes(log_store(log))
    assert [r["text"] for r in log.read()] == ["public"]
    assert log.delete({42}) == 0
    assert log.delete() == 1 and log.read() == []
    assert b"public" not in stored_example_bytes(log_store(log))
    assert reopen().summary().last_id == 3
    assert log.append(rows("new")).last_id == 4


def test_another_writer_s_appends_are_seen(any_log):
    log, reopen = any_log
    log.append(rows("a"))
    reopen().append(rows("b", "c"))  # as another process would
    assert log.summary().count == 3 and log.append(rows("d")).last_id == 4
    assert [r["id"] for r in reopen().read()] == [1, 2, 3, 4]


def test_limits_come_from_arguments_or_the_environment(monkeypatch):
    assert ExampleLimits.from_env() == ExampleLimits(1000, 100_000)
    monkeypatch.setenv("PH_MAX_EXAMPLES_PER_CALL", "5")
    assert ExampleLimits.from_env(per_head=7) == ExampleLimits(5, 7)
    with pytest.raises(ConfigError, match="PH_MAX_EXAMPLES_PER_HEAD.*whole number"):
        ExampleLimits.from_env(per_head="lots")


WRITER = """
import sys
from ph.heads.service import HeadRegistry
from ph.stores import LocalStore, open_store
registry = HeadRegistry(sys.argv[1])
for i in range(100000):
    texts = [f"ack {i} {j}" for j in range(3)]
    count = registry.add_examples("k", [{"text": t, "label": "a"} for t in texts])
    print(i, count, flush=True)  # acknowledged: the call returned
"""


def test_kill_9_during_add_examples_loses_nothing_acknowledged(workdir):
    registry = HeadRegistry(workdir / "heads")
    registry.create_head("k", small_config())
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(workdir / "heads")],
                            stdout=subprocess.PIPE, text=True)
    acked = []
    try:
        for line in proc.stdout:
            acked.append(int(line.split()[0]))
            if len(acked) >= 40:
                break
        time.sleep(0.05)  # let it be in the middle of another append
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    acked += [int(line.split()[0]) for line in proc.stdout.read().splitlines() if line]
    stored = {r["text"] for r in HeadRegistry(workdir / "heads").list_examples("k", 0, 1000)}
    assert {f"ack {i} {j}" for i in acked for j in range(3)} <= stored
    assert len(stored) % 3 == 0  # whole calls only, never part of one
    after = HeadRegistry(workdir / "heads").add_examples("k", rows("after"))
    assert after == len(stored) + 1
    lines = (workdir / "heads" / "k" / "examples.jsonl").read_text().splitlines()
    assert all(json.loads(line) for line in lines)


def test_a_rewritten_file_is_never_taken_for_the_one_a_summary_was_made_from(log, tmp_path):
    log.append(rows("a", "b", "c"))
    remembered = dict(example_log._summaries)
    log.delete({1})  # another process rewrites the file...
    log.append(rows("d", "e"))
    example_log._summaries.update(remembered)  # ...while this one remembers the old file
    summary = log.summary()
    assert (summary.count, summary.last_id) == (4, 5)
    assert log.append(rows("f")).last_id == 6
