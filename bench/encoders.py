"""Text encoders: the hashing encoder against all-MiniLM-L6-v2 in front of the same head.

- accuracy: the default head (default Model and Trainer config; embedding_length follows
  the encoder: 768 hashing, 384 MiniLM) trained on intent utterances from 6 templates
  per intent, tested on held-out utterances from unseen templates and slot values
  (tests/helpers/intent_data.py). Several data seeds, and a few-shot size as well as the full one.
- cost: the encoder alone on one text, and `predict(uuid, text)` end to end, p50.
- stacked pass: `predict_many` with N heads sharing the encoder, one text each; the time
  spent inside the encoder (measured in the pass) against the rest, and what encoding
  the N texts in one batch would cost.
- backends: MiniLM run by torch, by ONNX Runtime (fp32) and by ONNX Runtime with dynamic
  int8 quantization (`encoder_args.backend`, `quantize`), each in every part above;
  `agreement`: each backend's cosine similarity to torch's embeddings of the held-out texts.
- `incremental` (not in the default parts): an incremental run of 10 new examples on a
  head storing 100 and 10,000, with no cache but the head's stored embeddings (a fresh
  job on another machine).
- `job_rss` (not in the default parts): peak RSS of a training process on 1,000 stored
  examples, encoding them (its first run) and on their stored embeddings (the next).
- The embedding cache and the disk embedding store are off for every figure above (each pass would otherwise be answered
  from it); `cache`: the stacked pass over N heads whose texts repeat half the time, with
  the cache off and on, per backend.
"""
from __future__ import annotations

import itertools
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
    "minilm_onnx": {"encoder": "sentence_transformers",
                    "encoder_args": {"model": "all-MiniLM-L6-v2", "backend": "onnx"}},
    "minilm_onnx_int8": {"encoder": "sentence_transformers",
                         "encoder_args": {"model": "all-MiniLM-L6-v2", "backend": "onnx",
                                          "quantize": "int8"}},
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


def agreement(registry, encoder: str, device) -> dict:
    """Cosine similarity of `encoder`'s embeddings to torch MiniLM's, on held-out texts."""
    from helpers.intent_data import make_split
    texts = [r["text"] for r in make_split(seed=0)[1]]
    reference = shared_encoder(registry, "minilm", device).encode(texts)
    got = shared_encoder(registry, encoder, device).encode(texts)
    cosine = torch.nn.functional.cosine_similarity(got, reference)
    return {"texts": len(texts), "min_cosine": round(cosine.min().item(), 4),
            "mean_cosine": round(cosine.mean().item(), 4)}


def shared_encoder(registry, encoder: str, device):
    uuid = registry.create_head(f"{encoder}-probe", head_config(encoder, device, None))
    return registry.loaded(uuid).engine.preprocessor.encoder


def cache_gain(registry, encoder: str, device, n: int, repeat: int) -> dict:
    """Stacked passes over n heads, half of each pass's texts seen in earlier passes:
    requests per CPU second with the embedding cache off and on."""
    from helpers.intent_data import make_split
    from ph.modeling.embedding_cache import EmbeddingCache
    enc = shared_encoder(registry, encoder, device)
    uuids = [registry.create_head(f"{encoder}-cached{i}", head_config(encoder, device, None))
             for i in range(n)]
    pool = [r["text"] for r in make_split(seed=2)[0]]
    fresh = (f"{t} please ({i})" for i in itertools.count() for t in pool)
    repeated = pool[:n]
    out = {}
    for label, size in (("off", 0), ("on", 64 * 2**20)):
        enc.cache = EmbeddingCache(size)
        registry.predict_many([(u, t) for u, t in zip(uuids, repeated)])
        cpu = time.process_time()
        for _ in range(repeat):
            requests = [(u, repeated[i] if i % 2 else next(fresh)) for i, u in enumerate(uuids)]
            registry.predict_many(requests)
        out[label] = {"requests_per_cpu_second": round(n * repeat / (time.process_time() - cpu)),
                      "cache": enc.cache.stats()}
    enc.cache = EmbeddingCache(0)
    out["on_over_off"] = round(out["on"]["requests_per_cpu_second"]
                               / out["off"]["requests_per_cpu_second"], 2)
    return out


def incremental_cost(registry, encoder: str, device, stored_sizes: list[int], new: int) -> dict:
    """An incremental run of `new` examples on a head storing N examples, with the
    encoder's memory cache off and no machine embedding store (as a fresh training job on
    another machine): the texts encoded before come from the head's stored embeddings
    (ph.heads.stored_embeddings), so the run should cost about the same whatever N (it
    also reads the example log and draws the replay pool)."""
    from helpers.intent_data import make_split
    from ph.modeling.embedding_cache import EmbeddingCache
    train = make_split(seed=3, per_intent=40)[0]
    enc = shared_encoder(registry, encoder, device)
    out = {}
    for n in stored_sizes:
        enc.cache = EmbeddingCache(64 * 2**20)
        uuid = registry.create_head(f"{encoder}-stored{n}", head_config(encoder, device, 3))
        rows = [{"text": f"{r['text']} ({i})", "label": r["label"]}
                for i, r in zip(range(n), itertools.cycle(train))]
        for start in range(0, n, 1000):
            registry.add_examples(uuid, rows[start:start + 1000])
        first = time.perf_counter()
        registry.train(uuid, {"Trainer": {"dataloader": {"args": {"train_json": None}}}})
        first = time.perf_counter() - first
        registry.add_examples(uuid, [{"text": f"a brand new request number {i}", "label": r["label"]}
                                     for i, r in zip(range(new), train)])
        enc.cache = EmbeddingCache(0)
        encoded = []
        real = enc._encode
        enc._encode = lambda texts: encoded.extend(texts) or real(texts)
        wall, cpu = time.perf_counter(), time.process_time()
        summary = registry.train(uuid, incremental=True)
        out[n] = {"first_full_run_s": round(first, 2),
                  "incremental_wall_s": round(time.perf_counter() - wall, 3),
                  "incremental_cpu_s": round(time.process_time() - cpu, 3),
                  "texts_encoded": len(encoded), "examples": summary["examples"]}
        del enc._encode
    small, large = out[stored_sizes[0]], out[stored_sizes[-1]]
    out["large_over_small_wall"] = round(large["incremental_wall_s"] / small["incremental_wall_s"], 2)
    enc.cache = EmbeddingCache(0)
    return out


JOB = """
import json, re, sys
from pathlib import Path
from ph.heads.service import HeadRegistry
from ph.modeling.encoders import loaded_encoders
summary = HeadRegistry(sys.argv[1]).train(sys.argv[2])
peak_kb = int(re.search(r"VmHWM:\\s+(\\d+)", Path("/proc/self/status").read_text()).group(1))
print(json.dumps({"updated": summary["updated"], "peak_rss_mb": round(peak_kb / 1024, 1),
                  "encoder_loaded": any(e.stats()["loaded"] for e in loaded_encoders().values())}))
"""


def job_rss(encoder: str, device, examples: int) -> dict:
    """Peak RSS (VmHWM: ru_maxrss would carry the parent's over the exec) of a training
    process (as a background job runs one) on a head storing
    `examples` texts: its first run, which encodes them, against the next, whose texts
    are all in the head's stored embeddings. The machine's embedding caches are off."""
    import subprocess
    import sys
    from helpers.intent_data import make_split
    from ph.heads.service import HeadRegistry
    heads = Path(tempfile.mkdtemp(prefix="ph-job-rss-"))
    train = make_split(seed=5, per_intent=40)[0]
    config = head_config(encoder, device, 5)
    config["Trainer"]["dataloader"]["args"]["train_json"] = None  # its stored examples only
    HeadRegistry(heads).create_head("job", config)
    HeadRegistry(heads).add_examples("job", [{"text": f"{r['text']} ({i})", "label": r["label"]}
                                             for i, r in zip(range(examples), itertools.cycle(train))])
    env = {**os.environ, "PH_EMBEDDING_STORE": "0", "PH_EMBEDDING_CACHE_BYTES": "0"}
    run = lambda: json.loads(subprocess.run([sys.executable, "-c", JOB, str(heads), "job"], env=env,
                                            check=True, capture_output=True, text=True).stdout)
    first, encoded = run(), run()
    return {"examples": examples, "first_run": first, "on_encoded_examples": encoded,
            "rss_ratio": round(encoded["peak_rss_mb"] / first["peak_rss_mb"], 3)}


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
    p.add_argument("--parts", default="accuracy,cost,stacked,agreement,cache",
                   help="which measurements")
    p.add_argument("--encoders", default=",".join(ENCODERS), help="which encoders")
    p.add_argument("--stored", default="100,10000", help="part incremental: stored examples")
    args = p.parse_args()
    os.environ["PH_EMBEDDING_CACHE_BYTES"] = "0"  # encoders measured, not the caches (part
    os.environ["PH_EMBEDDING_STORE"] = "0"  # cache measures the memory one)
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
    for encoder in args.encoders.split(","):
        if "incremental" in parts and encoder != "hashing":
            results.setdefault("incremental", {})[encoder] = incremental_cost(
                registry, encoder, device, [int(n) for n in args.stored.split(",")], 10)
        if "job_rss" in parts and encoder != "hashing":
            results.setdefault("job_rss", {})[encoder] = job_rss(encoder, device, 1000)
        if "agreement" in parts and encoder.startswith("minilm_"):
            results.setdefault("agreement", {})[encoder] = agreement(registry, encoder, device)
        if "cache" in parts and encoder != "hashing":
            results.setdefault("cache", {})[encoder] = cache_gain(
                registry, encoder, device, int(args.heads.split(",")[-1]), args.passes)
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
    for part in ("cost", "stacked"):
        if "minilm" in results[part]:
            results[f"{part}_over_torch"] = {
                name: round(_per_request_cpu(results[part]["minilm"])
                            / _per_request_cpu(figures), 2)
                for name, figures in results[part].items() if name.startswith("minilm_")}
    results["minilm_encoders_loaded_in_this_process"] = sum(
        1 for key in loaded_encoders() if key[0] == "sentence_transformers")
    emit("encoders", args, device, results)


def _per_request_cpu(figures) -> float:
    """CPU per request: a cost entry's encoder p50, or the largest stacked pass's per head."""
    if isinstance(figures, list):
        return figures[-1]["pass_cpu_ms"] / figures[-1]["heads"]
    return figures["encoder"]["cpu_p50_ms"]


if __name__ == "__main__":
    main()
