"""HeadCache: least recently used heads leave first, within a byte budget."""
from __future__ import annotations

from ph.heads.cache import HeadCache, LoadedHead


def head(uuid, nbytes=100, signature=(1,)):
    return LoadedHead(uuid, signature, 0, {}, engine=None, nbytes=nbytes)


def test_the_least_recently_used_head_leaves_when_over_budget():
    evicted = []
    cache = HeadCache(budget_bytes=250, on_evict=evicted.append)
    for uuid in ("a", "b"):
        cache.put(head(uuid))
    assert cache.get("a", (1,)) is not None  # a is now the most recent
    cache.put(head("c"))
    assert [h.uuid for h in evicted] == ["b"] and cache.uuids() == ["a", "c"]
    assert cache.stats() == {"heads_loaded": 2, "bytes_held": 200, "shared_bytes": 0,
                             "budget_bytes": 250, "hits": 1, "misses": 0, "evictions": 1}


def test_shared_parts_count_in_the_budget_and_leave_less_room_for_heads():
    shared = [0]
    cache = HeadCache(budget_bytes=250, shared_bytes=lambda: shared[0])
    for uuid in "ab":
        cache.put(head(uuid))
    shared[0] = 120  # an encoder and its embedding cache: 250 - 120 leaves room for one head
    cache.put(head("c"))
    assert cache.uuids() == ["c"] and cache.stats()["shared_bytes"] == 120


def test_a_changed_signature_is_a_miss():
    cache = HeadCache()
    cache.put(head("a", signature=(1,)))
    assert cache.get("a", (2,)) is None and cache.stats()["misses"] == 1


def test_replacing_and_dropping_give_each_old_head_back_once():
    evicted = []
    cache = HeadCache(on_evict=evicted.append)
    first, second = head("a"), head("a")
    cache.put(first)
    cache.put(second)
    cache.drop("a")
    cache.drop("a")
    assert evicted == [first, second] and cache.stats()["bytes_held"] == 0


def test_one_head_larger_than_the_budget_still_loads():
    cache = HeadCache(budget_bytes=10)
    cache.put(head("big", nbytes=100))
    assert cache.uuids() == ["big"]
