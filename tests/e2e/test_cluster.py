"""The distributed store end to end: a cluster of two `ph serve` processes with separate,
unshared local folders and one `ph worker`, sharing only Redis and S3 (moto, reached
through a TcpProxy so it can be cut off), plus the Jaseci module in a third process.

The cluster is started once for the module; the tests that kill, restart or cut off a
piece leave it whole again when they end (a new worker, Redis back with its data, the
proxies passing). Each test reads the state it starts from (revisions, example counts).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid as uuidlib
from contextlib import ExitStack
from pathlib import Path

import pytest
import redis

from helpers.heads import small_config
from helpers.http import call, post
from helpers.intent_data import as_label_lists
from helpers.paths import ROOT, TESTS
from helpers.servers import RedisServer, TcpProxy, distributed_url, ph_server, ph_worker
from helpers.stores import TEST_BUCKET, eventually, save_untrained_weights
from ph.stores import open_store
from ph.stores.sweeper import AREAS, referenced_objects, sweep

pytestmark = [pytest.mark.cluster, pytest.mark.slow]  # two ph serve, a ph worker, Redis, S3

LEASE_S = 5  # PH_TRAIN_LEASE_S of every process: a dead worker's job fails after this


class Cluster:
    """Two servers (`a`, `b`: URLs), one worker (`worker`: its Popen), and the pieces they
    share: `redis` (a RedisServer of this module's own) and S3 behind `s3_proxy`. Server b
    reaches Redis through `b_redis_proxy` (the others directly). Jobs accepted by a are
    sent again once if their worker dies (PH_JOB_RETRIES=1), b's are not."""

    def __init__(self, root: Path, redis_server: RedisServer, s3_server, stack: ExitStack):
        self.root, self.redis, self.s3 = root, redis_server, s3_server
        self.s3_proxy = stack.enter_context(TcpProxy(("127.0.0.1", s3_server.port)))
        self.b_redis_proxy = stack.enter_context(TcpProxy(("127.0.0.1", redis_server.port)))
        self.ns = self.prefix = f"cluster{uuidlib.uuid4().hex[:8]}"
        s3_endpoint = f"http://127.0.0.1:{self.s3_proxy.port}"
        self.url = distributed_url(redis_server.url, s3_endpoint, TEST_BUCKET, self.prefix,
                                   self.ns)
        b_url = distributed_url(f"redis://127.0.0.1:{self.b_redis_proxy.port}/0", s3_endpoint,
                                TEST_BUCKET, self.prefix, self.ns)
        self.env = {**s3_server.env, "PH_TRAIN_LEASE_S": str(LEASE_S)}
        self._worker_stack = stack.enter_context(ExitStack())
        # Servers of one cluster share the operator's policy: here, each its own folder
        # plus one folder for checkpoints (the workers'), named in the head list.
        scratch = str(self.folder("checkpoints"))
        servers = [ph_server(self.folder(name), "--store", url, "--heads-dir", "cache",
                             "--allow-path", str(self.folder(name)), "--allow-path", scratch,
                             env={**self.env, **env})
                   for name, url, env in (("a", self.url, {"PH_JOB_RETRIES": "1"}),
                                          ("b", b_url, {}))]
        worker = ph_worker(self.url, self.folder("worker") / "cache", env=self.env)
        (self.a, self.b), (self.worker,) = _enter_together(stack, *servers), \
            _enter_together(self._worker_stack, worker)
        call(self.a, "create_head_list",
             config={"Trainer": {"trainer": {"save_dir": f"{scratch}/saved"}}})

    def folder(self, name: str) -> Path:
        path = self.root / name
        path.mkdir(exist_ok=True)
        return path

    def new_worker(self) -> None:
        """Replace the worker (after it was killed) with a new one on a fresh folder."""
        self._worker_stack.close()
        folder = self.folder(f"worker-{uuidlib.uuid4().hex[:6]}") / "cache"
        self.worker, = _enter_together(self._worker_stack,
                                       ph_worker(self.url, folder, env=self.env))

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.redis.port, socket_timeout=5)

    def job_record(self, job_id: str) -> dict:
        """The job as the store holds it (with the pid of the process that runs it)."""
        return json.loads(self.client().get(f"{self.ns}:job:{job_id}"))

    def objects(self, under: str) -> list[str]:
        listed = self.s3.client().list_objects_v2(Bucket=TEST_BUCKET,
                                                  Prefix=f"{self.prefix}/{under}")
        return [item["Key"] for item in listed.get("Contents", [])]


def _enter_together(stack: ExitStack, *managers) -> list:
    """Enter the context managers in parallel (each start is mostly imports), registering
    each one entered on `stack`, so a failed start still stops the others."""
    results: list = [None] * len(managers)
    errors: list = []

    def enter(i: int) -> None:
        try:
            results[i] = managers[i].__enter__()
        except BaseException as exc:  # noqa: BLE001  (re-raised below)
            errors.append(exc)
            managers[i] = None

    managers = list(managers)
    threads = [threading.Thread(target=enter, args=(i,)) for i in range(len(managers))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for manager in managers:
        if manager is not None:
            stack.push(manager.__exit__)
    if errors:
        raise errors[0]
    return results


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, s3_server):
    root = tmp_path_factory.mktemp("cluster")
    with ExitStack() as stack:
        redis_server = stack.enter_context(RedisServer(root / "redis"))
        yield Cluster(root, redis_server, s3_server, stack)


@pytest.fixture(scope="module")
def trained(cluster, intents):
    """A head 'shared' created on server a with the training examples and trained by the
    worker (some tests train it further or add examples: read its state first)."""
    call(cluster.a, "create_head", uuid="shared", config=small_config(epochs=3))
    assert call(cluster.a, "add_examples", uuid="shared",
                examples=as_label_lists(intents[0])) == len(intents[0])
    job = call(cluster.a, "train_head", uuid="shared", background=True)
    status = wait_job(cluster.b, job["job_id"])
    assert status["state"] == "succeeded", status
    return "shared"


def wait_job(url: str, job_id: str, until=lambda s: s["state"] not in ("queued", "running"),
             timeout: float = 60) -> dict:
    """Poll train_status on `url` until `until(status)`; returns that status."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        status = call(url, "train_status", job_id=job_id)
        if until(status):
            return status
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} still {status} after {timeout}s")


def held_out_texts(intents) -> tuple[list[str], list[str]]:
    return [r["text"] for r in intents[1]], [r["label"] for r in intents[1]]


def accuracy(predictions: list[int], labels_of_head: list[str], truth: list[str]) -> float:
    """The share of right answers (an untrained head may answer a class with no label)."""
    named = dict(enumerate(labels_of_head))
    return sum(named.get(p) == t for p, t in zip(predictions, truth)) / len(truth)


# --- create, train, predict, delete across the cluster --------------------------------------

def test_create_on_one_server_train_through_the_worker_predict_on_the_other_delete_everywhere(
        cluster, intents):
    a, b = cluster.a, cluster.b
    texts, truth = held_out_texts(intents)
    assert call(a, "create_head", uuid="life", config=small_config(epochs=8)) == "life"
    assert call(a, "add_examples", uuid="life", examples=as_label_lists(intents[0])) == \
        len(intents[0])
    untrained = call(b, "predict", uuid="life", data=texts)  # b loads it (and caches it)
    assert call(a, "predict", uuid="life", data=texts) == untrained  # same untrained head
    seen_by_b = call(b, "check_head", uuid="life")
    assert (seen_by_b["revision"], seen_by_b["trained"], seen_by_b["examples"]) == \
        (0, False, len(intents[0]))

    job = call(a, "train_head", uuid="life", background=True)
    assert job["state"] == "queued"
    running = wait_job(b, job["job_id"], until=lambda s: s["state"] != "queued")
    assert running["state"] in ("running", "succeeded")
    assert cluster.job_record(job["job_id"])["pid"] == cluster.worker.pid  # not a server
    done = wait_job(b, job["job_id"])
    assert done["state"] == "succeeded" and done["epoch"] == 8, done["error"]
    assert done["summary"]["revision"] == 1 and done["summary"]["updated"]

    # b had the untrained head cached: predict first (check_head would re-read the record)
    on_b = call(b, "predict", uuid="life", data=texts)
    assert on_b == call(a, "predict", uuid="life", data=texts)
    assert on_b != untrained
    for url in (a, b):
        check = call(url, "check_head", uuid="life")
        assert (check["revision"], check["trained"], check["training"]) == (1, True, False)
        assert check["examples_seen"] == len(intents[0])
        assert check["loaded"]  # each answers from revision 1
    labels = done["summary"]["labels"]
    assert accuracy(on_b, labels, truth) >= 0.6 > accuracy(untrained, labels, truth)
    assert cluster.objects("heads/life/")  # its weights and examples are in S3

    assert call(b, "delete_head", uuid="life") is True
    for url in (a, b):  # a had it loaded too
        assert call(url, "predict", uuid="life", data=texts, expect=404)["error"] == "not_found"
        assert call(url, "check_head", uuid="life") == {"uuid": "life", "exists": False}
        assert "life" not in call(url, "list_heads")
    assert cluster.objects("heads/life/") == []
    left = {k.decode() for k in cluster.client().scan_iter(match=f"{cluster.ns}:*life*")}
    assert left == set()  # record, listing, examples, pointer to its last job: all gone
    assert call(b, "create_head", uuid="life", config=small_config()) == "life"  # a new one
    check = call(a, "check_head", uuid="life")
    assert (check["revision"], check["examples"], check["runs"]) == (0, 0, 0)
    fresh = call(a, "predict", uuid="life", data=texts)
    assert call(b, "predict", uuid="life", data=texts) == fresh
    call(a, "delete_head", uuid="life")
    assert_bucket_holds_exactly_what_redis_names(cluster)


def test_an_addin_trained_by_the_worker_is_served_by_the_other_server_in_one_pass(
        cluster, trained, intents):
    """A lora add-in on 'shared': created on a, trained by `ph worker`, answered by b from
    its pinned parent revision (stacked with another user), exported, and deleted."""
    a, b = cluster.a, cluster.b
    texts, _ = held_out_texts(intents)
    parent = call(a, "predict", uuid=trained, data=texts)
    for user in ("ann", "ben"):
        assert call(a, "create_head", uuid=user, parent=trained, addin="lora",
                    config={"Trainer": {"trainer": {"epochs": 30}}}) == user
    assert call(b, "predict", uuid="ann", data=texts) == parent  # untrained: the parent
    mine = {"ann": {"greet": ["hello there", "hi friend", "good morning to you"]},
            "ben": {"bye": ["see you later", "goodbye now", "bye for now"]}}
    for user, examples in mine.items():
        call(a, "add_examples", uuid=user, examples=examples)
        job = call(a, "train_head", uuid=user, background=True, incremental=True)
        done = wait_job(b, job["job_id"])
        assert done["state"] == "succeeded", done["error"]
        assert cluster.job_record(job["job_id"])["pid"] == cluster.worker.pid
    check = call(b, "check_head", uuid="ann")
    revision = call(b, "check_head", uuid=trained)["revision"]
    assert check["addin"]["type"] == "lora" and check["addin"]["parent_revision"] == revision
    assert 0 < check["addin"]["bytes"] < 100_000
    requests = [["ann", "hello there"], ["ben", "see you later"], [trained, texts[0]]]
    together = call(b, "predict_many", requests=requests)
    assert together == [call(a, "predict", uuid=u, data=d) for u, d in requests]
    labels = call(b, "check_head", uuid="ann")["labels"]
    assert labels[together[0]] == "greet"
    assert cluster.objects("bases/")  # the pinned parent revision, stored once
    for user in ("ann", "ben"):
        assert call(b, "delete_head", uuid=user) is True
    assert call(a, "predict", uuid="ann", data=texts[0], expect=404)["error"] == "not_found"


def assert_bucket_holds_exactly_what_redis_names(cluster: Cluster) -> None:
    """After a sweep (waiting out one a server or the worker may be running), the bucket
    holds exactly the objects the records name: nothing ph deleted is left behind."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in cluster.s3.env.items():
            patch.setenv(name, value)
        store = open_store(cluster.url, cluster.folder("sweep") / "cache")
        try:
            assert sweep(store, wait_s=30)["ran"]
            assert {n for area in AREAS for n in store.objects.list(area)} == \
                referenced_objects(store)
        finally:
            store.close()


# --- the Jaseci module in a third process ---------------------------------------------------

JASECI_SCRIPT = """
import json, sys
from helpers.jaseci_harness import JacCase  # CoreTest with `actions load module ph`
uuid, texts, config = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
case = JacCase()
case.setUp()
out = {"predict": case.ok("predict", uuid=uuid, data=texts)[0],
       "create": case.ok("create", uuid="from-jaseci", config=config)[0],
       "mine": case.ok("predict", uuid="from-jaseci", data=texts)[0]}
out["heads"], out["check"], _ = case.ok("inspect", uuid=uuid)
print("RESULT " + json.dumps(out))
"""


def test_the_jaseci_module_in_a_third_process_shares_the_cluster(cluster, trained, intents):
    texts, _ = held_out_texts(intents)
    folder = cluster.folder("jaseci")
    config = small_config()
    config["Model"]["args"]["n_classes"] = 6
    out = subprocess.run([sys.executable, "-c", JASECI_SCRIPT, trained, json.dumps(texts),
                          json.dumps(config)], cwd=folder, capture_output=True, text=True,
                         timeout=300,
                         env={**os.environ, **cluster.env, "PH_STORE": cluster.url,
                              "PH_HEADS_DIR": str(folder / "cache"),
                              "PYTHONPATH": os.pathsep.join([str(TESTS), str(ROOT)])})
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.split("RESULT ", 1)[1])
    assert result["predict"] == call(cluster.b, "predict", uuid=trained, data=texts)
    assert result["check"]["revision"] == call(cluster.a, "check_head", uuid=trained)["revision"]
    assert result["check"]["trained"] and trained in result["heads"]
    assert result["create"] == "from-jaseci"
    for url in (cluster.a, cluster.b):  # the servers see the head the module created
        assert call(url, "get_config", uuid="from-jaseci")["Model"]["args"]["n_classes"] == 6
        assert call(url, "predict", uuid="from-jaseci", data=texts) == result["mine"]
    assert not (folder / "cache" / "from-jaseci").exists()  # in the store, not a heads folder
    call(cluster.a, "delete_head", uuid="from-jaseci")


# --- kill -9 of the worker mid-training ------------------------------------------------------

def test_a_worker_killed_mid_training_fails_its_job_within_the_lease_and_leaves_the_head(
        cluster, trained, intents):
    a, b = cluster.a, cluster.b
    texts, _ = held_out_texts(intents)
    before = call(b, "check_head", uuid=trained)
    answers = call(b, "predict", uuid=trained, data=texts)
    assert call(a, "predict", uuid=trained, data=texts) == answers
    job = call(b, "train_head", uuid=trained, background=True,  # b: no retries
               config={"Trainer": {"trainer": {"epochs": 500}}})
    kill_worker_mid_training(cluster, job["job_id"])
    killed = time.time()
    failed = wait_job(b, job["job_id"], timeout=LEASE_S * 5)
    assert failed["state"] == "failed" and "killed or crashed" in failed["error"], failed
    assert time.time() - killed <= LEASE_S + 2
    assert call(a, "train_status", job_id=job["job_id"])["state"] == "failed"  # everywhere
    for url in (a, b):
        check = call(url, "check_head", uuid=trained)
        assert (check["revision"], check["runs"], check["training"]) == \
            (before["revision"], before["runs"], False)
        assert call(url, "predict", uuid=trained, data=texts) == answers

    cluster.new_worker()
    again = call(b, "train_head", uuid=trained, background=True)
    done = wait_job(a, again["job_id"])
    assert done["state"] == "succeeded", (done["error"], done)
    assert cluster.job_record(again["job_id"])["pid"] == cluster.worker.pid
    assert call(a, "predict", uuid=trained, data=texts) == \
        call(b, "predict", uuid=trained, data=texts)
    for url in (a, b):  # each answered from the new revision (loaded: the one it answers with)
        check = call(url, "check_head", uuid=trained)
        assert (check["revision"], check["loaded"]) == (before["revision"] + 1, True)


def test_with_retries_the_job_of_a_killed_worker_is_sent_again_and_a_new_worker_runs_it(
        cluster, trained):
    a, b = cluster.a, cluster.b
    before = call(a, "check_head", uuid=trained)
    job = call(a, "train_head", uuid=trained, background=True,  # a: PH_JOB_RETRIES=1
               config={"Trainer": {"trainer": {"epochs": 120}}})
    kill_worker_mid_training(cluster, job["job_id"])
    resent = wait_job(b, job["job_id"], until=lambda s: s["state"] != "running",
                      timeout=LEASE_S * 5)
    assert resent["state"] == "queued" and "sent again" in resent["error"], resent
    check = call(b, "check_head", uuid=trained)  # the job still owns the head
    assert (check["revision"], check["training"], check["training_job"]) == \
        (before["revision"], True, job["job_id"])
    assert call(b, "delete_head", uuid=trained, expect=409)["error"] == "conflict"

    cluster.new_worker()
    done = wait_job(b, job["job_id"])
    assert done["state"] == "succeeded" and done["epoch"] == 120, done
    record = cluster.job_record(job["job_id"])
    assert (record["attempt"], record["pid"]) == (2, cluster.worker.pid)
    for url in (a, b):
        assert call(url, "check_head", uuid=trained)["revision"] == before["revision"] + 1


def kill_worker_mid_training(cluster: Cluster, job_id: str) -> None:
    """kill -9 the worker (its whole process group) once the job has run an epoch."""
    status = wait_job(cluster.b, job_id, until=lambda s: s["epoch"] >= 1 or s["state"] not in
                      ("queued", "running"))
    assert status["state"] == "running", status
    assert cluster.job_record(job_id)["pid"] == cluster.worker.pid  # the worker runs it
    assert call(cluster.a, "check_head", uuid=status["uuid"])["training"]
    os.killpg(cluster.worker.pid, signal.SIGKILL)


# --- Redis restarts --------------------------------------------------------------------------

def test_a_redis_restart_gives_clear_503s_meanwhile_then_everything_is_back(
        cluster, trained, intents):
    a, b = cluster.a, cluster.b
    texts, _ = held_out_texts(intents)
    call(a, "create_head", uuid="durable", config=small_config(epochs=2))
    few = {"order_food": [r["text"] for r in intents[0] if r["label"] == "order_food"][:5],
           "play_music": [r["text"] for r in intents[0] if r["label"] == "play_music"][:5]}
    assert call(a, "add_examples", uuid="durable", examples=few) == 10
    untrained = call(b, "predict", uuid="durable", data=texts)  # b has it loaded
    shared = call(b, "check_head", uuid=trained)
    shared_answers = call(a, "predict", uuid=trained, data=texts)
    examples = call(b, "list_examples", uuid="durable", limit=100)

    cluster.redis.stop()
    try:
        for url, action, args in [
                (a, "list_heads", {}), (b, "check_head", {"uuid": trained}),
                (a, "create_head", {"uuid": "ghost", "config": small_config()}),
                (b, "add_examples", {"uuid": "durable", "examples": {"greet": ["hi"]}}),
                (a, "train_head", {"uuid": "durable", "background": True}),
                (b, "delete_head", {"uuid": "durable"})]:
            started = time.time()
            error = call(url, action, expect=503, **args)
            assert error["error"] == "unavailable", (action, error)
            assert "Redis" in error["message"] and "cannot be reached" in error["message"]
            assert time.time() - started < 10, action  # promptly, not after minutes
        for uuid, answers in (("durable", untrained), (trained, shared_answers)):
            response = post(b, "predict", uuid=uuid, data=texts)  # loaded heads
            assert response.status_code in (200, 503), response.text
            if response.status_code == 200:
                assert response.json() == answers
            else:
                assert "Redis" in response.json()["message"]
    finally:
        cluster.redis.start()

    eventually(lambda: post(a, "list_heads").status_code == 200
               and post(b, "list_heads").status_code == 200)
    for url in (a, b):
        assert {"durable", trained} <= set(call(url, "list_heads"))
        assert "ghost" not in call(url, "list_heads")
        check = call(url, "check_head", uuid=trained)
        assert (check["revision"], check["examples"]) == (shared["revision"], shared["examples"])
        assert call(url, "check_head", uuid="durable")["examples"] == 10  # not 11: refused
        assert call(url, "list_examples", uuid="durable", limit=100) == examples
        assert call(url, "predict", uuid=trained, data=texts) == shared_answers
        assert call(url, "predict", uuid="durable", data=texts) == untrained
    assert call(b, "add_examples", uuid="durable", examples={"play_music": ["play Nirvana"]}) == 11

    # the worker is back on its queue and b hears of changes again (it has 'durable' cached)
    job = call(a, "train_head", uuid="durable", background=True)
    done = wait_job(b, job["job_id"], timeout=90)
    assert done["state"] == "succeeded", (done["error"], done)
    trained_answers = call(b, "predict", uuid="durable", data=texts)  # before any check_head
    assert trained_answers != untrained
    assert trained_answers == call(a, "predict", uuid="durable", data=texts)
    check = call(b, "check_head", uuid="durable")
    assert (check["revision"], check["loaded"]) == (1, True)
    call(a, "delete_head", uuid="durable")


def test_a_server_whose_redis_connection_died_unnoticed_misses_no_change(cluster, intents):
    """A partition between server b and Redis that neither notices: a change published
    meanwhile never reaches b. When its connections die and it reconnects (redis-py does
    that by itself), b must not go on answering from what it remembered."""
    a, b = cluster.a, cluster.b
    texts, _ = held_out_texts(intents)
    first, second = cluster.folder("a") / "blip-1.pt", cluster.folder("a") / "blip-2.pt"
    save_untrained_weights(first, seed=1)
    save_untrained_weights(second, seed=2)
    call(a, "create_head", uuid="blip", config={**small_config(),
                                                 "Inference": {"weights": str(first)}})
    before = call(b, "predict", uuid="blip", data=texts)  # b loads it and remembers it
    cluster.b_redis_proxy.freeze()
    try:
        assert call(a, "load_weights", uuid="blip", weights_file=str(second))["revision"] == 2
    finally:
        cluster.b_redis_proxy.thaw(cut=True)  # the notification to b is lost with them
    after = call(a, "predict", uuid="blip", data=texts)
    assert after != before
    eventually(lambda: call(b, "predict", uuid="blip", data=texts) == after, timeout=10)
    check = call(b, "check_head", uuid="blip")
    assert (check["revision"], check["loaded"]) == (2, True)
    call(b, "delete_head", uuid="blip")


# --- the object store away --------------------------------------------------------------------

def test_while_s3_is_unreachable_cached_heads_answer_and_s3_calls_fail_clearly(
        cluster, trained, intents):
    a, b = cluster.a, cluster.b
    texts, _ = held_out_texts(intents)
    weights = cluster.folder("a") / "cold.pt"
    save_untrained_weights(weights, seed=7)
    config = {**small_config(), "Inference": {"weights": str(weights)}}
    assert call(a, "create_head", uuid="cold", config=config) == "cold"
    cold = call(a, "predict", uuid="cold", data=texts)  # a loads it; b never does before
    shared = call(b, "predict", uuid=trained, data=texts)  # b has 'shared' loaded
    shared_check = call(b, "check_head", uuid=trained)
    examples = call(a, "list_examples", uuid=trained, offset=0, limit=5)

    cluster.s3_proxy.block()
    try:
        assert call(b, "predict", uuid=trained, data=texts) == shared  # from memory
        assert call(a, "predict", uuid="cold", data=texts) == cold
        # not cached on b, but small weights (up to INLINE_MAX_BYTES) are in Redis too
        assert call(b, "predict", uuid="cold", data=texts) == cold
        warm = {**small_config(), "Inference": {"weights": str(weights)}}
        for url, action, args in [
                (a, "create_head", {"uuid": "warm", "config": warm}),
                (b, "add_examples", {"uuid": trained, "examples": {"greet": ["hi there"]}}),
                (a, "list_examples", {"uuid": trained})]:
            started = time.time()
            error = call(url, action, expect=503, **args)
            assert error["error"] == "unavailable", (action, error)
            assert "object store" in error["message"] and "cannot be reached" in error["message"]
            assert time.time() - started < 15, action
        assert call(b, "check_head", uuid=trained)["examples"] == shared_check["examples"]
        assert call(a, "check_head", uuid="warm") == {"uuid": "warm", "exists": False}
    finally:
        cluster.s3_proxy.unblock()

    assert call(b, "predict", uuid="cold", data=texts) == cold
    assert call(a, "create_head", uuid="warm", config=warm) == "warm"
    assert call(b, "predict", uuid="warm", data=texts) == cold  # same weights
    assert call(b, "check_head", uuid="warm")["revision"] == 1
    check = call(a, "check_head", uuid=trained)
    assert (check["revision"], check["examples"]) == (shared_check["revision"],
                                                       shared_check["examples"])
    assert call(b, "list_examples", uuid=trained, offset=0, limit=5) == examples
    assert call(b, "add_examples", uuid=trained, examples={"order_food": ["a pizza now"]}) == \
        shared_check["examples"] + 1
    for uuid in ("cold", "warm"):
        call(b, "delete_head", uuid=uuid)
