"""Helpers shared by the benchmarks: timing, percentiles, data, JSON output."""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # helpers: the offline intent data, the test servers


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--out", default="", help="also write the JSON result to this file")
    return p


def setup(args) -> torch.device:
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: no GPU here")
    return device


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, repeat: int, device: torch.device, warmup: int = 5) -> list[float]:
    """Seconds per call, `repeat` calls after `warmup`."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return times


def pct(times: list[float], q: float) -> float:
    ordered = sorted(times)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def latency_ms(times: list[float]) -> dict:
    return {"p50_ms": round(pct(times, 50) * 1e3, 4), "p99_ms": round(pct(times, 99) * 1e3, 4),
            "mean_ms": round(statistics.fmean(times) * 1e3, 4), "n": len(times)}


def rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    """Peak resident memory of this process image (VmHWM: unlike ru_maxrss, it does not
    carry the parent's peak over a fork and exec)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def machine(device: torch.device) -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__,
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "device": str(device)}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def emit(name: str, args, device: torch.device, results: dict) -> dict:
    report = {"benchmark": name, "machine": machine(device), **results}
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
    return report


def intent_texts(n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """n (text, label) pairs from the offline intent templates."""
    from helpers.intent_data import make_split
    train, held = make_split(seed=seed, per_intent=max(8, n // 6 + 1))
    rows = (train + held) * (n // max(1, len(train + held)) + 1)
    return [r["text"] for r in rows[:n]], [r["label"] for r in rows[:n]]


def fixed_epochs_trainer(epochs: int, device: str) -> dict:
    """The learning benchmarks' Trainer: a fixed number of epochs (no early stop, no
    schedule), batch 16, 20% validation, no logs or periodic checkpoints."""
    return {"n_gpu": 1 if device.startswith("cuda") else 0,
            "dataloader": {"args": {"batch_size": 16, "num_workers": 0, "validation_split": 0.2}},
            "lr_scheduler": None,
            "trainer": {"epochs": epochs, "early_stop": 0, "save_period": 10_000,
                        "tensorboard": False, "verbosity": 0}}
