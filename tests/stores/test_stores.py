"""The store interface on every backend (`any_backend`: the local folder and Redis + S3),
what only the local folder does with files, and crash-safe file helpers (ph/stores/fileio.py)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
import uuid as uuidlib

import pytest
import torch

from helpers.stores import close_store, record, weights
import ph.stores.local as local_store  # the module object the stores here use
from ph.errors import BadInputError, ConfigError, ConflictError, HeadNotFoundError, NotFoundError
from ph.stores.fileio import atomic_open, atomic_write_bytes, atomic_write_json, file_lock
from ph.stores import RUNS_KEPT, LocalStore as HeadStore, check_uuid, new_uuid, open_store


def fields(rec: dict) -> dict:
    """A record without a store's own bookkeeping (RedisStore's incarnation, version and
    write id)."""
    return {k: v for k, v in rec.items() if k not in ("inc", "v", "w")}


@pytest.fixture
def store(tmp_path) -> HeadStore:
    """The local folder store (for what it does with files)."""
    return HeadStore(tmp_path / "heads")


@pytest.fixture
def any_backend(any_store, tmp_path):
    """Each store backend in turn, as open_store gives it."""
    store = open_store(any_store, tmp_path / "heads")
    yield store
    close_store(store)


def tmp_leftovers(store: HeadStore) -> list:
    return sorted(p.name for p in (store.root / "_tmp").iterdir())


# --- uuids ---------------------------------------------------------------------------------

@pytest.mark.parametrize("uuid", ["3f2b8c1e-9d4a-4c7e-8b21-5a6f0e9d7c34",  # a uuid4
                                  "user_1.a-b", "a", "A9", "x" * 128, "alice.v2"])
def test_check_uuid_accepts_safe_names(uuid):
    assert check_uuid(uuid) == uuid


def test_new_uuid_passes_check_uuid():
    uid = new_uuid()
    assert check_uuid(uid) == uid
    assert uuidlib.UUID(uid).version == 4


@pytest.mark.parametrize("uuid", ["../x", "a/b", "", ".", "..", "a..b", "_x", "x" * 129,
                                  "-a", "a b", "a\\b", "/abs", "a\nb", "é"])
def test_check_uuid_rejects_unsafe_names(uuid):
    with pytest.raises(BadInputError) as err:
        check_uuid(uuid)
    assert "is not valid" in str(err.value) and "1 to 128 letters" in str(err.value)


def test_check_uuid_rejects_trailing_newline():
    """`$` in the pattern also matches before a final newline: 'alice\\n' must not pass."""
    with pytest.raises(BadInputError):
        check_uuid("alice\n")


@pytest.mark.parametrize("uuid", [None, 5, b"abc", ["a"], 1.5])
def test_check_uuid_rejects_non_strings(uuid):
    with pytest.raises(BadInputError, match="is not valid"):
        check_uuid(uuid)


def test_check_uuid_message_shortens_long_names():
    with pytest.raises(BadInputError) as err:
        check_uuid("y" * 500)
    assert "y" * 41 not in str(err.value) and "..." in str(err.value)


def test_store_refuses_path_traversal_uuids(any_backend):
    with pytest.raises(BadInputError):
        any_backend.create("../escape", record("x"))
    with pytest.raises(BadInputError):
        any_backend.read("..")
    with pytest.raises(BadInputError):
        any_backend.delete("../escape")
    assert not (any_backend.root.parent / "escape").exists() and any_backend.list() == []


# --- create / read (every backend) ------------------------------------------------------

def test_create_publishes_the_head(any_backend):
    any_backend.create("alice", record("alice"))
    assert any_backend.exists("alice")
    assert fields(any_backend.read("alice")) == record("alice")
    assert any_backend.list() == ["alice"]


def test_create_leaves_a_head_folder_and_no_temp_files(store):
    store.create("alice", record("alice"))
    assert (store.root / "alice" / "head.json").is_file()
    assert tmp_leftovers(store) == []


def test_create_with_weights_starts_at_revision_one(any_backend):
    any_backend.create("bob", record("bob"), weights(0.5))
    rec = any_backend.read("bob")
    assert rec["revision"] == 1 and rec["weights"]
    assert torch.equal(any_backend.read_weights("bob", rec)["fc.weight"], torch.full((2, 3), 0.5))


def test_second_create_of_same_uuid_conflicts_and_keeps_the_first(any_backend):
    any_backend.create("alice", record("alice", note="first"), weights(1.0))
    with pytest.raises(ConflictError, match="'alice' already exists"):
        any_backend.create("alice", record("alice", note="second"), weights(2.0))
    rec = any_backend.read("alice")
    assert rec["note"] == "first"
    assert torch.equal(any_backend.read_weights("alice", rec)["fc.weight"], torch.full((2, 3), 1.0))
    assert any_backend.list() == ["alice"]


def test_a_refused_create_leaves_no_files(store):
    store.create("alice", record("alice"), weights(1.0))
    with pytest.raises(ConflictError):
        store.create("alice", record("alice"), weights(2.0))
    assert sorted(p.name for p in store.head_dir("alice").iterdir()) == ["head.json",
                                                                         "weights-1.pt"]
    assert tmp_leftovers(store) == []


def test_read_unknown_head_is_not_found(any_backend):
    with pytest.raises(HeadNotFoundError, match="nobody"):
        any_backend.read("nobody")
    with pytest.raises(HeadNotFoundError):
        any_backend.signature("nobody")
    assert any_backend.exists("nobody") is False


def test_store_reopens_existing_heads(any_store, any_backend, tmp_path):
    any_backend.create("keep", record("keep"), weights(4.0))
    # the same folder, or for a distributed store another machine's (empty) cache
    again = open_store(any_store, tmp_path / ("heads" if any_store is None else "elsewhere"))
    try:
        rec = again.read("keep")
        assert torch.equal(again.read_weights("keep", rec)["fc.weight"], torch.full((2, 3), 4.0))
    finally:
        close_store(again)


# --- weights (every backend) ---------------------------------------------------------------

def test_read_weights_is_none_for_untrained_head(any_backend):
    any_backend.create("new", record("new"))
    assert any_backend.read_weights("new", any_backend.read("new")) is None


def test_write_weights_bumps_revision_and_switches_the_record(any_backend):
    any_backend.create("h", record("h"), weights(1.0))
    first = any_backend.read("h")
    new = any_backend.write_weights("h", first, weights(2.0), ["a", "b"], run={"epochs": 3})
    assert new["revision"] == 2 and new["weights"] != first["weights"]
    assert new["labels"] == ["a", "b"] and new["runs"] == [{"epochs": 3}]
    assert any_backend.read("h") == new
    assert torch.equal(any_backend.read_weights("h", new)["fc.weight"], torch.full((2, 3), 2.0))


def test_write_weights_replaces_the_old_file(store, monkeypatch):
    monkeypatch.setenv("PH_WEIGHT_HISTORY", "1")  # no earlier revision kept (test_revisions)
    store.create("h", record("h"), weights(1.0))
    new = store.write_weights("h", store.read("h"), weights(2.0), None)
    assert new["weights"] == "weights-2.pt"
    files = sorted(p.name for p in store.head_dir("h").iterdir())
    assert files == ["head.json", "weights-2.pt"]  # old weights deleted, no temp files


def test_write_weights_on_untrained_head_starts_revision_one(any_backend):
    any_backend.create("h", record("h"))
    new = any_backend.write_weights("h", any_backend.read("h"), weights(3.0), None)
    assert new["revision"] == 1 and new["weights"]
    assert "runs" not in new
    assert torch.equal(any_backend.read_weights("h", any_backend.read("h"))["fc.bias"],
                       torch.zeros(2))


def test_write_weights_keeps_only_the_last_runs(any_backend):
    any_backend.create("h", record("h"))
    rec = any_backend.read("h")
    for i in range(RUNS_KEPT + 3):
        rec = any_backend.write_weights("h", rec, weights(float(i)), None, run={"i": i})
    assert [r["i"] for r in rec["runs"]] == list(range(3, RUNS_KEPT + 3))
    assert rec["revision"] == RUNS_KEPT + 3 == any_backend.read("h")["revision"]


def test_reading_weights_of_a_stale_record_raises_file_not_found(any_backend, monkeypatch):
    """The registry retries on FileNotFoundError when the weights switch under a reader
    (once a stale record's weights leave the kept history: here at once)."""
    monkeypatch.setenv("PH_WEIGHT_HISTORY", "1")
    any_backend.create("h", record("h"), weights(1.0))
    stale = any_backend.read("h")
    any_backend.write_weights("h", stale, weights(2.0), None)
    with pytest.raises(FileNotFoundError):
        any_backend.read_weights("h", stale)


def test_readers_see_the_old_weights_or_the_new_never_a_mix(any_backend):
    """read_current pairs a record with its own weights while a writer switches them."""
    any_backend.create("h", record("h"), weights(1.0))
    done, seen, errors = threading.Event(), [], []

    def reader():
        try:
            while not done.is_set():
                rec, state = any_backend.read_current("h")
                seen.append((rec["revision"], state["fc.weight"][0, 0].item()))
        except Exception as exc:  # noqa: BLE001  (reported below)
            errors.append(exc)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        rec = any_backend.read("h")
        for _ in range(8):
            rec = any_backend.write_weights("h", rec, weights(float(rec["revision"] + 1)), None)
    finally:
        done.set()
        thread.join(30)
    assert not errors and seen
    assert all(revision == value for revision, value in seen)


def test_signature_changes_after_a_write(any_backend):
    any_backend.create("h", record("h"))
    sig = any_backend.signature("h")
    assert any_backend.signature("h") == sig
    any_backend.write_weights("h", any_backend.read("h"), weights(1.0), None)
    after = any_backend.signature("h")
    assert after != sig
    any_backend.write("h", {**any_backend.read("h"), "note": "x"})
    assert any_backend.signature("h") != after
    assert any_backend.read("h")["note"] == "x"


# --- delete / list (every backend) ----------------------------------------------------------

def test_delete_removes_the_head(any_backend):
    any_backend.create("gone", record("gone"), weights(1.0))
    any_backend.delete("gone")
    assert any_backend.list() == [] and not any_backend.exists("gone")
    with pytest.raises(HeadNotFoundError):
        any_backend.read("gone")
    with pytest.raises(HeadNotFoundError):
        any_backend.signature("gone")


def test_delete_leaves_no_files(store):
    store.create("gone", record("gone"), weights(1.0))
    store.delete("gone")
    assert not store.head_dir("gone").exists()
    assert tmp_leftovers(store) == []


def test_delete_unknown_head_is_not_found(any_backend):
    with pytest.raises(HeadNotFoundError, match="no head with uuid 'ghost' to delete"):
        any_backend.delete("ghost")


def test_uuid_can_be_reused_after_delete(any_backend):
    any_backend.create("again", record("again", n=1), weights(1.0))
    any_backend.delete("again")
    any_backend.create("again", record("again", n=2))
    rec = any_backend.read("again")
    assert rec["n"] == 2 and any_backend.read_weights("again", rec) is None


def test_list_pages_in_sorted_order(any_backend):
    for uid in ("zed", "amy", "mid.1", "bo", "Cy"):
        any_backend.create(uid, record(uid))
    every = ["Cy", "amy", "bo", "mid.1", "zed"]
    assert any_backend.list() == every
    assert any_backend.list(0, 2) == every[:2]
    assert any_backend.list(2, 2) == every[2:4]
    assert any_backend.list(4, 10) == every[4:]
    assert any_backend.list(3) == every[3:]
    assert any_backend.list(5, 5) == [] and any_backend.list(50) == []
    assert any_backend.list(1, 0) == []
    any_backend.delete("bo")
    assert any_backend.list(1, 2) == ["amy", "mid.1"]


def test_list_skips_underscore_folders_and_folders_without_record(store):
    for uid in ("zed", "amy", "mid.1"):
        store.create(uid, record(uid))
    (store.root / "_private").mkdir()
    (store.root / "_private" / "head.json").write_text("{}")
    (store.root / "half").mkdir()  # no head.json
    store.write_head_list({"config": {}})
    assert store.list() == ["amy", "mid.1", "zed"]
    assert store.list(1, 1) == ["mid.1"]


# --- replace: one switch from the old head to the new one (readers: every backend) -------

def old_head(store, uuid: str = "h") -> None:
    """A trained head with stored examples, at revision 2."""
    store.create(uuid, record(uuid, note="old"), weights(1.0))
    store.write_weights(uuid, store.read(uuid), weights(1.5), None)
    (store.head_dir(uuid) / "examples.jsonl").write_text("old examples\n")


def assert_whole(store, note: str, value: float, uuid: str = "h") -> None:
    rec, state = store.read_current(uuid)
    assert rec["note"] == note
    assert torch.equal(state["fc.weight"], torch.full((2, 3), value))


def test_replace_switches_to_the_new_head_and_removes_the_old_files(store):
    old_head(store)
    store.create("h", record("h", note="new"), weights(2.0), replace=True)
    assert_whole(store, "new", 2.0)
    assert store.read("h")["revision"] == 1
    assert sorted(p.name for p in store.head_dir("h").iterdir()) == ["head.json", "weights-1.pt"]
    assert tmp_leftovers(store) == []
    store.create("fresh", record("fresh"), replace=True)  # nothing to replace: a plain create
    assert store.read("fresh") == record("fresh")


def test_readers_see_the_old_head_or_the_new_one_whole_during_replaces(any_backend):
    """Every head is at revision 1: a reader that mixed two heads' records and weights
    would see a note that does not match its weights."""
    store = any_backend
    store.create("h", record("h", note="0"), weights(0.0))
    seen, errors, done = set(), [], threading.Event()

    def read_all_the_time():
        while not done.is_set():
            try:
                rec, state = store.read_current("h")
                assert float(state["fc.weight"][0, 0]) == float(rec["note"])
                seen.add(rec["note"])
            except Exception as exc:  # noqa: BLE001
                errors.append(exc)

    reader = threading.Thread(target=read_all_the_time)
    reader.start()
    for value in range(1, 30):
        store.create("h", record("h", note=str(value)), weights(float(value)), replace=True)
    done.set()
    reader.join(10)
    assert errors == [] and len(seen) > 1


def test_a_replace_that_fails_at_the_switch_keeps_the_old_head(store, monkeypatch):
    old_head(store)

    def broken(a, b):
        raise OSError(5, "I/O error")

    monkeypatch.setattr(local_store, "exchange_paths", broken)
    with pytest.raises(OSError):
        store.create("h", record("h", note="new"), weights(2.0), replace=True)
    assert_whole(store, "old", 1.5)
    assert (store.head_dir("h") / "examples.jsonl").read_text() == "old examples\n"
    assert tmp_leftovers(store) == []


def test_without_an_atomic_exchange_replace_moves_the_old_head_aside_first(store, monkeypatch):
    monkeypatch.setattr(local_store, "exchange_paths", lambda a, b: False)
    old_head(store)
    store.create("h", record("h", note="new"), weights(2.0), replace=True)
    assert_whole(store, "new", 2.0)
    assert tmp_leftovers(store) == []


# A process killed at the switch: `when` says where, `exchange` whether the file system
# swaps folders atomically (else the store moves the old head aside, then the new in).
KILLED_REPLACE = textwrap.dedent("""
    import os, sys, torch
    from ph.stores import local
    root, when, exchange = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
    real_exchange, real_rename, renames = local.exchange_paths, os.rename, []

    def exchange_then_die(a, b):
        if when == "before":
            os._exit(9)
        real_exchange(a, b)
        os._exit(9)

    def rename(a, b):
        renames.append(a)
        if len(renames) == 2:  # the old head is aside, the new one not yet in place
            os._exit(9)
        real_rename(a, b)

    local.exchange_paths = exchange_then_die if exchange else (lambda a, b: False)
    os.rename = rename
    w = {"fc.weight": torch.full((2, 3), 2.0), "fc.bias": torch.zeros(2)}
    local.LocalStore(root).create("h", {"uuid": "h", "note": "new", "revision": 0}, w, replace=True)
""")


@pytest.mark.parametrize("when, exchange, survivor", [("before", "1", ("old", 1.5)),
                                                      ("after", "1", ("new", 2.0)),
                                                      ("between", "0", ("old", 1.5))])
def test_a_process_killed_while_replacing_leaves_one_head_whole(store, when, exchange, survivor):
    old_head(store)
    out = subprocess.run([sys.executable, "-c", KILLED_REPLACE, str(store.root), when, exchange],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 9, out.stderr
    reopened = HeadStore(store.root)  # puts back an old head moved aside
    assert_whole(reopened, *survivor)
    assert reopened.list() == ["h"]
    if survivor[0] == "old":
        assert (store.head_dir("h") / "examples.jsonl").exists()
    assert not any(name.startswith("replaced-") for name in tmp_leftovers(store))


# --- locks and training (every backend) -----------------------------------------------------

def test_head_lock_excludes_another_thread(any_backend):
    acquired = threading.Event()

    def other():
        with any_backend.lock("alice"):
            acquired.set()

    with any_backend.lock("alice"):
        thread = threading.Thread(target=other)
        thread.start()
        assert not acquired.wait(0.3)
        with any_backend.lock("bob"):  # another head's lock is free
            pass
    assert acquired.wait(10)
    thread.join(10)


def test_locks_of_several_heads_are_taken_in_one_order(any_backend):
    done = []

    def take(order):
        for _ in range(20):
            with any_backend.locks(*order):
                pass
        done.append(order)

    threads = [threading.Thread(target=take, args=(o,), daemon=True) for o in (("a", "b"), ("b", "a"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(done) == 2  # no deadlock


def test_one_training_per_head(any_backend):
    any_backend.create("h", record("h"))
    assert not any_backend.is_training("h")
    with any_backend.training("h"):
        assert any_backend.is_training("h") and not any_backend.is_training("other")
        with pytest.raises(ConflictError, match="'h' is already training"):
            with any_backend.training("h", wait_s=0.1):
                pass
        with any_backend.training("other"):  # another head trains meanwhile
            pass
    assert not any_backend.is_training("h")
    with any_backend.training("h"):  # free again
        assert any_backend.is_training("h")


def test_a_training_waits_for_the_one_ending(any_backend):
    ended = threading.Event()

    def short_run():
        with any_backend.training("h"):
            started.set()
            time.sleep(0.3)
        ended.set()

    started = threading.Event()
    thread = threading.Thread(target=short_run)
    thread.start()
    assert started.wait(10)
    with any_backend.training("h", wait_s=10):
        assert ended.is_set()
    thread.join(10)


# --- followers, head list, code (every backend) ---------------------------------------------

def test_followers_are_added_and_removed_one_by_one(any_backend):
    any_backend.create("p", record("p"))
    assert any_backend.followers("p") == [] and any_backend.followers("nobody") == []
    for kid in ("k2", "k1"):
        any_backend.add_follower("p", kid)
    any_backend.add_follower("p", "k1")  # twice is one
    assert any_backend.followers("p") == ["k1", "k2"]
    any_backend.remove_follower("p", "k1")
    any_backend.remove_follower("p", "k1")  # twice is fine
    assert any_backend.followers("p") == ["k2"]
    assert any_backend.list() == ["p"]
    with pytest.raises(BadInputError):
        any_backend.add_follower("p", "../x")


def test_followers_are_one_file_each_and_go_with_an_empty_parent(store):
    store.create("p", record("p"))
    store.add_follower("p", "k1")
    assert (store.root / "_children" / "p" / "k1").is_file()
    assert "_children" not in store.list()
    store.remove_follower("p", "k1")
    store.delete("p")
    assert not (store.root / "_children" / "p").exists()


def test_head_list_write_and_read(any_backend):
    assert any_backend.read_head_list() is None
    any_backend.write_head_list({"config": {"Model": {"type": "PersonalizedHead"}}, "code": {}})
    assert any_backend.read_head_list() == {"config": {"Model": {"type": "PersonalizedHead"}},
                                            "code": {}}
    any_backend.write_head_list({"config": {}, "code": {"a.py": "x"}})
    assert any_backend.read_head_list() == {"config": {}, "code": {"a.py": "x"}}


def test_head_list_signature_changes_with_the_file(store):
    assert store.head_list_signature() is None
    store.write_head_list({"config": {}})
    sig = store.head_list_signature()
    assert sig is not None
    store.write_head_list({"config": {"Model": {}}})
    assert store.head_list_signature() != sig


def test_save_code_dedups_by_content(any_backend):
    a = any_backend.save_code("class A:\n    pass\n")
    b = any_backend.save_code("class A:\n    pass\n")
    c = any_backend.save_code("class B:\n    pass\n")
    assert a == b and a != c
    assert any_backend.load_code(a) == "class A:\n    pass\n"
    assert any_backend.load_code(c) == "class B:\n    pass\n"


def test_saved_code_is_one_file_per_content(store):
    a = store.save_code("class A:\n    pass\n")
    store.save_code("class A:\n    pass\n")
    assert [p.stem for p in (store.root / "_code").iterdir()] == [a]


# --- jobs (every backend) -------------------------------------------------------------------

def test_job_write_and_read(any_backend):
    job = {"id": "job-1", "uuid": "alice", "state": "running", "progress": 0.5}
    any_backend.write_job(job)
    assert any_backend.read_job("job-1") == job
    any_backend.write_job({**job, "state": "succeeded"})
    assert any_backend.read_job("job-1")["state"] == "succeeded"


def test_a_job_write_that_expects_an_attempt_loses_to_whoever_ended_it_first(any_backend):
    job = {"id": "job-2", "uuid": "alice", "state": "running", "attempt": 1}
    any_backend.write_job(job)
    assert any_backend.write_job({**job, "epoch": 3}, expect_attempt=1)  # still its attempt
    assert any_backend.read_job("job-2")["epoch"] == 3
    any_backend.write_job({**job, "state": "queued", "attempt": 2})  # sent again meanwhile
    assert not any_backend.write_job({**job, "state": "succeeded"}, expect_attempt=1)
    assert any_backend.read_job("job-2")["attempt"] == 2
    any_backend.write_job({**job, "state": "failed", "attempt": 2})
    assert not any_backend.write_job({**job, "state": "queued", "attempt": 3}, expect_attempt=2)
    assert any_backend.read_job("job-2")["state"] == "failed"
    assert not any_backend.write_job({"id": "none", "state": "failed"}, expect_attempt=1)


def test_latest_job_of_a_head(any_backend):
    assert any_backend.latest_job("alice") is None
    any_backend.set_latest_job("alice", "job-1")
    any_backend.set_latest_job("alice", "job-2")
    assert any_backend.latest_job("alice") == "job-2" and any_backend.latest_job("bob") is None
    with pytest.raises(BadInputError):
        any_backend.set_latest_job("alice", "../x")


def test_stop_request_is_set_seen_and_cleared(any_backend):
    assert not any_backend.stop_requested("job-1")
    any_backend.request_stop("job-1")
    assert any_backend.stop_requested("job-1") and not any_backend.stop_requested("job-2")
    any_backend.clear_stop("job-1")
    any_backend.clear_stop("job-1")  # twice is fine
    assert not any_backend.stop_requested("job-1")


def test_unknown_job_is_not_found_and_bad_job_id_is_bad_input(any_backend):
    with pytest.raises(HeadNotFoundError, match="no training job 'nojob'"):
        any_backend.read_job("nojob")
    with pytest.raises(BadInputError):
        any_backend.read_job("../list")


# --- job records in the local folder: finished ones are kept for a bounded time and number

def put_job(store, job_id: str, state: str, age_s: float = 0) -> None:
    """A job record written `age_s` ago (without pruning, as write_job would)."""
    path = store.job_path(job_id)
    atomic_write_json(path, {"id": job_id, "uuid": "alice", "state": state})
    written = time.time() - age_s
    os.utime(path, (written, written))


def job_ids(store) -> list:
    return sorted(p.stem for p in (store.root / "_jobs").glob("*.json"))


def test_only_the_newest_finished_job_records_are_kept(tmp_path, monkeypatch):
    monkeypatch.setenv("PH_JOB_RECORDS_KEPT", "3")
    store = HeadStore(tmp_path / "heads")
    put_job(store, "old-running", "running", 100)
    put_job(store, "old-queued", "queued", 99)
    for i in range(5):
        put_job(store, f"done{i}", "succeeded", 50 - i)
    store.job_path("done0").with_suffix(".stop").touch()
    store.write_job({"id": "last", "uuid": "alice", "state": "failed"})
    assert job_ids(store) == ["done3", "done4", "last", "old-queued", "old-running"]
    assert not store.job_path("done0").with_suffix(".stop").exists()
    with pytest.raises(NotFoundError, match="no training job 'done0'.*newest 3"):
        store.read_job("done0")


def test_finished_job_records_older_than_the_max_age_go_and_active_ones_stay(tmp_path,
                                                                            monkeypatch):
    monkeypatch.setenv("PH_JOB_RECORDS_MAX_AGE_S", "3600")
    store = HeadStore(tmp_path / "heads")
    put_job(store, "old-done", "stopped", 7200)
    put_job(store, "old-running", "running", 7200)  # a head's latest job, still active
    put_job(store, "recent", "succeeded", 60)
    store.set_latest_job("alice", "old-running")
    store.write_job({"id": "now-running", "uuid": "bob", "state": "running"})
    assert "old-done" in job_ids(store)  # writing an active job prunes nothing
    store.write_job({"id": "now-done", "uuid": "bob", "state": "succeeded"})
    assert job_ids(store) == ["now-done", "now-running", "old-running", "recent"]
    assert store.latest_job("alice") == "old-running"


@pytest.mark.parametrize("env, value", [("PH_JOB_RECORDS_KEPT", "0"),
                                        ("PH_JOB_RECORDS_KEPT", "many"),
                                        ("PH_JOB_RECORDS_MAX_AGE_S", "-5"),
                                        ("PH_JOB_RECORDS_MAX_AGE_S", "1.5")])
def test_job_retention_settings_are_checked_when_the_store_opens(any_store, tmp_path,
                                                                 monkeypatch, env, value):
    monkeypatch.setenv(env, value)
    with pytest.raises(ConfigError, match=f"{env}: must be a whole number >= 1, got '{value}'"):
        open_store(any_store, tmp_path / "heads")


# --- examples (every backend) ---------------------------------------------------------------

def rows(*texts, label="a"):
    return [{"label": label, "text": t} for t in texts]


# (the example log's own behaviours, on every backend: tests/stores/test_example_files.py)
def test_a_new_head_of_a_reused_uuid_has_no_examples(any_backend):
    any_backend.create("h", record("h"))
    any_backend.examples("h").append(rows("old"))
    any_backend.delete("h")
    any_backend.create("h", record("h"))
    log = any_backend.examples("h")
    assert log.read() == [] and log.summary().count == 0
    assert log.append(rows("new")).count == 1


# --- fileio ----------------------------------------------------------------------------------

def test_atomic_write_bytes_replaces_the_file(tmp_path):
    path = tmp_path / "sub" / "f.bin"
    atomic_write_bytes(path, b"one")
    atomic_write_bytes(path, b"two")
    assert path.read_bytes() == b"two"
    assert [p.name for p in path.parent.iterdir()] == ["f.bin"]


def test_atomic_write_keeps_old_file_when_the_writer_raises_midway(tmp_path):
    path = tmp_path / "f.json"
    atomic_write_json(path, {"v": 1})
    with pytest.raises(RuntimeError, match="crash"):
        with atomic_open(path) as fh:
            fh.write(b'{"v": 2, "half')
            fh.flush()
            raise RuntimeError("crash")
    assert json.loads(path.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]  # no temp files left


def test_atomic_write_bytes_keeps_old_file_when_data_cannot_be_written(tmp_path):
    path = tmp_path / "f.txt"
    atomic_write_bytes(path, b"old")
    with pytest.raises(TypeError):
        atomic_write_bytes(path, "not bytes")  # the write itself raises
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


LOCK_PROBE = textwrap.dedent("""
    import fcntl, os, sys
    fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print("locked")
    else:
        print("free")
""")


def probe(path) -> str:
    out = subprocess.run([sys.executable, "-c", LOCK_PROBE, str(path)], capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_file_lock_excludes_another_process(tmp_path):
    path = tmp_path / "locks" / "h.lock"
    with file_lock(path):
        assert probe(path) == "locked"
    assert probe(path) == "free"


def test_shared_file_lock_still_excludes_an_exclusive_locker(tmp_path):
    path = tmp_path / "s.lock"
    with file_lock(path, shared=True):
        assert probe(path) == "locked"
    assert probe(path) == "free"


def test_file_lock_excludes_another_thread(tmp_path):
    path = tmp_path / "t.lock"
    acquired = threading.Event()

    def other():
        with file_lock(path):
            acquired.set()

    with file_lock(path):
        thread = threading.Thread(target=other)
        thread.start()
        assert not acquired.wait(0.3)
    assert acquired.wait(10)
    thread.join(10)


def test_store_head_lock_excludes_another_process(store):
    with store.lock("alice"):
        assert probe(store.root / "_locks" / "alice.lock") == "locked"
    assert probe(store.root / "_locks" / "alice.lock") == "free"
