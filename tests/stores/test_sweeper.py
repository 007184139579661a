"""The distributed store's sweeper (ph.stores.sweeper): what ph says is deleted leaves the
bucket once the object store answers again, whatever state it was in at that moment;
objects nothing names are removed after their grace period; one pass at a time.

Each test ends with the bucket (under the test's prefix) holding exactly what Redis
names: `referenced_objects`."""
from __future__ import annotations

import logging
import threading

import pytest

from helpers.heads import small_config
from helpers.servers import TcpProxy
from helpers.stores import client_of, close_store, eventually, save_untrained_weights
from ph.errors import StoreUnavailableError
from ph.heads.service import HeadRegistry
from ph.stores.objects import _unavailable
from ph.stores.sweeper import AREAS, _scan_due, referenced_objects, sweep

EXAMPLES = [{"a": ["one", "two"], "b": ["three"]}, {"a": ["four"]}]  # two calls: two chunks


@pytest.fixture
def reachable(store_url, workdir):
    """A registry whose object store answers."""
    made = HeadRegistry(workdir / "a", store=store_url)
    yield made
    close_store(made.store)


@pytest.fixture
def s3_proxy(s3_server):
    with TcpProxy(("127.0.0.1", s3_server.port)) as proxy:
        yield proxy


@pytest.fixture
def cut_off(store_url, s3_server, s3_proxy, workdir):
    """A registry on the same store whose object store is reached through `s3_proxy`."""
    url = store_url.replace(f"endpoint={s3_server.endpoint}",
                            f"endpoint=http://127.0.0.1:{s3_proxy.port}")
    made = HeadRegistry(workdir / "b", store=url)
    yield made
    close_store(made.store)


def bucket(store) -> set[str]:
    """Every object under the store's prefix."""
    return {name for area in AREAS for name in store.objects.list(area)}


def queued(store) -> set[str]:
    return {field.decode() for field in client_of(store).hkeys(store.key("gc"))}


def make_head(registry, uid: str, weights) -> None:
    registry.create_head(uid, {**small_config(), "Inference": {"weights": str(weights)}})
    for examples in EXAMPLES:
        registry.add_examples(uid, examples)


def test_deletes_while_s3_is_away_answer_and_their_objects_go_once_it_is_back(
        reachable, cut_off, s3_proxy, workdir, caplog):
    weights = workdir / "w.pt"
    save_untrained_weights(weights, seed=1)
    for uid in ("gone", "again", "cleared", "kept"):
        make_head(reachable, uid, weights)
    store = reachable.store
    before, kept = bucket(store), reachable.list_examples("kept")
    assert len(before) == 4 * 3  # weights and two chunks each

    s3_proxy.block()
    with caplog.at_level(logging.WARNING, logger="ph.stores"):
        assert cut_off.delete_head("gone")
        assert cut_off.create_head("again", small_config(), replace=True) == "again"
        assert cut_off.delete_examples("cleared")["deleted"] == 4
        with pytest.raises(StoreUnavailableError, match="nothing was changed"):
            cut_off.delete_examples("kept", ids=[1])  # must read the chunks first
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "head 'gone' was deleted; its objects could not be removed now (the object store " \
           "is unreachable) and are queued for the sweeper, which removes them once the " \
           "object store answers" in warnings
    assert any(w.startswith("head 'again' was replaced;") for w in warnings)
    assert any(w.startswith("examples were deleted from head 'cleared';") for w in warnings)
    assert not any("nothing was changed" in w for w in warnings)
    assert len(queued(store)) == 5  # two incarnations, two chunks, one head's embedding packs

    s3_proxy.unblock()
    assert bucket(store) == before  # nothing could be removed meanwhile
    assert reachable.list_examples("kept") == kept  # the refused call changed nothing
    assert reachable.check_head("cleared")["examples"] == 0
    assert reachable.list_heads() == ["again", "cleared", "kept"]
    assert sweep(store) == {"ran": True, "pending_done": 5, "pending_left": 0,
                            "orphans_deleted": 0}
    named = referenced_objects(store)
    assert bucket(store) == named and queued(store) == set()
    assert not any(n.startswith(("heads/gone/", "heads/again/")) for n in named)
    assert sum(n.startswith("heads/kept/") for n in named) == 3
    assert [n for n in named if n.startswith("heads/cleared/")] == \
        [reachable.store.read("cleared")["weights"]]


def test_objects_let_go_of_while_a_removal_fails_are_removed_by_the_sweeper_thread(
        reachable, workdir, monkeypatch, caplog):
    """Superseded weights and the chunks a partial delete rewrote, the object store
    failing just when they are removed; `ph serve` and `ph worker` run the thread."""
    monkeypatch.setenv("PH_WEIGHT_HISTORY", "1")  # superseded weights go at once
    first, second = workdir / "1.pt", workdir / "2.pt"
    save_untrained_weights(first, seed=1)
    save_untrained_weights(second, seed=2)
    make_head(reachable, "h", first)
    store = reachable.store
    old_weights = store.read("h")["weights"]

    def refused(names):
        raise _unavailable("the object store is away (test)", "the object store is unreachable")

    with monkeypatch.context() as patch, caplog.at_level(logging.WARNING, logger="ph.stores"):
        patch.setattr(store.objects, "delete", refused)
        assert reachable.load_weights("h", str(second))["revision"] == 2
        assert reachable.delete_examples("h", ids=[1])["deleted"] == 1
    assert any(r.getMessage().startswith("head 'h' has new weights; the old weights could not "
                                         "be removed now") for r in caplog.records)
    assert len(queued(store)) == 4 and old_weights in queued(store)  # and the embedding packs
    assert old_weights in bucket(store)

    monkeypatch.setenv("PH_SWEEP_INTERVAL_S", "1")
    store.start_sweeper()  # the first pass at once
    eventually(lambda: queued(store) == set(), timeout=10)
    assert bucket(store) == referenced_objects(store)
    assert len(bucket(store)) == 2 and old_weights not in bucket(store)  # weights, one chunk
    sweeper = store._sweeper
    close_store(store)
    assert not sweeper._thread.is_alive()  # close() stops it


def test_an_object_nothing_names_is_removed_after_its_grace_period(reachable, workdir,
                                                                   monkeypatch):
    weights = workdir / "w.pt"
    save_untrained_weights(weights, seed=1)
    make_head(reachable, "h", weights)
    store = reachable.store
    orphans = {"heads/h/crashed/weights-1-x.pt", "code/0123abcd.py", "data/4567ef.jsonl",
               "heads/h/crashed/embeddings/abababababababababababab/y.emb"}
    for name in orphans:  # as an upload whose Redis write never came leaves it
        store.objects.put(name, b"x")
    store.save_embedding_pack("h", "ab" * 12, b"pack")  # a live head's: named by listing
    live_pack, = (n for n in bucket(store) if "/embeddings/" in n and "/crashed/" not in n)

    monkeypatch.setenv("PH_ORPHAN_GRACE_S", "3600")
    assert sweep(store)["orphans_deleted"] == 0  # too young
    assert orphans <= bucket(store)
    assert not _scan_due(store, 3600)  # once per grace period, across processes

    monkeypatch.setenv("PH_ORPHAN_GRACE_S", "0")
    real = store.objects.modified
    monkeypatch.setattr(store.objects, "modified",  # written again since it was listed
                        lambda name: 2e9 if name == "code/0123abcd.py" else real(name))
    assert sweep(store)["orphans_deleted"] == 3
    assert bucket(store) - referenced_objects(store) == {"code/0123abcd.py", live_pack}
    monkeypatch.setattr(store.objects, "modified", real)
    assert sweep(store)["orphans_deleted"] == 1
    assert bucket(store) - {live_pack} == referenced_objects(store) and len(bucket(store)) == 4


def test_one_sweep_runs_at_a_time(reachable, monkeypatch):
    from ph.stores import sweeper
    store = reachable.store
    inside, release, results = threading.Event(), threading.Event(), []
    real = sweeper._remove_pending

    def slow(store):
        inside.set()
        release.wait(10)
        return real(store)

    monkeypatch.setattr(sweeper, "_remove_pending", slow)
    first = threading.Thread(target=lambda: results.append(sweep(store)))
    first.start()
    try:
        assert inside.wait(10)
        assert sweep(store)["ran"] is False  # another process's pass holds the lease
    finally:
        release.set()
        first.join(10)
    assert results[0]["ran"] is True
    assert sweep(store)["ran"] is True  # the lease was given back
