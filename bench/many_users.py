"""Many users at once: requests/s answering N distinct heads one request each.

Per-head loop vs one stacked pass (`predict_many`), at two levels:
- model: the heads' forward passes alone on ready tensors (loop of modules vs
  HeadBank.forward), the figure the plain-PyTorch prototype measured;
- end to end: `registry.predict` per request vs `registry.predict_many`, with each
  request's data a 768-float embedding as a JSON client sends it (pre- and post-
  processing included).
Answers must match the per-head forward within 1e-5 (float32).
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from common import emit, parser, rss_bytes, setup, sync
from ph.modeling.stacked import DERIVE_AFTER_USES


def rate(fn, n_requests: int, device, min_seconds: float = 2.0) -> float:
    for _ in range(DERIVE_AFTER_USES):  # warm up: loads, kernels, the banks' fused weights
        fn()
    sync(device)
    runs, start = 0, time.perf_counter()
    while True:
        fn()
        sync(device)
        runs += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds and runs >= 3:
            return n_requests * runs / elapsed


def bench_n(n: int, device: torch.device, seconds: float) -> dict:
    from ph.heads.service import HeadRegistry
    registry = HeadRegistry(Path(tempfile.mkdtemp()) / "heads")
    config = {"Inference": {"device": str(device), "postprocess": {"args": {"return_scores": True}}}}
    uids = [registry.create_head(f"user{i}", config) for i in range(n)]
    heads = [registry.loaded(u) for u in uids]
    gen = torch.Generator().manual_seed(0)
    xs = [torch.randn(1, 1, 768, generator=gen).to(device) for _ in uids]
    bank = heads[0].extra["bank"]
    models = [h.engine.model for h in heads]

    def model_loop():
        with torch.inference_mode():
            return [m(x) for m, x in zip(models, xs)]

    def model_stacked():
        with bank.reading():
            return bank.forward([h.extra["slot"] for h in heads], xs)

    loop_out, stacked_out = model_loop(), model_stacked()
    max_diff = max((a.float() - b.float()).abs().max().item() for a, b in zip(loop_out, stacked_out))
    vectors = [x.flatten().tolist() for x in xs]
    requests = list(zip(uids, vectors))
    e2e_loop = lambda: [registry.predict(u, v) for u, v in requests]
    e2e_batched = lambda: registry.predict_many(requests)
    answers_equal = all(a["prediction"] == b["prediction"]
                        for a, b in zip(e2e_loop(), e2e_batched()))
    result = {"heads": n, "max_abs_diff": max_diff, "same_predictions_end_to_end": answers_equal,
              "rss_gb": round(rss_bytes() / 2**30, 2),
              "model": {"loop_rps": round(rate(model_loop, n, device, seconds)),
                        "stacked_rps": round(rate(model_stacked, n, device, seconds))},
              "end_to_end": {"loop_rps": round(rate(e2e_loop, n, device, seconds)),
                             "batched_rps": round(rate(e2e_batched, n, device, seconds))}}
    # the timed runs derived the banks' fused weights: check that path's answers too
    fused_diff = max((a.float() - b.float()).abs().max().item()
                     for a, b in zip(loop_out, model_stacked()))
    result["max_abs_diff"] = max(max_diff, fused_diff)
    for level in ("model", "end_to_end"):
        row = result[level]
        fast = row.get("stacked_rps", row.get("batched_rps"))
        row["speedup"] = round(fast / row["loop_rps"], 2)
    return result  # the registry and its banks go with this frame


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--heads", default="100,1000", help="comma-separated N values")
    p.add_argument("--seconds", type=float, default=2.0, help="time per measurement")
    args = p.parse_args()
    device = setup(args)
    results = [bench_n(int(n), device, args.seconds) for n in args.heads.split(",")]
    emit("many_users", args, device, {
        "targets": {"cpu": ">= 2.5x the loop at 100 heads",
                    "gpu": ">= 35x the loop and >= 150,000 requests/s at 1000 heads"},
        "results": results})


if __name__ == "__main__":
    main()
