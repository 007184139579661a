"""Many heads: memory per head, time to create, cold-load latency, and N heads created
and queried through a memory budget (least recently used heads go back to disk).

Also half-precision storage: heads held under the same budget, and whether answers
stay the same class as float32 for a trained head.
"""
from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path


from common import emit, intent_texts, latency_ms, parser, peak_rss_bytes, rss_bytes, setup

TEXT = "I want to order a pizza"


def config_for(device, dtype="float32") -> dict:
    return {"Inference": {"device": str(device), "dtype": dtype}}


def per_head(registry, device) -> dict:
    uids = [registry.create_head(f"mem{i}", config_for(device)) for i in range(41)]
    registry.predict(uids[0], TEXT)
    before = rss_bytes()
    for uid in uids[1:]:
        registry.predict(uid, TEXT)
    head = registry.loaded(uids[0])
    params = sum(p.numel() for p in head.engine.model.parameters())
    return {"parameters": params, "float32_weight_bytes": params * 4,
            "bank_bytes_per_head": head.nbytes,
            "rss_bytes_per_loaded_head": (rss_bytes() - before) // 40}


def create_and_cold_load(registry, device, n: int, trained_file: Path) -> dict:
    times = []
    for i in range(n):
        start = time.perf_counter()
        registry.create_head(f"new{i}", config_for(device))
        times.append(time.perf_counter() - start)
    cold = []
    for i in range(n):
        start = time.perf_counter()
        registry.predict(f"new{i}", TEXT)
        cold.append(time.perf_counter() - start)
    warm = [time.perf_counter()]
    for i in range(n):
        registry.predict(f"new{i}", TEXT)
    warm = (time.perf_counter() - warm[0]) / n
    trained = []
    for i in range(min(n, 100)):
        registry.load_weights(f"new{i}", str(trained_file))
    fresh = type(registry)(registry.store.root)
    for i in range(min(n, 100)):
        start = time.perf_counter()
        fresh.predict(f"new{i}", TEXT)
        trained.append(time.perf_counter() - start)
    return {"create": latency_ms(times), "cold_load_untrained_predict": latency_ms(cold),
            "cold_load_trained_predict": latency_ms(trained),
            "warm_predict_mean_ms": round(warm * 1e3, 4)}


def through_budget(root: Path, device, n: int, budget: int, dtype: str) -> dict:
    from ph.heads.service import HeadRegistry
    registry = HeadRegistry(root / f"budget-{dtype}", memory_budget=budget)
    start = time.perf_counter()
    for i in range(n):
        registry.create_head(f"u{i}", config_for(device, dtype))
    created = time.perf_counter() - start
    order = list(range(n))
    random.Random(0).shuffle(order)
    cold, max_bytes, max_heads = [], 0, 0
    start = time.perf_counter()
    for i in order:
        t = time.perf_counter()
        registry.predict(f"u{i}", TEXT)
        cold.append(time.perf_counter() - t)
        stats = registry.cache.stats()
        max_bytes, max_heads = max(max_bytes, stats["bytes_held"]), max(max_heads, stats["heads_loaded"])
    first_pass = time.perf_counter() - start
    hot = [f"u{i}" for i in order[-max(1, max_heads // 2):]]  # recently used: still loaded
    rng, hot_times = random.Random(1), []
    for _ in range(2000):
        uid = rng.choice(hot)
        t = time.perf_counter()
        registry.predict(uid, TEXT)
        hot_times.append(time.perf_counter() - t)
    return {"heads": n, "dtype": dtype, "budget_bytes": budget, "create_seconds": round(created, 2),
            "peak_rss_gb": round(peak_rss_bytes() / 2**30, 2),
            "query_all_once_seconds": round(first_pass, 2),
            "cold_load_predict": latency_ms(cold), "hot_set_predict": latency_ms(hot_times),
            "max_bytes_held": max_bytes, "max_heads_held": max_heads,
            "within_budget": max_bytes <= budget, "stats": registry.stats(),
            "bank_bytes_allocated": sum(b.bytes_allocated() for b in registry.banks.values())}


def half_precision_agreement(root: Path, device, trained_file: Path, texts: list[str]) -> dict:
    from ph.heads.service import HeadRegistry
    registry = HeadRegistry(root / "half")
    answers = {}
    for dtype in ("float32", "bfloat16", "float16"):
        config = config_for(device, dtype)
        config["Inference"]["weights"] = str(trained_file)
        uid = registry.create_head(dtype, config)
        answers[dtype] = (registry.predict(uid, texts), registry.loaded(uid).nbytes)
    base = answers["float32"][0]
    return {dtype: {"same_class_as_float32": round(sum(a == b for a, b in zip(pred, base)) / len(base), 4),
                    "bytes_per_head": nbytes}
            for dtype, (pred, nbytes) in answers.items()}


def trained_weights(root: Path, device) -> tuple[Path, list[str]]:
    """Train one default head on the intent set (a few seconds) for realistic weights."""
    import json
    from ph.heads.service import HeadRegistry
    from helpers.intent_data import as_label_lists, make_split
    train, held = make_split(seed=0)
    data = root / "train.json"
    data.write_text(json.dumps(as_label_lists(train)))
    registry = HeadRegistry(root / "trainer")
    trainer = {"n_gpu": 1, "dataloader": {"args": {"train_json": str(data)}},
               "trainer": {"epochs": 8, "save_dir": str(root / "saved"), "save_period": 100,
                           "tensorboard": False}}
    registry.create_head("teacher", {**config_for(device), "Trainer": trainer})
    summary = registry.train("teacher")
    return Path(summary["weights"]), [r["text"] for r in held]


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--heads", type=int, default=10000, help="heads created and queried through the budget")
    p.add_argument("--budget", default="2GB")
    p.add_argument("--sample", type=int, default=300, help="heads for create/cold-load timings")
    p.add_argument("--budget-phase", default="", help=argparse.SUPPRESS)  # dtype: run only that
    args = p.parse_args()
    device = setup(args)
    if args.budget_phase:  # its own process, so peak memory is this phase's alone
        from ph.api import parse_bytes
        print(json.dumps(through_budget(Path(tempfile.mkdtemp()), device, args.heads,
                                        parse_bytes(args.budget), args.budget_phase)))
        return
    from ph.heads.service import HeadRegistry
    root = Path(tempfile.mkdtemp())
    weights, held_out = trained_weights(root, device)
    registry = HeadRegistry(root / "heads")
    results = {"per_head": per_head(registry, device),
               "create_and_load": create_and_cold_load(registry, device, args.sample, weights),
               "half_precision": half_precision_agreement(root, device, weights, held_out * 3 + intent_texts(300)[0])}
    del registry
    for dtype, n in (("float32", args.heads), ("bfloat16", min(args.heads, 2000))):
        out = subprocess.run([sys.executable, __file__, "--device", args.device, "--heads", str(n),
                              "--budget", args.budget, "--budget-phase", dtype],
                             check=True, capture_output=True, text=True)
        results[f"budget_{dtype}"] = json.loads(out.stdout.strip().splitlines()[-1])
    emit("many_heads", args, device, results)


if __name__ == "__main__":
    main()
