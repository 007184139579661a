"""HeadStore (ph/store.py) and crash-safe file helpers (ph/fileio.py)."""
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

from ph.errors import BadInputError, ConfigError, ConflictError, HeadNotFoundError, NotFoundError
from ph.fileio import atomic_open, atomic_write_bytes, atomic_write_json, file_lock
from ph.stores import LocalStore as HeadStore, check_uuid, new_uuid


def record(uuid: str, **extra) -> dict:
    return {"uuid": uuid, "config": {"Model": {"type": "PersonalizedHead"}}, "labels": None,
            "revision": 0, **extra}


def weights(value: float) -> dict:
    return {"fc.weight": torch.full((2, 3), value), "fc.bias": torch.zeros(2)}


@pytest.fixture
def store(tmp_path) -> HeadStore:
    return HeadStore(tmp_path / "heads")


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


def test_store_refuses_path_traversal_uuids(store):
    with pytest.raises(BadInputError):
        store.create("../escape", record("x"))
    with pytest.raises(BadInputError):
        store.read("..")
    assert not (store.root.parent / "escape").exists()


# --- create / read ---------------------------------------------------------------------------

def test_create_publishes_the_head_folder(store):
    store.create("alice", record("alice"))
    assert store.exists("alice")
    assert store.read("alice") == record("alice")
    assert store.list() == ["alice"]
    assert tmp_leftovers(store) == []


def test_create_with_weights_starts_at_revision_one(store):
    store.create("bob", record("bob"), weights(0.5))
    rec = store.read("bob")
    assert rec["revision"] == 1 and rec["weights"] == "weights-1.pt"
    assert torch.equal(store.read_weights("bob", rec)["fc.weight"], torch.full((2, 3), 0.5))


def test_second_create_of_same_uuid_conflicts_and_keeps_the_first(store):
    store.create("alice", record("alice", note="first"), weights(1.0))
    with pytest.raises(ConflictError, match="'alice' already exists"):
        store.create("alice", record("alice", note="second"), weights(2.0))
    rec = store.read("alice")
    assert rec["note"] == "first"
    assert torch.equal(store.read_weights("alice", rec)["fc.weight"], torch.full((2, 3), 1.0))
    assert sorted(p.name for p in store.head_dir("alice").iterdir()) == ["head.json",
                                                                         "weights-1.pt"]
    assert tmp_leftovers(store) == []


def test_read_unknown_head_is_not_found(store):
    with pytest.raises(HeadNotFoundError, match="nobody"):
        store.read("nobody")
    with pytest.raises(HeadNotFoundError):
        store.signature("nobody")
    assert store.exists("nobody") is False


# --- weights ---------------------------------------------------------------------------------

def test_read_weights_is_none_for_untrained_head(store):
    store.create("new", record("new"))
    assert store.read_weights("new", store.read("new")) is None


def test_write_weights_bumps_revision_and_replaces_the_old_file(store):
    store.create("h", record("h"), weights(1.0))
    first = store.read("h")
    new = store.write_weights("h", first, weights(2.0), ["a", "b"], run={"epochs": 3})
    assert new["revision"] == 2 and new["weights"] == "weights-2.pt"
    assert new["labels"] == ["a", "b"] and new["runs"] == [{"epochs": 3}]
    assert store.read("h") == new
    files = sorted(p.name for p in store.head_dir("h").iterdir())
    assert files == ["head.json", "weights-2.pt"]  # old weights deleted, no temp files
    assert torch.equal(store.read_weights("h", new)["fc.weight"], torch.full((2, 3), 2.0))


def test_write_weights_on_untrained_head_starts_revision_one(store):
    store.create("h", record("h"))
    new = store.write_weights("h", store.read("h"), weights(3.0), None)
    assert new["revision"] == 1 and new["weights"] == "weights-1.pt"
    assert "runs" not in new
    assert torch.equal(store.read_weights("h", store.read("h"))["fc.bias"], torch.zeros(2))


def test_write_weights_keeps_only_the_last_runs(store):
    store.create("h", record("h"))
    rec = store.read("h")
    for i in range(25):
        rec = store.write_weights("h", rec, weights(float(i)), None, run={"i": i})
    assert [r["i"] for r in rec["runs"]] == list(range(5, 25))
    assert rec["revision"] == 25


def test_reading_weights_of_a_stale_record_raises_file_not_found(store):
    """The registry retries on FileNotFoundError when the weights switch under a reader."""
    store.create("h", record("h"), weights(1.0))
    stale = store.read("h")
    store.write_weights("h", stale, weights(2.0), None)
    with pytest.raises(FileNotFoundError):
        store.read_weights("h", stale)


def test_signature_changes_after_a_write(store):
    store.create("h", record("h"))
    sig = store.signature("h")
    assert store.signature("h") == sig
    store.write_weights("h", store.read("h"), weights(1.0), None)
    after = store.signature("h")
    assert after != sig
    store.write("h", {**store.read("h"), "note": "x"})
    assert store.signature("h") != after


# --- delete / list -------------------------------------------------------------------------

def test_delete_removes_the_head(store):
    store.create("gone", record("gone"), weights(1.0))
    store.delete("gone")
    assert not store.head_dir("gone").exists()
    assert store.list() == []
    with pytest.raises(HeadNotFoundError):
        store.read("gone")
    assert tmp_leftovers(store) == []


def test_delete_unknown_head_is_not_found(store):
    with pytest.raises(HeadNotFoundError, match="no head with uuid 'ghost' to delete"):
        store.delete("ghost")


def test_uuid_can_be_reused_after_delete(store):
    store.create("again", record("again", n=1))
    store.delete("again")
    store.create("again", record("again", n=2))
    assert store.read("again")["n"] == 2


def test_list_skips_underscore_folders_and_folders_without_record(store):
    for uid in ("zed", "amy", "mid.1"):
        store.create(uid, record(uid))
    (store.root / "_private").mkdir()
    (store.root / "_private" / "head.json").write_text("{}")
    (store.root / "half").mkdir()  # no head.json
    store.write_head_list({"config": {}})
    assert store.list() == ["amy", "mid.1", "zed"]



# --- replace: one switch from the old head to the new one ---------------------------------

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


def test_readers_see_the_old_head_or_the_new_one_whole_during_replaces(store):
    """Every head uses weights-1.pt: a reader that mixed two heads' files would see a
    note that does not match its weights."""
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

    monkeypatch.setattr("ph.stores.local.exchange_paths", broken)
    with pytest.raises(OSError):
        store.create("h", record("h", note="new"), weights(2.0), replace=True)
    assert_whole(store, "old", 1.5)
    assert (store.head_dir("h") / "examples.jsonl").read_text() == "old examples\n"
    assert tmp_leftovers(store) == []


def test_without_an_atomic_exchange_replace_moves_the_old_head_aside_first(store, monkeypatch):
    monkeypatch.setattr("ph.stores.local.exchange_paths", lambda a, b: False)
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

# --- head list, code, jobs ------------------------------------------------------------------

def test_head_list_write_and_read(store):
    assert store.read_head_list() is None
    assert store.head_list_signature() is None
    store.write_head_list({"config": {"Model": {"type": "PersonalizedHead"}}, "code": {}})
    assert store.read_head_list() == {"config": {"Model": {"type": "PersonalizedHead"}},
                                      "code": {}}
    sig = store.head_list_signature()
    assert sig is not None
    store.write_head_list({"config": {}, "code": {"a.py": "x"}})
    assert store.read_head_list()["code"] == {"a.py": "x"}
    assert store.head_list_signature() != sig


def test_save_code_dedups_by_content(store):
    a = store.save_code("class A:\n    pass\n")
    b = store.save_code("class A:\n    pass\n")
    c = store.save_code("class B:\n    pass\n")
    assert a == b and a != c
    assert sorted(p.stem for p in (store.root / "_code").iterdir()) == sorted([a, c])
    assert store.load_code(a) == "class A:\n    pass\n"
    assert store.load_code(c) == "class B:\n    pass\n"


def test_job_write_and_read(store):
    job = {"id": "job-1", "uuid": "alice", "state": "running", "progress": 0.5}
    store.write_job(job)
    assert store.read_job("job-1") == job
    store.write_job({**job, "state": "done"})
    assert store.read_job("job-1")["state"] == "done"


def test_unknown_job_is_not_found_and_bad_job_id_is_bad_input(store):
    with pytest.raises(HeadNotFoundError, match="no training job 'nojob'"):
        store.read_job("nojob")
    with pytest.raises(BadInputError):
        store.read_job("../list")



# --- job records: finished ones are kept for a bounded time and number ----------------------

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
def test_job_retention_settings_are_checked_when_the_store_opens(tmp_path, monkeypatch, env,
                                                                 value):
    monkeypatch.setenv(env, value)
    with pytest.raises(ConfigError, match=f"{env}: must be a whole number >= 1 .*got '{value}'"):
        HeadStore(tmp_path / "heads")

def test_store_reopens_existing_heads(store):
    store.create("keep", record("keep"), weights(4.0))
    again = HeadStore(store.root)
    rec = again.read("keep")
    assert torch.equal(again.read_weights("keep", rec)["fc.weight"], torch.full((2, 3), 4.0))


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


def test_followers_are_one_file_each_and_go_with_an_empty_parent(store):
    store.create("p", record("p"))
    assert store.followers("p") == [] and store.followers("nobody") == []
    for kid in ("k2", "k1"):
        store.add_follower("p", kid)
    assert store.followers("p") == ["k1", "k2"]
    store.remove_follower("p", "k1")
    store.remove_follower("p", "k1")  # twice is fine
    assert store.followers("p") == ["k2"]
    assert "_children" not in store.list()
    store.remove_follower("p", "k2")
    store.delete("p")
    assert not (store.root / "_children" / "p").exists()
    with pytest.raises(BadInputError):
        store.add_follower("p", "../x")


def test_locks_of_several_heads_are_taken_in_one_order(store):
    done = []

    def take(order):
        for _ in range(50):
            with store.locks(*order):
                pass
        done.append(order)

    threads = [threading.Thread(target=take, args=(o,), daemon=True) for o in (("a", "b"), ("b", "a"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(done) == 2  # no deadlock
