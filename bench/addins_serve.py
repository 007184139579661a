"""Add-in users (LoRA on one shared head) at scale, beside full heads, in one run.

Setup: one shared head (the default PersonalizedHead config, hashing text encoder),
trained on the offline intent set; one add-in user `u0` (create_head(parent='shared',
addin='lora')) trained normally on its own examples (incremental); then N add-in users
cloned from u0 through the store API (its record with `addin`, `base`,
`parent_revision` and `parent` kept, its add-in tensors perturbed per user, the user
recorded as a follower of the parent), and M plain full heads of the same architecture
(untrained, as serve_load.py and many_heads.py make them). A benchmark shortcut: training
10,000 users one by one would take the run's whole budget.

Parts (each in-process part in a process of its own, so memory figures are its alone):
1. inprocess: N distinct users, one request each (a text), in one `predict_many` call,
   after warm-up, median of several repetitions: add-in users (one parent pass, per-row
   gathered LoRA corrections) vs N full heads all loaded (one stacked pass over their
   banks), alternating. Also the model level (bank.forward on ready tensors), and the
   answers checked: a stacked add-in row equals the parent with the add-in merged into
   its weights (ph.modeling.addins.merged_state), run as a plain module.
2. resident: 10,000 add-in users loaded through HeadRegistry(memory_budget=2 GiB): how
   many stay loaded, RSS, bytes per user; then full heads through the same budget in
   another process: how many it holds.
3. cold: cold load of one add-in user with its parent loaded (registry.loaded, then the
   first predict), beside a full head's cold load in the same process.
4. http: `ph serve` (1 worker, --memory-budget 2GB) under wrk (32 connections, a random
   user per request): 1,000 add-in users; 100 hot full heads; 1,000 full heads through
   the budget; 10,000 add-in users.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import gc
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from common import emit, intent_texts, latency_ms, parser, peak_rss_bytes, rss_bytes, setup
from loadgen import WRK_SCRIPT

TEXT = "what is the weather in Paris tomorrow"
FULL_HEAD_BYTES = 15_800_000  # a full head's bank slot with derived weights, plus slack


# --- setup: the heads folder ------------------------------------------------------------------

def head_config(device: str, save_dir: Path, epochs: int) -> dict:
    return {"Inference": {"device": device},
            "Trainer": {"n_gpu": 1 if device.startswith("cuda") else 0,
                        "dataloader": {"args": {"batch_size": 32, "num_workers": 0}},
                        "lr_scheduler": None,
                        "trainer": {"epochs": epochs, "early_stop": 0, "save_period": 10_000,
                                    "tensorboard": False, "verbosity": 0,
                                    "save_dir": str(save_dir)}}}


def build_heads(heads_dir: Path, work: Path, n_addins: int, n_full: int, device: str,
                epochs: int) -> dict:
    """The shared head, u0 trained, n_addins clones a0.. of u0, n_full full heads f0.."""
    from helpers.intent_data import make_split
    from ph.heads.service import HeadRegistry
    registry = HeadRegistry(heads_dir)
    config = head_config(device, work / "saved", epochs)
    train, held = make_split(seed=0)
    out: dict = {}
    start = time.perf_counter()
    registry.create_head("shared", config)
    registry.add_examples("shared", train)
    registry.train("shared")
    out["shared_train_s"] = round(time.perf_counter() - start, 2)
    start = time.perf_counter()
    registry.create_head("u0", parent="shared", addin="lora")
    registry.add_examples("u0", held)  # the user's own examples
    summary = registry.train("u0", incremental=True)
    out["addin_train_s"] = round(time.perf_counter() - start, 2)
    out["addin_train_examples"] = summary["n_train"] + summary["n_valid"]
    start = time.perf_counter()
    clone_addins(registry.store, "u0", [f"a{i}" for i in range(n_addins)])
    out["addin_clone_per_s"] = round(n_addins / (time.perf_counter() - start), 1)
    start = time.perf_counter()
    for i in range(n_full):
        registry.create_head(f"f{i}", {"Inference": {"device": device}})
    out["full_create_per_s"] = round(n_full / max(1e-9, time.perf_counter() - start), 1)
    record = registry.store.read("a0")
    out["addin"] = registry.check_head("a0").get("addin")
    out["addin_record_fields"] = {k: record[k] for k in ("parent", "parent_revision", "base")}
    registry.close()
    return out


def clone_addins(store, template: str, uuids: list[str], noise: float = 0.2) -> None:
    """uuids as copies of the trained add-in `template`, each add-in tensor perturbed by
    noise x its standard deviation (per user, seeded), each a follower of the parent."""
    record, state = store.read_current(template)
    assert record.get("addin") and state is not None, "the template add-in is not trained"
    base = {k: v for k, v in record.items() if k not in ("uuid", "revision", "weights")}
    scale = {k: float(v.float().std()) * noise for k, v in state.items()}

    def one(item: tuple[int, str]) -> None:
        i, uuid = item
        gen = torch.Generator().manual_seed(1000 + i)
        mine = {k: v + scale[k] * torch.randn(v.shape, generator=gen) for k, v in state.items()}
        store.create(uuid, {**base, "uuid": uuid, "created": time.time()}, mine)
        store.add_follower(record["parent"], uuid)

    with concurrent.futures.ThreadPoolExecutor(8) as pool:  # bound by each file's fsync
        list(pool.map(one, enumerate(uuids)))


# --- part 1: one predict_many over N distinct users ---------------------------------------------

def phase_inprocess(heads_dir: Path, n: int, n_full: int, repeat: int) -> dict:
    from ph.heads.service import HeadRegistry
    from ph.modeling.addins import merged_state
    from ph.modeling.engine import make_model
    from ph.heads.addin_heads import addin_spec
    from ph.modeling.stacked import DERIVE_AFTER_USES
    registry = HeadRegistry(heads_dir)
    texts = intent_texts(max(n, n_full), seed=1)[0]
    addins, fulls = [f"a{i}" for i in range(n)], [f"f{i}" for i in range(n_full)]
    start = time.perf_counter()
    for u in addins:
        registry.loaded(u)
    addin_load_s = time.perf_counter() - start
    start = time.perf_counter()
    for u in fulls:
        registry.loaded(u)
    full_load_s = time.perf_counter() - start
    req_a, req_f = list(zip(addins, texts)), list(zip(fulls, texts))

    heads_a = [registry.loaded(u) for u in addins]
    heads_f = [registry.loaded(u) for u in fulls]
    bank_a, bank_f = heads_a[0].extra["bank"], heads_f[0].extra["bank"]
    assert type(bank_a).__name__ == "AddinBank" and type(bank_f).__name__ == "HeadBank"
    xs = [heads_a[0].engine.preprocess(t) for t in texts]

    def model_a():
        with bank_a.reading():
            return bank_a.forward([h.extra["slot"] for h in heads_a], xs[:n])

    def model_f():
        with bank_f.reading():
            return bank_f.forward([h.extra["slot"] for h in heads_f], xs[:n_full])

    fns = {"addin_e2e": lambda: registry.predict_many(req_a),
           "full_e2e": lambda: registry.predict_many(req_f),
           "addin_model": model_a, "full_model": model_f}
    for _ in range(DERIVE_AFTER_USES + 2):  # the full heads' fused weights, caches, kernels
        for fn in fns.values():
            fn()
    times: dict = {k: [] for k in fns}
    for _ in range(repeat):  # alternating, so drift in the machine's load hits all alike
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    sizes = {"addin": n, "full": n_full}
    rps = {k: round(sizes[k.split("_")[0]] / med[k], 1) for k in med}

    # answers: a stacked row vs the parent with the add-in folded in, as a plain module
    outs = model_a()
    max_diff, same_class = 0.0, True
    for i in sorted({0, 1, n // 2, n - 1}):
        record, state = registry.store.read_current(addins[i])
        code = registry.sources.code_of(record)
        spec = addin_spec(record["config"], record["addin"], code)
        merged = make_model(record["config"], code,
                            merged_state(spec, registry.store.load_snapshot(record["base"]), state))
        with torch.inference_mode():
            want = merged.eval()(xs[i])
        max_diff = max(max_diff, (want - outs[i]).abs().max().item())
        same_class &= bool((want.argmax(-1) == outs[i].argmax(-1)).all())
    alone = [registry.predict(u, t) for u, t in req_a[:50]]
    together = registry.predict_many(req_a[:50])
    distinct = len({tuple(o.flatten().tolist()) for o in outs[:50]})
    return {
        "users": n, "full_heads": n_full, "repeat": repeat,
        "load_all_s": {"addin": round(addin_load_s, 2), "full": round(full_load_s, 2)},
        "median_ms": {k: round(v * 1e3, 2) for k, v in med.items()},
        "requests_per_s": rps,
        "addin_over_full": {"end_to_end": round(rps["addin_e2e"] / rps["full_e2e"], 2),
                            "model": round(rps["addin_model"] / rps["full_model"], 2)},
        "answers": {"stacked_vs_merged_max_abs_diff": max_diff,
                    "stacked_vs_merged_same_class": same_class,
                    "predict_many_equals_predict": alone == together,
                    "distinct_outputs_of_50_users": distinct},
        "bytes_per_user": {"addin_slot": bank_a.slot_bytes(), "full_slot": bank_f.slot_bytes()},
        "rss_gb": round(rss_bytes() / 2**30, 2),
    }


# --- part 2: resident users under a memory budget -----------------------------------------------

def live_rss() -> int:
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    return rss_bytes()


def phase_resident(heads_dir: Path, n: int, budget: int, kind: str, batch: int = 256) -> dict:
    """Load n users (add-ins a*, or full heads f*) through the budget, in predict_many
    batches; how many stay loaded and what they cost."""
    from ph.heads.service import HeadRegistry
    registry = HeadRegistry(heads_dir, memory_budget=budget)
    prefix = "a" if kind == "addin" else "f"
    rss_start = live_rss()
    start = time.perf_counter()
    registry.predict(f"{prefix}0", TEXT)  # the first: an add-in's parent revision is loaded here
    first_s = time.perf_counter() - start
    rss_first = live_rss()
    max_held, start = 0, time.perf_counter()
    for lo in range(1, n, batch):
        answers = registry.predict_many([(f"{prefix}{i}", TEXT) for i in range(lo, min(n, lo + batch))])
        assert not any(isinstance(a, Exception) for a in answers), answers[:3]
        max_held = max(max_held, registry.cache.stats()["heads_loaded"])
    load_s = time.perf_counter() - start
    rss_end = live_rss()
    stats = registry.cache.stats()
    held = stats["heads_loaded"]
    banks = [b for b in registry.loader.banks.values()]
    out = {"kind": kind, "users": n, "budget_bytes": budget, "heads_loaded": held,
           "max_heads_loaded": max(max_held, held), "cache": stats,
           "first_load_ms": round(first_s * 1e3, 2),
           "load_rate_per_s": round((n - 1) / max(1e-9, load_s), 1),
           "rss_gb": {"start": round(rss_start / 2**30, 3), "after_first": round(rss_first / 2**30, 3),
                      "end": round(rss_end / 2**30, 3),
                      "peak": round(peak_rss_bytes() / 2**30, 3)},
           "rss_bytes_per_held_user": round((rss_end - rss_first) / max(1, held - 1)),
           "cache_bytes_per_user": round(stats["bytes_held"] / max(1, held)),
           "bank_bytes_allocated": sum(b.bytes_allocated() for b in banks)}
    if kind == "addin":
        bank = registry.loaded("a0").extra["bank"]
        out.update(bank_capacity=bank.capacity, bank_slot_bytes=bank.slot_bytes(),
                   parent_rss_bytes=rss_first - rss_start)
    return out


# --- part 3: cold load -------------------------------------------------------------------------

def phase_cold(heads_dir: Path, n_addin: int, n_full: int) -> dict:
    from ph.heads.service import HeadRegistry
    registry = HeadRegistry(heads_dir)
    start = time.perf_counter()
    registry.predict("a0", TEXT)
    parent_first_ms = (time.perf_counter() - start) * 1e3
    for _ in range(20):
        registry.predict("a0", TEXT)
    registry.predict("f0", TEXT)  # the full heads' bank exists too: both cold loads are per head

    # interleaved in blocks, so drift in the machine's load hits both alike
    blocks = 5
    a_step, f_step = max(1, n_addin // blocks), max(1, n_full // blocks)
    raw: dict = {"addin": [], "full": []}
    for b in range(blocks):
        raw["addin"].append(range(1 + b * a_step, 1 + (b + 1) * a_step))
        raw["full"].append(range(1 + b * f_step, 1 + (b + 1) * f_step))
    times: dict = {"addin": {"load": [], "first": []}, "full": {"load": [], "first": []}}
    for b in range(blocks):
        for kind, prefix in (("addin", "a"), ("full", "f")):
            for i in raw[kind][b]:
                t = time.perf_counter()
                registry.loaded(f"{prefix}{i}")
                t1 = time.perf_counter()
                registry.predict(f"{prefix}{i}", TEXT)
                times[kind]["load"].append(t1 - t)
                times[kind]["first"].append(time.perf_counter() - t1)
    med = {k: statistics.median(v["load"]) * 1e3 for k, v in times.items()}
    return {"parent_revision_first_load_and_predict_ms": round(parent_first_ms, 2),
            "addin": {"load": latency_ms(times["addin"]["load"]),
                      "first_predict": latency_ms(times["addin"]["first"])},
            "full": {"load": latency_ms(times["full"]["load"]),
                     "first_predict": latency_ms(times["full"]["first"])},
            "addin_cold_load_median_ms": round(med["addin"], 3),
            "full_cold_load_median_ms": round(med["full"], 3),
            "full_over_addin": round(med["full"] / med["addin"], 1)}


# --- part 4: HTTP ------------------------------------------------------------------------------



def wrk(url: str, prefix: str, heads: int, connections: int, seconds: float) -> dict:
    """One wrk run: POST /predict/ for user <prefix><random 0..heads-1> (serve_load's script
    with a uuid prefix)."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as fh:
        fh.write(WRK_SCRIPT % {"heads": heads, "prefix": prefix, "data": json.dumps(TEXT)})
    import resource
    before = resource.getrusage(resource.RUSAGE_CHILDREN)  # wrk is the one child reaped here
    try:
        out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s",
                              "--timeout", "10s", "-s", fh.name, url],
                             capture_output=True, text=True, check=True).stdout
    finally:
        Path(fh.name).unlink()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = json.loads(next(line[7:] for line in out.splitlines() if line.startswith("RESULT ")))
    result["rps"] = round(result["requests"] / result["duration_s"], 1)
    wrk_cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    result["wrk_cpu_share"] = round(wrk_cpu / result["duration_s"], 3)  # of one core
    return result


def warm_http(url: str, prefix: str, n: int, chunk: int = 500) -> float:
    """Load users prefix0..n-1 on the server with predict_many calls; seconds taken."""
    import requests
    start = time.perf_counter()
    with requests.Session() as session:
        for lo in range(0, n, chunk):
            reqs = [[f"{prefix}{i}", TEXT] for i in range(lo, min(n, lo + chunk))]
            answers = session.post(f"{url}/predict_many/", json={"requests": reqs}).json()
            bad = [a for a in answers if isinstance(a, dict) and "error" in a]
            if bad:
                raise RuntimeError(f"warm-up of {prefix}*: {bad[:2]}")
    return time.perf_counter() - start


def http_point(url: str, proc, prefix: str, heads: int, connections: int, seconds: float) -> dict:
    import requests
    from serve_load import process_cpu_seconds
    health = requests.get(f"{url}/healthz").json()
    cpu = process_cpu_seconds(proc.pid)
    result = wrk(url, prefix, heads, connections, seconds)
    after = requests.get(f"{url}/healthz").json()
    served = max(1, result["requests"])
    reqs = after["predict_requests"] - health["predict_requests"]
    server_cpu = process_cpu_seconds(proc.pid) - cpu
    result.update(
        heads=heads, connections=connections,
        server_cpu_share=round(server_cpu / result["duration_s"], 3),  # of one core (2 here)
        server_cpu_ms_per_request=round(server_cpu / served * 1e3, 3),
        requests_per_pass=round(reqs / max(1, after["predict_batches"] - health["predict_batches"]), 2),
        pass_cpu_ms_per_request=round((after["predict_pass_cpu_s"] - health["predict_pass_cpu_s"])
                                      / max(1, reqs) * 1e3, 3),
        head_stats={k: v for k, v in requests.post(f"{url}/head_stats/", json={}).json().items()
                    if k != "heads_dir"},
        server_rss_gb=round(proc_rss(proc.pid) / 2**30, 3))
    return result


def proc_rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def part_http(heads_dir: Path, work: Path, sizes: dict, connections: int, seconds: float,
              warm_s: float, budget: str) -> dict:
    from serve_load import ph_serve, server
    out: dict = {"budget": budget, "connections": connections, "seconds_per_point": seconds}
    with server(ph_serve(heads_dir, "--memory-budget", budget, "--workers", "1"), work) as (url, proc):
        n = sizes["addin_users"]
        out["warm_s"] = {"addin": round(warm_http(url, "a", n), 2)}
        wrk(url, "a", n, connections, warm_s)
        out["addin"] = http_point(url, proc, "a", n, connections, seconds)
        n = sizes["hot_full"]
        out["warm_s"]["hot_full"] = round(warm_http(url, "f", n), 2)
        wrk(url, "f", n, connections, warm_s)  # and the banks' fused weights (8 passes)
        out["hot_full"] = http_point(url, proc, "f", n, connections, seconds)
        n = sizes["budget_full"]
        out["budget_full"] = http_point(url, proc, "f", n, connections, max(seconds, 10))
        n = sizes["many_addin_users"]
        out["warm_s"]["many_addin"] = round(warm_http(url, "a", n), 2)
        wrk(url, "a", n, connections, warm_s)
        out["many_addin"] = http_point(url, proc, "a", n, connections, seconds)
    a, hot, cold = out["addin"]["rps"], out["hot_full"]["rps"], out["budget_full"]["rps"]
    out["ratios"] = {"addin_over_hot_full": round(a / hot, 2),
                     "addin_over_budget_full": round(a / max(cold, 1e-9), 1),
                     "many_addin_over_addin": round(out["many_addin"]["rps"] / a, 2)}
    return out


# --- the run -----------------------------------------------------------------------------------

def sub(phase: str, heads_dir: Path, args, *extra: str) -> dict:
    """Run a part in a process of its own, with this run's --threads and --device."""
    cmd = [sys.executable, __file__, "--phase", phase, "--heads-dir", str(heads_dir),
           "--threads", str(args.threads), "--device", args.device, *extra]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"phase {phase} failed: {done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def mem_available() -> int:
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--quick", action="store_true", help="small sizes: a check in about a minute")
    p.add_argument("--users", type=int, default=1000, help="part 1: distinct users per pass")
    p.add_argument("--full-heads", type=int, default=1000,
                   help="part 1: full heads loaded (capped by the memory free here)")
    p.add_argument("--repeat", type=int, default=7, help="part 1: timed passes of each kind")
    p.add_argument("--resident-users", type=int, default=10_000, help="part 2: add-in users loaded")
    p.add_argument("--resident-full", type=int, default=200, help="part 2: full heads through the budget")
    p.add_argument("--budget", default="2GB", help="parts 2 and 4: memory budget")
    p.add_argument("--cold", type=int, default=200, help="part 3: add-in cold loads (and 1/4 as many full)")
    p.add_argument("--http-users", type=int, default=1000)
    p.add_argument("--http-hot-full", type=int, default=100)
    p.add_argument("--http-budget-full", type=int, default=1000)
    p.add_argument("--http-many-users", type=int, default=10_000)
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--seconds", type=float, default=10, help="per wrk point")
    p.add_argument("--warm-seconds", type=float, default=3, help="unrecorded wrk load before a point")
    p.add_argument("--epochs", type=int, default=8, help="training epochs of the shared head and u0")
    p.add_argument("--parts", default="inprocess,resident,cold,http")
    p.add_argument("--keep", default="", help="work folder to keep (default: a temporary one, removed)")
    p.add_argument("--phase", default="", help=argparse_suppress())
    p.add_argument("--heads-dir", default="", help=argparse_suppress())
    p.add_argument("--n", type=int, default=0, help=argparse_suppress())
    p.add_argument("--m", type=int, default=0, help=argparse_suppress())
    args = p.parse_args()
    device = setup(args)
    if args.phase:
        heads = Path(args.heads_dir)
        from ph.api import parse_bytes
        if args.phase == "inprocess":
            result = phase_inprocess(heads, args.n, args.m, args.repeat)
        elif args.phase in ("resident-addin", "resident-full"):
            result = phase_resident(heads, args.n, parse_bytes(args.budget), args.phase.split("-")[1])
        else:
            result = phase_cold(heads, args.n, args.m)
        print(json.dumps(result))
        return
    if args.quick:
        args.users, args.full_heads, args.repeat = 100, 100, 3
        args.resident_users, args.resident_full, args.budget = 1000, 60, "512MB"
        args.cold, args.http_users, args.http_hot_full = 50, 200, 20
        args.http_budget_full, args.http_many_users = 200, 1000
        args.seconds, args.warm_seconds, args.epochs = 3, 1, 2
    parts = set(args.parts.split(","))
    work = Path(args.keep or tempfile.mkdtemp(prefix="ph-addins-"))
    heads_dir = work / "heads"
    n_addins = max(args.users, args.resident_users, args.http_users, args.http_many_users, args.cold + 1)
    n_full = max(args.full_heads, args.resident_full, args.http_hot_full, args.http_budget_full,
                 args.cold // 4 + 1)
    started = time.perf_counter()
    out: dict = {"quick": args.quick, "sizes": {"addin_users_made": n_addins, "full_heads_made": n_full}}
    try:
        made = {"addins": n_addins, "full": n_full, "epochs": args.epochs, "device": args.device}
        marker = work / "made.json"
        if marker.exists() and json.loads(marker.read_text())["made"] == made:  # --keep: reuse
            out["setup"] = {**json.loads(marker.read_text())["setup"], "reused": True}
        else:
            shutil.rmtree(heads_dir, ignore_errors=True)
            out["setup"] = build_heads(heads_dir, work, n_addins, n_full, args.device, args.epochs)
            marker.write_text(json.dumps({"made": made, "setup": out["setup"]}))
        if "inprocess" in parts:
            room = (mem_available() - 3 * 2**30) // FULL_HEAD_BYTES
            full = int(max(50, min(args.full_heads, room)))
            out["inprocess"] = sub("inprocess", heads_dir, args, "--n", str(args.users), "--m", str(full),
                                   "--repeat", str(args.repeat))
            out["inprocess"]["full_heads_requested"] = args.full_heads
            out["inprocess"]["full_heads_capped_by_free_memory"] = full < args.full_heads
        if "resident" in parts:
            out["resident"] = {
                "addin": sub("resident-addin", heads_dir, args, "--n", str(args.resident_users),
                             "--budget", args.budget),
                "full": sub("resident-full", heads_dir, args, "--n", str(args.resident_full),
                            "--budget", args.budget)}
            a, f = out["resident"]["addin"], out["resident"]["full"]
            out["resident"]["addin_over_full_users_held"] = round(a["heads_loaded"] / max(1, f["max_heads_loaded"]), 1)
        if "cold" in parts:
            out["cold"] = sub("cold", heads_dir, args, "--n", str(args.cold), "--m", str(max(5, args.cold // 4)))
        if "http" in parts:
            out["http"] = part_http(heads_dir, work, {
                "addin_users": args.http_users, "hot_full": args.http_hot_full,
                "budget_full": args.http_budget_full, "many_addin_users": args.http_many_users},
                args.connections, args.seconds, args.warm_seconds, args.budget)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    out["seconds_total"] = round(time.perf_counter() - started, 1)
    out["summary"] = summarize(out)
    emit("addins_serve", args, device, out)


def argparse_suppress():
    import argparse
    return argparse.SUPPRESS


def summarize(out: dict) -> dict:
    s: dict = {}
    if "inprocess" in out:
        r = out["inprocess"]
        s["inprocess_addin_over_full_e2e"] = r["addin_over_full"]["end_to_end"]
        s["inprocess_addin_over_full_model"] = r["addin_over_full"]["model"]
        s["inprocess_rps"] = {"addin": r["requests_per_s"]["addin_e2e"], "full": r["requests_per_s"]["full_e2e"]}
        s["target_inprocess_4x_met"] = r["addin_over_full"]["end_to_end"] >= 4
    if "resident" in out:
        a, f = out["resident"]["addin"], out["resident"]["full"]
        s["resident_users_held"] = {"addin": a["heads_loaded"], "full": f["max_heads_loaded"]}
        s["resident_addin_rss_bytes_per_user"] = a["rss_bytes_per_held_user"]
    if "cold" in out:
        s["cold_load_median_ms"] = {"addin": out["cold"]["addin_cold_load_median_ms"],
                                    "full": out["cold"]["full_cold_load_median_ms"]}
    if "http" in out:
        h = out["http"]
        s["http_rps"] = {k: h[k]["rps"] for k in ("addin", "hot_full", "budget_full", "many_addin")}
        s["http_many_addin_p99_ms"] = h["many_addin"]["p99_ms"]
        s.update({f"http_{k}": v for k, v in h["ratios"].items()})
        s["target_http_vs_hot_1x_met"] = h["ratios"]["addin_over_hot_full"] >= 1
        s["target_http_vs_budget_15x_met"] = h["ratios"]["addin_over_budget_full"] >= 15
        s["http_errors"] = sum(h[k]["non_2xx"] + h[k]["socket_errors"]
                               for k in ("addin", "hot_full", "budget_full", "many_addin"))
    return s


if __name__ == "__main__":
    main()
