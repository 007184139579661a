"""Cold start: N untrained children of one shared head.

Creates one parent (the default head config) and N children with
`create_head(uuid, parent=...)`, then answers every child through `predict_many` in
batches. Reports the create rate, the memory each child costs (RSS and Python heap
growth) against one loaded head's, that every child resolves to the parent's loaded
head and bank slot and is answered in one stacked pass per batch with the parent's
answer, and a child's predict latency next to the parent's.
"""
from __future__ import annotations

import contextlib
import ctypes
import gc
import tempfile
import time
import tracemalloc
from pathlib import Path

import torch

from common import emit, latency_ms, parser, rss_bytes, setup

TEXTS = ["I want to order a pizza", "will it rain in Lima tomorrow", "play some jazz",
         "wake me up at 6"]


def run(n: int, batch: int, device: torch.device, repeat: int) -> dict:
    from ph.heads.service import HeadRegistry
    registry = HeadRegistry(Path(tempfile.mkdtemp()) / "heads")
    config = {"Inference": {"device": str(device), "postprocess": {"args": {"return_scores": True}}}}
    registry.create_head("shared", config)
    parent = registry.loaded("shared")
    expected = registry.predict("shared", TEXTS)
    bank = parent.extra["bank"]

    # one loaded head's memory, for comparison: ten more ordinary heads
    before = rss_bytes()
    for i in range(10):
        registry.create_head(f"solo{i}", config)
        registry.predict(f"solo{i}", TEXTS[0])
    rss_per_head = (rss_bytes() - before) // 10
    slots_before = sum(c.used for c in bank.chunks)
    plain = max(20, min(200, n))
    plain_s = _create_plain(registry, config, plain, "before")

    registry.predict_many([("shared", TEXTS[i % 4]) for i in range(batch)])  # warm the pass
    rss_start = live_rss()
    start = time.perf_counter()
    kids = [registry.create_head(f"user{i:05d}", parent="shared") for i in range(n)]
    create_s = time.perf_counter() - start
    rss_created = live_rss()
    plain_s += _create_plain(registry, config, plain, "after")
    plain_per_s = 2 * plain / plain_s

    passes: list[int] = []
    forward = bank.forward
    bank.forward = lambda slots, inputs: passes.append(len(slots)) or forward(slots, inputs)
    start = time.perf_counter()
    max_diff, same_class = 0.0, True
    for lo in range(0, n, batch):
        chunk = kids[lo:lo + batch]
        answers = registry.predict_many([(uid, TEXTS[i % 4]) for i, uid in enumerate(chunk, lo)])
        for i, answer in enumerate(answers, lo):
            want = expected[i % 4]
            same_class &= answer["prediction"] == want["prediction"]
            max_diff = max(max_diff, max(abs(a - b) for a, b in zip(answer["scores"], want["scores"])))
    first_pass_s = time.perf_counter() - start
    bank.forward = forward
    rss_end = live_rss()
    heap = python_heap_per_child(registry, min(n, 1000))
    start = time.perf_counter()
    for lo in range(0, n, batch):
        registry.predict_many([(uid, TEXTS[0]) for uid in kids[lo:lo + batch]])
    warm_pass_s = time.perf_counter() - start

    shared = all(registry.loaded(uid) is parent for uid in kids[:: max(1, n // 500)])
    child_times, parent_times = _times([lambda: registry.predict(kids[-1], TEXTS[0]),
                                        lambda: registry.predict("shared", TEXTS[0])], repeat)
    record_bytes = registry.store.record_path(kids[0]).stat().st_size
    slot_bytes = parent.nbytes
    per_child = (rss_end - rss_start) / n
    return {
        "children": n, "batch": batch,
        "create": {"seconds": round(create_s, 2), "per_s": round(n / create_s, 1),
                   "ordinary_heads_per_s": round(plain_per_s, 1),
                   "record_bytes_on_disk": record_bytes},
        "memory": {"loaded_head_bank_bytes": slot_bytes, "rss_per_loaded_head": rss_per_head,
                   "rss_growth_create_per_child": round((rss_created - rss_start) / n, 1),
                   "rss_growth_per_child": round(per_child, 1),
                   "python_heap_kept_per_child": heap,
                   "child_vs_loaded_head": round(per_child / slot_bytes, 6),
                   "follow_map_entries": len(registry._follows)},
        "sharing": {"children_resolve_to_parents_head": shared,
                    "bank_slots_before": slots_before,
                    "bank_slots_after": sum(c.used for c in bank.chunks),
                    "heads_loaded": registry.stats()["heads_loaded"],
                    "stacked_passes": len(passes), "batches": -(-n // batch),
                    "max_requests_per_pass": max(passes) if passes else 0},
        "answers": {"same_class_as_parent": same_class, "max_abs_diff_scores": max_diff},
        "predict_many": {"first_pass_req_per_s": round(n / first_pass_s, 1),
                         "warm_pass_req_per_s": round(n / warm_pass_s, 1)},
        "predict_one": {"child": latency_ms(child_times), "parent": latency_ms(parent_times)},
    }


def _create_plain(registry, config: dict, n: int, tag: str) -> float:
    """Seconds to create n ordinary heads (not loaded): the create rate to compare with,
    taken before and after the children so a change in the machine's load hits both."""
    start = time.perf_counter()
    for i in range(n):
        registry.create_head(f"plain-{tag}{i}", config)
    return time.perf_counter() - start


def live_rss() -> int:
    """RSS after a garbage collection and giving freed heap back to the system (glibc), so
    before/after differences measure memory still in use, not allocator slack."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    return rss_bytes()


def python_heap_per_child(registry, m: int) -> float:
    """Python heap kept per child (tracemalloc), over m more children created and answered
    once (separately from the RSS figures: tracing inflates RSS)."""
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    kids = [registry.create_head(f"traced{i:05d}", parent="shared") for i in range(m)]
    registry.predict_many([(uid, TEXTS[0]) for uid in kids])
    del kids
    gc.collect()
    kept = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    return round(kept / m, 1)


def _times(fns: list, repeat: int) -> list[list[float]]:
    """Seconds per call of each function, calls interleaved so load changes hit all alike."""
    for _ in range(20):
        for fn in fns:
            fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeat):
        for fn, out in zip(fns, times):
            start = time.perf_counter()
            fn()
            out.append(time.perf_counter() - start)
    return times


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--children", type=int, default=10_000)
    p.add_argument("--batch", type=int, default=256, help="requests per predict_many call")
    p.add_argument("--repeat", type=int, default=2000, help="calls timed for the one-predict latency")
    args = p.parse_args()
    device = setup(args)
    emit("children", args, device, run(args.children, args.batch, device, args.repeat))


if __name__ == "__main__":
    main()
