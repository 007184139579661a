"""What only the distributed store (RedisStore: Redis + an S3-compatible object store)
does: another server's change is seen on the next call through change notifications
(a cached head costs no round trip), fencing of training runs that lost their lease and
of writes from stale records, clear 503s while Redis or S3 is away and recovery when
it is back, URL checking, configs stored once by content, and expiring job records.

What both backends promise is tested on both in stores/test_stores.py, heads/test_service.py
and the other modules that use `any_store` / `any_registry`."""
from __future__ import annotations

import json
import os
import time
from urllib.parse import urlsplit

import pytest
import redis
import torch

from helpers.heads import small_config, training_held
from helpers.servers import RedisServer, TcpProxy, distributed_url
from helpers.stores import TEST_BUCKET, client_of, close_store, eventually, record, weights
from ph.errors import ConfigError, ConflictError, HeadNotFoundError, StoreUnavailableError
from ph.heads.service import HeadRegistry
from ph.stores import open_store
from ph.stores.base import JobRetention, weights_named

TEXTS = ["I want to order a pizza", "will it rain in Lima", "play some Bach", "wake me at 6"]


def raises_now(fn, error=Exception):
    """A check for `eventually`: whether fn() raises `error` now."""
    def check():
        try:
            fn()
        except error:
            return True
        return False
    return check


def objects_of(store, uuid: str) -> list[str]:
    return sorted(store.objects.list(f"heads/{uuid}/"))


@pytest.fixture
def servers(store_url, workdir):
    """Two servers' registries on one distributed store, each with its own cache folder."""
    made = [HeadRegistry(workdir / name, store=store_url) for name in ("server-a", "server-b")]
    for registry in made:
        assert registry.store._subscribed.wait(10)  # notifications flowing
    yield made
    for registry in made:
        close_store(registry.store)


@pytest.fixture
def store(store_url, workdir):
    made = open_store(store_url, workdir / "cache")
    yield made
    close_store(made)


@pytest.fixture
def registry(store_url, workdir):
    """A registry on this test's distributed store (not the local one of conftest)."""
    made = HeadRegistry(workdir / "heads", store=store_url)
    yield made
    close_store(made.store)


# --- (a) another server's change is seen on the next call ------------------------------------

def test_training_on_one_server_is_seen_by_another(servers, train_json):
    a, b = servers
    uid = a.create_head("h", small_config(epochs=2))
    before = b.predict(uid, TEXTS)
    assert b.cache.peek(uid).revision == 0
    a.train(uid)
    eventually(lambda: b.loaded(uid).revision == 1)
    assert b.predict(uid, TEXTS) == a.predict(uid, TEXTS) != before


def test_a_replaced_head_is_seen_by_another_server(servers):
    a, b = servers
    a.create_head("h", small_config())
    b.predict("h", TEXTS)
    wide = small_config()
    wide["Model"]["args"]["n_classes"] = 6
    a.create_head("h", wide, replace=True)
    eventually(lambda: b.loaded("h").config["Model"]["args"]["n_classes"] == 6)
    assert b.predict("h", TEXTS) == a.predict("h", TEXTS)


def test_a_deleted_head_is_not_found_on_another_server(servers):
    a, b = servers
    a.create_head("h", small_config())
    b.predict("h", TEXTS)
    a.delete_head("h")
    eventually(raises_now(lambda: b.predict("h", TEXTS), HeadNotFoundError))
    assert b.check_head("h") == {"uuid": "h", "exists": False}
    a.create_head("h", small_config())  # and a new head of that uuid is found again
    eventually(lambda: b.predict("h", TEXTS))


def test_a_head_created_elsewhere_is_found_at_once(servers):
    a, b = servers
    with pytest.raises(HeadNotFoundError):
        b.predict("new", TEXTS)
    a.create_head("new", small_config())
    assert b.predict("new", TEXTS) == a.predict("new", TEXTS)  # a miss is never remembered


def test_a_cached_head_predicts_without_touching_redis(servers, monkeypatch):
    a, b = servers
    a.create_head("h", small_config())
    expected = b.predict("h", TEXTS)
    sig = b.store.signature("h")
    calls = []

    def no_redis(*args, **kwargs):
        calls.append(args[0])
        raise AssertionError(f"Redis was called: {args}")

    with monkeypatch.context() as patch:
        patch.setattr(b.store.redis, "execute_command", no_redis)
        for _ in range(20):
            assert b.store.signature("h") == sig
            assert b.predict("h", TEXTS) == expected
    assert calls == []
    a.create_head("h", small_config(), replace=True)  # and a change is still noticed
    eventually(lambda: b.store.signature("h") != sig)


def test_while_notifications_are_down_every_call_reads_redis(servers, monkeypatch):
    """Without the subscription nothing is trusted from memory: a change is seen at once."""
    a, b = servers
    a.create_head("h", small_config())
    b.predict("h", TEXTS)
    b.store._subscribed.clear()  # as while the subscription reconnects
    sig = b.store.signature("h")
    monkeypatch.setattr(b.store, "_sigs", {"h": ("stale", 0)})
    assert b.store.signature("h") == sig != ("stale", 0)
    a.create_head("h", small_config(), replace=True)
    assert b.store.signature("h") != sig


@pytest.mark.slow  # waits seconds for the distrust
def test_a_silently_dead_notification_connection_is_distrusted_within_seconds(
        redis_server, store_url, workdir):
    """A partition that closes nothing (no error on the socket): the listener's echo stops
    coming back, so memory stops being trusted within ECHO_STALE_S and the change made
    meanwhile is read from Redis."""
    from ph.stores.redis_store import ECHO_STALE_S
    with TcpProxy(("127.0.0.1", redis_server.port)) as proxy:
        a = HeadRegistry(workdir / "a", store=store_url)
        b = HeadRegistry(workdir / "b", store=store_url.replace(f":{redis_server.port}/",
                                                                f":{proxy.port}/"))
        try:
            a.create_head("h", small_config())
            b.predict("h", TEXTS)
            eventually(b.store._trusted, timeout=5)
            proxy.freeze()
            a.create_head("h", small_config(), replace=True)  # b never hears of it
            eventually(lambda: not b.store._trusted(), timeout=ECHO_STALE_S + 1)
            proxy.thaw(cut=True)
            eventually(lambda: b.store.signature("h") == a.store.signature("h"), timeout=10)
            assert b.loaded("h").signature == a.store.signature("h")
        finally:
            close_store(a.store)
            close_store(b.store)


# --- (b) fencing: a run that lost its lease cannot publish ------------------------------------

def test_a_run_whose_lease_was_taken_away_cannot_publish(registry, train_json):
    uid = registry.create_head("h", small_config(epochs=2))
    before = registry.predict(uid, TEXTS)
    lease = registry.store.key("train", uid)
    plain = client_of(registry.store)
    deleted = []

    def lose_lease(_record):  # Redis lost it (or an operator removed it)
        deleted.append(plain.delete(lease))

    with pytest.raises(ConflictError, match="lost its lease.*weights were not published"):
        registry.train(uid, on_epoch=lose_lease)
    assert deleted[0] == 1  # it held the lease until then
    assert registry.check_head(uid)["revision"] == 0 and not registry.check_head(uid)["trained"]
    assert registry.predict(uid, TEXTS) == before
    assert objects_of(registry.store, uid) == []  # its upload was removed again
    assert registry.train(uid)["revision"] == 1  # the next run publishes


def test_a_stalled_run_whose_lease_expired_cannot_overwrite_a_newer_run(store_url, workdir,
                                                                         train_json, monkeypatch):
    monkeypatch.setenv("PH_TRAIN_LEASE_S", "0.5")
    stalled = HeadRegistry(workdir / "a", store=store_url)
    other = HeadRegistry(workdir / "b", store=store_url)
    try:
        uid = stalled.create_head("h", small_config(epochs=2))

        def stall():  # the process stalls: from now on its renewals never land
            monkeypatch.setattr(stalled.store.leases, "_renew", lambda keys, args: 1)

        with training_held(stalled, uid, on_hold=stall) as errors:
            assert other.check_head(uid)["training"]
            eventually(lambda: not other.store.is_training(uid), timeout=3)  # the lease expired
            assert other.train(uid)["revision"] == 1  # another server trains meanwhile
        assert len(errors) == 1 and isinstance(errors[0], ConflictError)
        assert "lost its lease" in str(errors[0])
        assert other.check_head(uid)["revision"] == 1
        assert objects_of(other.store, uid) == [other.store.read(uid)["weights"]]
    finally:
        close_store(stalled.store)
        close_store(other.store)


# --- examples: a reader racing a delete ------------------------------------------------------

def test_reading_examples_while_another_server_deletes_some_reads_the_new_chunks(store,
                                                                                monkeypatch):
    store.create("h", record("h"))
    log = store.examples("h")
    log.append([{"text": t, "label": "a"} for t in ("one", "two", "three")])
    state = log._state

    def delete_meanwhile():  # the chunks named here are replaced before they are read
        named = state()
        store.examples("h").delete({2})
        return named

    monkeypatch.setattr(log, "_state", delete_meanwhile)
    assert [r["text"] for r in log.read()] == ["one", "three"]


# --- (c) a write from a stale record is refused -----------------------------------------------

def test_a_write_from_a_stale_record_is_refused(store):
    store.create("h", record("h"), weights(1.0))
    stale = store.read("h")
    newer = store.write_weights("h", stale, weights(2.0), ["a"])
    with pytest.raises(ConflictError, match="changed by another call meanwhile"):
        store.write_weights("h", stale, weights(3.0), ["b"])
    with pytest.raises(ConflictError, match="changed by another call meanwhile"):
        store.write("h", {**stale, "note": "late"})
    assert store.read("h") == newer
    assert torch.equal(store.read_weights("h", newer)["fc.weight"], torch.full((2, 3), 2.0))
    assert set(objects_of(store, "h")) == weights_named(newer)  # the refused upload was removed
    assert len(weights_named(newer)) == 2  # the first revision is kept in the history
    store.delete("h")
    with pytest.raises(HeadNotFoundError, match="deleted meanwhile"):
        store.write("h", newer)


def test_a_record_of_a_replaced_head_cannot_write_to_the_new_one(store):
    store.create("h", record("h"))
    old = store.read("h")
    store.delete("h")
    store.create("h", record("h"))
    with pytest.raises(ConflictError):
        store.write_weights("h", old, weights(1.0), None)
    assert store.read("h")["revision"] == 0 and objects_of(store, "h") == []


# --- (d) Redis or S3 away: a clear 503, and recovery ----------------------------------------

@pytest.fixture
def own_redis(tmp_path):
    """A Redis of this test's own, which it may stop and start."""
    with RedisServer(tmp_path / "own-redis") as server:
        yield server


def assert_unavailable(error: StoreUnavailableError, names: str) -> None:
    assert error.kind == "unavailable" and error.http_status == 503
    assert names in str(error), str(error)
    assert error.to_dict()["error"] == "unavailable"


def test_redis_down_gives_a_clear_503_and_calls_work_once_it_is_back(own_redis, s3_server,
                                                                     monkeypatch, workdir):
    for name, value in s3_server.env.items():
        monkeypatch.setenv(name, value)
    url = distributed_url(own_redis.url, s3_server.endpoint, TEST_BUCKET, "own", "own")
    registry = HeadRegistry(workdir / "heads", store=url)
    try:
        registry.create_head("h", small_config())
        expected = registry.predict("h", TEXTS)
        own_redis.stop()
        calls = {"list_heads": registry.list_heads,
                 "create_head": lambda: registry.create_head("other", small_config()),
                 "check_head": lambda: registry.check_head("h"),
                 "add_examples": lambda: registry.add_examples("h", {"a": ["x"]}),
                 "delete_head": lambda: registry.delete_head("h")}
        for name, call in calls.items():
            started = time.monotonic()
            with pytest.raises(StoreUnavailableError) as err:
                call()
            assert_unavailable(err.value, f"Redis (redis://127.0.0.1:{own_redis.port}/0) cannot be "
                                          "reached")
            assert time.monotonic() - started < 5, f"{name} took too long to say so"
        # a cached head is not trusted while changes cannot be heard of
        eventually(raises_now(lambda: registry.predict("h", TEXTS), StoreUnavailableError), 5)
        own_redis.start()
        eventually(lambda: registry.list_heads() == ["h"], 10)
        assert registry.predict("h", TEXTS) == expected
        assert registry.check_head("h")["examples"] == 0  # the refused call changed nothing
        eventually(registry.store._subscribed.is_set, 10)  # notifications flow again
    finally:
        close_store(registry.store)


def test_object_store_down_gives_a_clear_503_and_cached_heads_still_predict(
        redis_server, s3_server, monkeypatch, workdir, train_json):
    from ph.stores import redis_records
    monkeypatch.setattr(redis_records, "INLINE_MAX_BYTES", 0)  # weights only in the bucket
    for name, value in s3_server.env.items():
        monkeypatch.setenv(name, value)
    with TcpProxy(("127.0.0.1", s3_server.port)) as proxy:
        endpoint = f"http://127.0.0.1:{proxy.port}"
        url = distributed_url(redis_server.url, endpoint, TEST_BUCKET, "s3down", "s3down")
        a = HeadRegistry(workdir / "a", store=url)
        b = HeadRegistry(workdir / "b", store=url)  # another machine: nothing cached yet
        try:
            a.create_head("h", small_config(epochs=2))
            a.train("h")
            expected = a.predict("h", TEXTS)
            calls = [  # (the call, what it needs of the object store)
                (lambda: a.train("h", on_epoch=lambda _record: proxy.block()),  # S3 goes
                 "writing data/"),  # away during the run: its data and weights cannot go up
                (lambda: b.predict("h", TEXTS), "reading heads/h/"),  # weights to download
                (lambda: a.add_examples("h", {"a": ["x"]}), "writing heads/h/")]
            for call, doing in calls:
                started = time.monotonic()
                with pytest.raises(StoreUnavailableError) as err:
                    call()
                assert_unavailable(err.value, f"the object store ({endpoint}) cannot be reached "
                                              f"while {doing}")
                assert time.monotonic() - started < 10, f"{doing} took too long to say so"
            assert a.predict("h", TEXTS) == expected  # cached: no object store needed
            info = a.check_head("h")
            assert info["revision"] == 1 and not info["training"] and info["examples"] == 0
            proxy.unblock()
            assert b.predict("h", TEXTS) == expected
            assert a.train("h")["revision"] == 2
        finally:
            close_store(a.store)
            close_store(b.store)


# --- (e) store URLs ---------------------------------------------------------------------------

@pytest.mark.parametrize("url, match", [
    ("redis://:s3cr3t@127.0.0.1:6379/0", "needs objects=s3://BUCKET"),
    ("redis://:s3cr3t@127.0.0.1:6379/0?objects=http://bucket", "needs objects=s3://BUCKET"),
    ("redis://:s3cr3t@127.0.0.1:6379/0?objects=s3://", "needs objects=s3://BUCKET"),
    ("redis://:s3cr3t@127.0.0.1:6379/0?objects=s3://b&colour=red",
     r"unknown setting\(s\) \['colour'\].*settings are objects, endpoint and namespace"),
    ("http://user:s3cr3t@127.0.0.1/heads", "unknown kind 'http://'.*redis://HOST:PORT/DB"),
    ("redis://:s3cr3t@127.0.0.1:notaport/0?objects=s3://b", "port"),
    ("redis://:s3cr3t@127.0.0.1:6379/x?objects=s3://b", "database"),
])
def test_malformed_store_urls_are_config_errors_that_hide_the_password(url, match, tmp_path):
    with pytest.raises(ConfigError, match=match) as err:
        open_store(url, tmp_path)
    assert "s3cr3t" not in str(err.value)
    assert "***" in str(err.value)


def test_the_password_is_not_shown_when_redis_cannot_be_reached(tmp_path):
    made = open_store("redis://:s3cr3t@127.0.0.1:1/0?objects=s3://b", tmp_path)
    try:
        message = str(made.unavailable(redis.ConnectionError("refused")))
        assert "s3cr3t" not in message and "127.0.0.1:1/0" in message
    finally:
        close_store(made)


def test_a_good_url_with_settings_opens_a_redis_store(store_url, tmp_path):
    made = open_store(store_url, tmp_path)
    try:
        query = dict(part.split("=", 1) for part in urlsplit(store_url).query.split("&"))
        assert made.distributed and made.ns == query["namespace"]
        assert made.objects.bucket == TEST_BUCKET and made.objects.endpoint == query["endpoint"]
        assert "?" not in made.url  # Redis gets its own part of the URL only
    finally:
        close_store(made)


# --- (f) a config is stored once, by content --------------------------------------------------

def test_heads_of_one_config_share_its_stored_copy(registry):
    plain = client_of(registry.store)
    for uid in ("a", "b", "c"):
        registry.create_head(uid, small_config())
    registry.create_head("d", small_config(epochs=4))
    configs = sorted(plain.scan_iter(match=registry.store.key("cfg", "*")))
    assert len(configs) == 2
    stored = json.loads(plain.get(registry.store.key("h", "a")))
    assert "config" not in stored and plain.get(registry.store.key("cfg", stored["config_id"]))
    assert stored["config_id"] == json.loads(plain.get(registry.store.key("h", "b")))["config_id"]
    assert registry.get_config("a") == registry.get_config("b")


# --- (g) finished job records expire ----------------------------------------------------------

def test_finished_job_records_expire_and_active_ones_do_not(store, monkeypatch):
    plain = client_of(store)
    key = store.key("job", "j1")
    job = {"id": "j1", "uuid": "h", "state": "queued"}
    store.write_job(job)
    assert plain.ttl(key) == -1  # kept, however long the queue
    store.write_job({**job, "state": "running"})
    assert plain.ttl(key) == -1
    for state in ("succeeded", "failed", "stopped"):
        store.write_job({**job, "state": state})
        assert 0 < plain.ttl(key) <= JobRetention().max_age_s
    store.write_job({**job, "state": "queued", "attempt": 2})  # sent again: kept again
    assert plain.ttl(key) == -1
    store.request_stop("j1")
    assert 0 < plain.ttl(store.key("stop", "j1")) <= JobRetention().max_age_s


def test_how_long_finished_jobs_are_kept_is_a_setting(store_url, tmp_path, monkeypatch):
    monkeypatch.setenv("PH_JOB_RECORDS_MAX_AGE_S", "60")
    made = open_store(store_url, tmp_path)
    try:
        made.write_job({"id": "j2", "uuid": "h", "state": "failed"})
        assert 0 < client_of(made).ttl(made.key("job", "j2")) <= 60
    finally:
        close_store(made)


def test_the_object_cache_keeps_under_its_limit_dropping_the_least_recently_used(
        store_url, workdir, monkeypatch):
    monkeypatch.setenv("PH_CACHE_MAX_BYTES", "2500")
    store = open_store(store_url, workdir / "cache")
    try:
        for i in range(4):
            store.objects.put(f"blob-{i}", bytes(1000))
        paths = [store.objects.cached(f"blob-{i}") for i in range(4)]
        for i, path in enumerate(paths):
            os.utime(path, (1000 + i, 1000 + i))  # blob-0 least recently used
        store.objects.cached("blob-0")  # used again: now the most recent
        store.objects.prune()
        assert [p.exists() for p in paths] == [True, False, False, True]
        assert store.objects.cached("blob-1").read_bytes() == bytes(1000)  # fetched again
    finally:
        close_store(store)


def test_a_damaged_cached_copy_of_weights_is_fetched_again(store):
    store.create("h", record("h"), weights(0.5))
    current = store.read("h")
    path = store.objects.cached(current["weights"])
    path.write_bytes(path.read_bytes()[:100])  # as a crash could leave it (not fsynced)
    assert torch.equal(store.read_weights("h", current)["fc.weight"], torch.full((2, 3), 0.5))


# --- writes sent twice, writers whose lock ran out, jobs no worker runs ----------------------

def test_a_weights_switch_sent_twice_by_a_client_retry_publishes_once(store):
    """redis-py sends a command again when a reply was lost: the second run of the switch
    must count as done, not refuse the write (and delete the weights it now names)."""
    store.create("h", record("h"), weights(0.5))
    real = store._switch

    def sent_twice(**kwargs):
        real(**kwargs)
        return real(**kwargs)

    store._switch = sent_twice
    new = store.write_weights("h", store.read("h"), weights(2.0), None)
    current = store.read("h")
    assert current["weights"] == new["weights"] and current["revision"] == 2
    assert torch.equal(store.read_weights("h", current)["fc.weight"], torch.full((2, 3), 2.0))


def test_an_examples_writer_whose_lock_ran_out_cannot_overwrite_a_newer_write(store):
    store.create("h", record("h"))
    log = store.examples("h")
    log.append([{"text": "one", "label": "a"}])
    stale = log._state()  # a writer read the log, then stalled past its lock
    log.append([{"text": "two", "label": "a"}])  # another server's acknowledged call
    summary, chunks, written = stale
    uploaded = log._put([{"id": 9, "text": "x", "label": "a"}])
    with pytest.raises(ConflictError, match="changed by another call"):
        log._switch(summary, chunks + [uploaded], written, [uploaded])
    assert [row["text"] for row in log.read()] == ["one", "two"]
    assert uploaded not in objects_of(store, "h")  # its upload was removed again


def test_a_lock_is_renewed_while_held_and_frees_itself_when_its_holder_dies(store, monkeypatch):
    from ph.stores import redis_store
    monkeypatch.setattr(redis_store, "LOCK_LEASE_S", 0.3)
    monkeypatch.setattr(redis_store, "LOCK_WAIT_S", 0.2)
    with store.lock("h"):
        time.sleep(1.0)  # past three leases: renewed meanwhile
        with pytest.raises(ConflictError, match="busy"):
            with store.lock("h"):
                pass
    client_of(store).set(store.key("lock", "h"), "a dead holder", px=300)
    monkeypatch.setattr(redis_store, "LOCK_WAIT_S", 2)
    with store.lock("h"):  # taken once the dead holder's lease ran out
        pass


def test_stopping_a_job_no_worker_took_stops_it_and_frees_the_head(registry):
    from ph.heads import jobs
    uid = registry.create_head("h", small_config())
    job = jobs.start_job(registry, uid)  # no worker reads the queue
    assert jobs.job_status(registry.store, job["job_id"])["state"] == "queued"
    assert jobs.stop_job(registry, job["job_id"])["state"] == "stopped"
    assert registry.delete_head(uid)  # the head is no longer held by the job
    from ph.adapters.job_runner import run_job  # a worker that gets the message late does not run it
    assert run_job(str(registry.store.root), job["job_id"], registry.store) == 1


def test_a_queued_job_a_worker_took_and_died_on_is_failed(registry, monkeypatch):
    from ph.heads import jobs
    uid = registry.create_head("h", small_config())
    job = jobs.start_job(registry, uid)
    assert registry.store.claim_job(job["job_id"], 1)  # taken, and never a heartbeat
    status = jobs.job_status(registry.store, job["job_id"])
    assert status["state"] == "failed" and "ended without finishing" in status["error"]
    assert registry.delete_head(uid)


def test_small_weights_load_from_redis_while_the_object_store_is_down(
        redis_server, s3_server, monkeypatch, workdir):
    """Weights up to INLINE_MAX_BYTES (an add-in's) are kept in Redis too: another machine
    loads them cold with no object-store round trip; replacing the head drops the copy."""
    for name, value in s3_server.env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("PH_WEIGHT_HISTORY", "1")  # an earlier revision's copy goes with it
    with TcpProxy(("127.0.0.1", s3_server.port)) as proxy:
        endpoint = f"http://127.0.0.1:{proxy.port}"
        url = distributed_url(redis_server.url, endpoint, TEST_BUCKET, "inline", "inline")
        a = HeadRegistry(workdir / "a", store=url)
        b = HeadRegistry(workdir / "b", store=url)  # nothing cached on this machine
        try:
            a.create_head("h", small_config(epochs=2))
            a.add_examples("h", {"x": ["one two", "two three"], "y": ["four five", "five six"]})
            a.train("h")
            a.train("h")  # the first revision's copy goes with its weights
            record = a.store.read("h")
            inline = a.store.redis.hkeys(a.store.key("inline", "h", record["inc"]))
            assert inline == [record["weights"].encode()]  # the old revision's copy is gone
            expected = a.predict("h", TEXTS)
            proxy.block()
            assert b.predict("h", TEXTS) == expected
            proxy.unblock()
            a.delete_head("h")
            assert not a.store.redis.exists(a.store.key("inline", "h", record["inc"]))
        finally:
            proxy.unblock()
            a.close()
            b.close()
