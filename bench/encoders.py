"""Text encoders: the hashing encoder against all-MiniLM-L6-v2 in front of the same head.

- accuracy: the default head (default Model and Trainer config; embedding_length follows
  the encoder: 768 hashing, 384 MiniLM) trained on intent utterances from 6 templates
  per intent, tested on held-out utterances from unseen templates and slot values
  (tests/helpers/intent_data.py). Several data seeds, and a few-shot size as well as the full one.
- cost: the encoder alone on one text, and `predict(uuid, text)` end to end, p50.
- stacked pass: `predict_many` with N heads sharing the encoder, one text each; the time
  spent inside the encoder (measured in the pass) against the rest, and what encoding
  the N texts in one batch would cost.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import torch

from common import emit, parser, pct, rss_bytes, setup, sync

ENCODERS = {
    "hashing": {},
    "minilm": {"encoder": "sentence_transformers",
               "encoder_args": {"model": "all-MiniLM-L6-v2"}},
}
TEXT = "I want to order a pizza"


def clocked(fn, repeat: int, device, warmup: int = 3) -> dict:
    """p50 wall and CPU milliseconds per call. CPU time (this process, all its threads)
    is the steadier figure on a shared machine: other jobs' load stretches wall time;
    run with --threads 1 and the two agree on an idle machine."""
    for _ in range(warmup):
        fn()
    sync(device)
    wall, cpu = [], []
    for _ in range(repeat):
        w, c = time.perf_counter(), time.process_time()
        fn()
        sync(device)
        wall.append(time.perf_counter() - w)
        cpu.append(time.process_time() - c)
    return {"wall_p50_ms": round(pct(wall, 50) * 1e3, 3), "cpu_p50_ms": round(pct(cpu, 50) * 1e3, 3),
            "n": repeat}


def head_config(encoder: str, device: torch.device, epochs: int | None) -> dict:
    """The default head and trainer; only logging, saving and the encoder differ."""
    loop = {"tensorboard": False, "verbosity": 0, "save_period": 1000}
    if epochs:
        loop["epochs"] = epochs
    return {"Inference": {"device": str(device), "preprocess": {"args": ENCODERS[encoder]}},
            "Trainer": {"n_gpu": 1 if device.type == "cuda" else 0, "trainer": loop,
                        "dataloader": {"args": {"num_workers": 0}}}}


def accuracy(registry, encoder: str, device, seeds: list[int], per_intent: int,
             epochs: int | None) -> dict:
    from helpers.intent_data import as_label_lists, make_split
    scores, seconds = [], []
    for seed in seeds:
        train, held = make_split(seed=seed, per_intent=per_intent)
        data = Path(f"train-{seed}-{per_intent}.json")
        data.write_text(json.dumps(as_label_lists(train)))
        config = head_config(encoder, device, epochs)
        config["Trainer"]["dataloader"]["args"]["train_json"] = str(data.resolve())
        config["Trainer"]["seed"] = seed
        uuid = registry.create_head(f"{encoder}-{seed}-{per_intent}", config)
        start = time.perf_counter()
        registry.train(uuid)
        seconds.append(time.perf_counter() - start)
        labels = registry.check_head(uuid)["labels"]
        preds = registry.predict(uuid, [r["text"] for r in held])
        scores.append(sum(labels[p] == r["label"] for p, r in zip(preds, held)) / len(held))
    return {"per_intent_train": per_intent, "train_examples": len(train),
            "held_out_examples": len(held), "seeds": seeds,
            "accuracy": [round(s, 4) for s in scores],
            "mean_accuracy": round(sum(scores) / len(scores), 4),
            "train_seconds_mean": round(sum(seconds) / len(seconds), 2)}


def predict_cost(registry, encoder: str, device, repeat: int) -> dict:
    uuid = registry.create_head(f"{encoder}-latency", head_config(encoder, device, None))
    engine = registry.loaded(uuid).engine
    enc = engine.preprocessor.encoder
    encode = clocked(lambda: enc.encode([TEXT]), repeat, device)
    predict = clocked(lambda: registry.predict(uuid, TEXT), repeat, device)
    return {"encoder": encode, "predict": predict,
            "encoder_share_of_predict_cpu": round(encode["cpu_p50_ms"] / predict["cpu_p50_ms"], 3),
            "encoder_share_of_predict_wall": round(encode["wall_p50_ms"] / predict["wall_p50_ms"], 3)}


def stacked_pass(registry, encoder: str, device, n: int, repeat: int) -> dict:
    """predict_many over n heads (one text each); the encoder's time is read inside the
    pass by wrapping the shared encoder's `encode`."""
    from helpers.intent_data import make_split
    uuids = [registry.create_head(f"{encoder}-user{i}", head_config(encoder, device, None))
             for i in range(n)]
    texts = [r["text"] for r in make_split(seed=1)[1]]
    requests = [(u, texts[i % len(texts)]) for i, u in enumerate(uuids)]
    registry.predict_many(requests)  # load every head
    encoders = {id(registry.loaded(u).engine.preprocessor.encoder):
                registry.loaded(u).engine.preprocessor.encoder for u in uuids}
    spent = [0.0, 0.0]  # wall, CPU seconds inside the encoder in this pass
    originals = {}
    for key, enc in encoders.items():
        originals[key] = enc.encode

        def wrapped(batch, _inner=enc.encode):
            wall, cpu = time.perf_counter(), time.process_time()
            try:
                return _inner(batch)
            finally:
                spent[0] += time.perf_counter() - wall
                spent[1] += time.process_time() - cpu
        enc.encode = wrapped
    passes = []
    try:
        for _ in range(repeat):
            spent[:] = [0.0, 0.0]
            wall, cpu = time.perf_counter(), time.process_time()
            registry.predict_many(requests)
            passes.append((time.process_time() - cpu, time.perf_counter() - wall, *spent))
    finally:
        for key, enc in encoders.items():
            enc.encode = originals[key]
    cpu, wall, enc_wall, enc_cpu = sorted(passes)[len(passes) // 2]  # the median pass (CPU)
    one = next(iter(encoders.values()))
    batch = clocked(lambda: one.encode([t for _, t in requests]), max(3, repeat // 4), device,
                    warmup=1)
    return {"heads": n, "shared_encoder_objects": len(encoders),
            "pass_cpu_ms": round(cpu * 1e3, 2), "pass_wall_ms": round(wall * 1e3, 2),
            "encoder_cpu_ms": round(enc_cpu * 1e3, 2), "rest_cpu_ms": round((cpu - enc_cpu) * 1e3, 2),
            "encoder_share_cpu": round(enc_cpu / cpu, 3),
            "encoder_share_wall": round(enc_wall / wall, 3),
            "requests_per_cpu_second": round(n / cpu),
            "one_batched_encode_of_the_n_texts": batch}


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--seeds", default="0,1,2", help="intent-data seeds (one head per seed)")
    p.add_argument("--per-intent", default="5,40",
                   help="training utterances per intent (comma-separated sizes)")
    p.add_argument("--epochs", type=int, default=0, help="0: the default config's (100, "
                   "early stop 10 on val_loss)")
    p.add_argument("--heads", default="10,100", help="N heads for the stacked pass")
    p.add_argument("--repeat", type=int, default=100, help="calls per latency figure")
    p.add_argument("--passes", type=int, default=20, help="stacked passes per N")
    p.add_argument("--parts", default="accuracy,cost,stacked", help="which measurements")
    args = p.parse_args()
    device = setup(args)
    os.chdir(tempfile.mkdtemp())
    from ph.modeling.encoders import loaded_encoders
    from ph.heads.service import HeadRegistry
    registry = HeadRegistry(Path("heads"))
    seeds = [int(s) for s in args.seeds.split(",")]
    registry.create_head("warm-hashing", head_config("hashing", device, None))
    rss, start = rss_bytes(), time.perf_counter()
    registry.create_head("warm-minilm", head_config("minilm", device, None))
    load_seconds = time.perf_counter() - start
    results: dict = {"minilm_first_load_seconds": round(load_seconds, 2),
                     "minilm_load_rss_mb": round((rss_bytes() - rss) / 2**20, 1), "accuracy": {},
                     "cost": {}, "stacked": {}}
    parts = args.parts.split(",")
    for encoder in ENCODERS:
        if "accuracy" in parts:
            results["accuracy"][encoder] = [
                accuracy(registry, encoder, device, seeds, int(k), args.epochs or None)
                for k in args.per_intent.split(",")]
        if "cost" in parts:
            results["cost"][encoder] = predict_cost(registry, encoder, device, args.repeat)
        if "stacked" in parts:
            results["stacked"][encoder] = [
                stacked_pass(registry, encoder, device, int(n), args.passes)
                for n in args.heads.split(",")]
    results["minilm_encoders_loaded_in_this_process"] = sum(
        1 for key in loaded_encoders() if key[0] == "sentence_transformers")
    emit("encoders", args, device, results)


if __name__ == "__main__":
    main()
