"""Training samples/s: ph's Trainer vs a minimal hand-written PyTorch loop.

Same default head (3.2M parameters), same encoded data, same optimizer (the seed's Adam,
built the way ph builds it), batch 32 and 256. `ph_fit` is ph as users run it (metrics,
monitor, and the seed's checkpointing: best model and a checkpoint every epoch);
`ph_epoch_loop` is ph's training loop alone. The hand loop runs bare, with the same
per-epoch checkpoint saved by torch.save, and with torch's default (unfused) Adam.
"""
from __future__ import annotations

import copy
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from common import emit, intent_texts, parser, setup, sync
from ph.config.schema import with_defaults
from ph.training.data import TensorBatches, TrainingData
from ph.modeling.engine import make_model
from ph.training.metrics import accuracy, top_k_acc
from ph.modeling.processors import HashingEncoder
from ph.training.trainer import LoopSettings, Trainer, build_optimizer


def hand_loop(model, x, y, batch_size, epochs, optimizer, device, save_to: Path | None = None):
    """What a user writes by hand: shuffle, forward, loss, backward, step (and, with
    `save_to`, torch.save of model and optimizer every epoch, as pytorch-template does)."""
    model.train()
    gen = torch.Generator().manual_seed(0)
    for epoch in range(epochs):
        if save_to is not None and epoch:
            torch.save({"state_dict": model.state_dict(), "optimizer": optimizer.state_dict()},
                       save_to / f"checkpoint-epoch{epoch}.pt")
        order = torch.randperm(len(x), generator=gen)
        for start in range(0, len(x), batch_size):
            idx = order[start:start + batch_size]
            xb, yb = x[idx].to(device), y[idx].to(device)
            optimizer.zero_grad(set_to_none=True)
            loss = F.nll_loss(model(xb), yb)
            loss.backward()
            optimizer.step()
    if save_to is not None:
        torch.save({"state_dict": model.state_dict(), "optimizer": optimizer.state_dict()},
                   save_to / f"checkpoint-epoch{epochs}.pt")
    sync(device)


def ph_trainer(model, x, y, batch_size, epochs, optimizer, device, out: Path, save_period: int):
    data = TrainingData(TensorBatches(x, y, batch_size, True, torch.Generator().manual_seed(0)),
                        None, len(x), 0)
    settings = LoopSettings(epochs, 0, "min loss", save_period, False, 0, None, 3)
    trainer = Trainer(model, F.nll_loss, {"accuracy": accuracy, "top_k_acc": top_k_acc},
                      optimizer, None, data, settings, device, out / "models", out / "log")
    return trainer


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--samples", type=int, default=4096)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-sizes", default="32,256")
    args = p.parse_args()
    device = setup(args)
    config = with_defaults({})
    texts, labels = intent_texts(args.samples)
    names = sorted(set(labels))
    x = HashingEncoder(768).encode(texts).unsqueeze(1)
    y = torch.tensor([names.index(v) for v in labels])
    base = make_model(config, None, seed=0)
    results = {}
    for batch_size in [int(b) for b in args.batch_sizes.split(",")]:
        row = {}
        runs = {
            "hand_loop": lambda m, o, d: hand_loop(m, x, y, batch_size, args.epochs, o, device),
            "hand_loop_default_adam": lambda m, o, d: hand_loop(m, x, y, batch_size, args.epochs, o, device),
            "hand_loop_with_checkpoints": lambda m, o, d: hand_loop(m, x, y, batch_size, args.epochs, o,
                                                                    device, d),
            "ph_epoch_loop": lambda m, o, d: [ph_trainer(m, x, y, batch_size, args.epochs, o, device, d, 10**6)
                                              .train_epoch(e) for e in range(1, args.epochs + 1)],
            "ph_fit": lambda m, o, d: ph_trainer(m, x, y, batch_size, args.epochs, o, device, d, 1).fit(),
        }
        for name, run in runs.items():
            best = float("inf")
            for _ in range(2):  # best of two: the machine is shared
                model = copy.deepcopy(base).to(device)
                spec = config["Trainer"]["optimizer"]
                if name == "hand_loop_default_adam":
                    optimizer = torch.optim.Adam(model.parameters(), **spec["args"])
                else:
                    optimizer = build_optimizer(spec, model.parameters())
                with tempfile.TemporaryDirectory() as tmp:
                    sync(device)
                    start = time.perf_counter()
                    run(model, optimizer, Path(tmp))
                    sync(device)
                    best = min(best, time.perf_counter() - start)
            row[name] = {"seconds": round(best, 3),
                         "samples_per_s": round(args.samples * args.epochs / best, 1)}
        hand = row["hand_loop"]["samples_per_s"]
        row["ratio_ph_fit_vs_hand_loop"] = round(row["ph_fit"]["samples_per_s"] / hand, 3)
        row["ratio_ph_fit_vs_hand_loop_with_checkpoints"] = round(
            row["ph_fit"]["samples_per_s"] / row["hand_loop_with_checkpoints"]["samples_per_s"], 3)
        row["ratio_ph_epoch_loop_vs_hand_loop"] = round(row["ph_epoch_loop"]["samples_per_s"] / hand, 3)
        row["ratio_ph_fit_vs_default_adam_loop"] = round(
            row["ph_fit"]["samples_per_s"] / row["hand_loop_default_adam"]["samples_per_s"], 3)
        results[f"batch_{batch_size}"] = row
    emit("train_throughput", args, device, {"samples": args.samples, "epochs": args.epochs,
                                            "target": "ph >= 0.9x the hand-written loop",
                                            "results": results})


if __name__ == "__main__":
    main()
