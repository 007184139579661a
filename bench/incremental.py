"""Learning a new label without forgetting: incremental training vs full retraining vs
naive fine-tuning, on held-out intent utterances (made offline by tests/helpers/intent_data.py).

A head is trained on the stored examples of N old labels. Then k examples of a new label
are added and three copies of that head learn them:
  - incremental: train_head(incremental=True): the k new examples plus, each epoch, a fresh
    draw of old ones (replay_ratio per new one, default 2), from the current weights;
  - full: train_head(): every stored example (old and new), from the current weights;
  - naive: incremental with replay_ratio 0: the k new examples only.
Reported per k and per old-set size: held-out accuracy on the old labels and on the new
label, samples processed (examples per epoch x epochs) and seconds. All runs use the same
fixed number of epochs (no early stop) so their costs compare directly.

The child case (`children`, over several seeds): a shared head is trained from a
train_json file of the old labels; users' children (create_head(parent=...)) then learn
either a correction (k held-out utterances of old labels) or a new label (k examples):
  - incremental: the child's train_head(incremental=True), replaying the shared head's
    stored training data;
  - full: the child retrained on the parent's file plus its examples (train_json named);
  - naive: incremental with replay_ratio 0.
Reported: the parent's old-label accuracy and each method's old- and new-label held-out
accuracy, and per method the mean and worst drop of old-label accuracy from the parent's.
"""
from __future__ import annotations

import json
import os
import random
import statistics
import shutil
import tempfile
import time
from pathlib import Path

from common import emit, fixed_epochs_trainer, parser, setup
from helpers.intent_data import as_label_lists, make_split
from ph.config.schema import INCREMENTAL_DEFAULTS
from ph.heads.service import HeadRegistry

NEW_LABEL = "book_restaurant"


def head_config(epochs: int, device: str) -> dict:
    return {"Model": {"type": "PersonalizedHead",
                      "args": {"embedding_length": 256, "n_classes": 8, "ph_ff_dim": 256,
                               "ph_nhead": 4, "ph_nlayers": 1}},
            "Inference": {"device": device},
            "Trainer": fixed_epochs_trainer(epochs, device)}


def accuracy(registry: HeadRegistry, uuid: str, rows: list[dict]) -> float | None:
    if not rows:
        return None
    labels = registry.check_head(uuid)["labels"]
    predictions = registry.predict(uuid, [r["text"] for r in rows])
    named = [labels[p] if p < len(labels) else None for p in predictions]  # unused classes: wrong
    return round(sum(n == r["label"] for n, r in zip(named, rows)) / len(rows), 4)


def clone(registry: HeadRegistry, src: str, dst: str) -> None:
    """A copy of a trained head (weights, examples, high-water mark) under another uuid,
    so the three methods start from the very same head. (A benchmark shortcut: ph has no
    clone action.)"""
    store = registry.store
    shutil.copytree(store.head_dir(src), store.head_dir(dst))
    record = store.read(dst)
    store.write(dst, {**record, "uuid": dst})


def run(registry: HeadRegistry, train: list, held: list, old_per_label: int, new_counts: list,
        epochs: int, device: str, replay_ratio: float) -> list[dict]:
    rng = random.Random(0)
    old = [r for r in train if r["label"] != NEW_LABEL]
    by_label: dict = {}
    for r in old:
        by_label.setdefault(r["label"], []).append(r)
    old = [r for rows in by_label.values() for r in rows[:old_per_label]]
    new_pool = [r for r in train if r["label"] == NEW_LABEL]
    rng.shuffle(new_pool)
    held_old = [r for r in held if r["label"] != NEW_LABEL]
    held_new = [r for r in held if r["label"] == NEW_LABEL]

    base = f"base-{old_per_label}"
    registry.create_head(base, head_config(epochs, device))
    registry.add_examples(base, old)
    started = time.perf_counter()
    summary = registry.train(base)
    base_row = {"old_examples": len(old), "seconds": round(time.perf_counter() - started, 3),
                "samples": summary["n_train"] * summary["epochs_run"],
                "old_accuracy": accuracy(registry, base, held_old)}
    results = []
    for k in new_counts:
        new = new_pool[:k]
        row = {"old_examples": len(old), "new_examples": len(new), "base": base_row}
        for method in ("incremental", "full", "naive"):
            uuid = f"{method}-{old_per_label}-{k}"
            clone(registry, base, uuid)
            registry.add_examples(uuid, new)
            overrides = {"Trainer": {"incremental": {
                "replay_ratio": 0.0 if method == "naive" else replay_ratio}}}
            started = time.perf_counter()
            summary = registry.train(uuid, overrides, incremental=method != "full")
            row[method] = {"seconds": round(time.perf_counter() - started, 3),
                           "train_seconds": summary["seconds"],
                           "examples_per_epoch": summary["n_train"] + summary["n_valid"],
                           "samples": (summary["n_train"] + summary["n_valid"]) * summary["epochs_run"],
                           "old_accuracy": accuracy(registry, uuid, held_old),
                           "new_accuracy": accuracy(registry, uuid, held_new)}
            registry.delete_head(uuid)
        results.append(row)
    return results


def child_case(registry: HeadRegistry, work: Path, train: list, held: list, seed: int,
               k_correction: int, k_new: int, epochs: int, device: str,
               replay_ratio: float) -> dict:
    """One seed of the child case (see the module docstring)."""
    rng = random.Random(seed)
    old = [r for r in train if r["label"] != NEW_LABEL]
    new_rows = rng.sample([r for r in train if r["label"] == NEW_LABEL], k_new)
    held_new = [r for r in held if r["label"] == NEW_LABEL]
    (work / "parent.json").write_text(json.dumps(as_label_lists(old)))
    random.seed(seed)  # the shared head's initial weights
    parent = f"shared-{seed}"
    config = head_config(epochs, device)
    config["Trainer"]["dataloader"]["args"]["train_json"] = "parent.json"
    registry.create_head(parent, config)
    registry.train(parent)
    # corrections: held-out utterances the shared head gets wrong (then others, to k)
    held_old = [r for r in held if r["label"] != NEW_LABEL]
    rng.shuffle(held_old)
    labels = registry.check_head(parent)["labels"]
    answers = registry.predict(parent, [r["text"] for r in held_old])
    wrong = [r for r, a in zip(held_old, answers) if a >= len(labels) or labels[a] != r["label"]]
    corrections = (wrong + [r for r in held_old if r not in wrong])[:k_correction]
    held_old = [r for r in held_old if r not in corrections]
    out = {"seed": seed, "parent_old_accuracy": accuracy(registry, parent, held_old),
           "corrections_the_parent_got_wrong": sum(r in wrong for r in corrections)}
    for task, examples in (("correction", corrections), ("new_label", new_rows)):
        out[task] = {}
        for method in ("incremental", "full", "naive"):
            uuid = f"{method}-{task}-{seed}"
            registry.create_head(uuid, parent=parent)
            registry.add_examples(uuid, examples)
            trainer: dict = {"incremental": {
                "replay_ratio": 0.0 if method == "naive" else replay_ratio}}
            if method == "full":
                trainer = {"dataloader": {"args": {"train_json": "parent.json"}}}
            started = time.perf_counter()
            summary = registry.train(uuid, {"Trainer": trainer}, incremental=method != "full")
            out[task][method] = {
                "seconds": round(time.perf_counter() - started, 3),
                "samples": (summary["n_train"] + summary["n_valid"]) * summary["epochs_run"],
                "old_accuracy": accuracy(registry, uuid, held_old),
                "new_accuracy": accuracy(registry, uuid, held_new if task == "new_label"
                                         else corrections)}
            registry.delete_head(uuid)
    registry.delete_head(parent)
    return out


def drops(runs: list[dict]) -> dict:
    """Per task and method: mean and worst fall of old-label accuracy from the parent's."""
    out: dict = {}
    for task in ("correction", "new_label"):
        for method in ("incremental", "full", "naive"):
            fall = [r["parent_old_accuracy"] - r[task][method]["old_accuracy"] for r in runs]
            new = [r[task][method]["new_accuracy"] for r in runs]
            out.setdefault(task, {})[method] = {
                "old_drop_mean": round(statistics.fmean(fall), 4), "old_drop_worst": round(max(fall), 4),
                "new_accuracy_mean": round(statistics.fmean(new), 4)}
    return out


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--new", default="5,10,20,40", help="new-label example counts")
    p.add_argument("--old", default="20,40", help="old examples per label (one run each)")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--replay-ratio", type=float, default=INCREMENTAL_DEFAULTS["replay_ratio"],
                   help="old examples replayed per new one (Trainer.incremental.replay_ratio)")
    p.add_argument("--child-seeds", default="0,1,2,3,4",
                   help="seeds of the child case (empty: skip it)")
    p.add_argument("--child-k", default="5,15", help="corrections, new-label examples per child")
    args = p.parse_args()
    device = setup(args)
    random.seed(0)  # the heads' initial weights: the same figures on every run
    train, held = make_split(seed=0, per_intent=48, held_out_per_intent=30)
    work = Path(tempfile.mkdtemp(prefix="ph-incremental-"))
    try:
        registry = HeadRegistry(work / "heads")
        os.chdir(work)  # checkpoints land in work/saved
        results = []
        for old_per_label in (int(v) for v in args.old.split(",")):
            results += run(registry, train, held, old_per_label,
                           [int(v) for v in args.new.split(",")], args.epochs, str(device),
                           args.replay_ratio)
        k_correction, k_new = (int(v) for v in args.child_k.split(","))
        children = [child_case(registry, work, train, held, int(seed), k_correction, k_new,
                               args.epochs, str(device), args.replay_ratio)
                    for seed in args.child_seeds.split(",") if seed]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    emit("incremental", args, device, {
        "new_label": NEW_LABEL, "epochs": args.epochs, "replay_ratio": args.replay_ratio,
        "held_out": {"old": sum(r["label"] != NEW_LABEL for r in held),
                     "new": sum(r["label"] == NEW_LABEL for r in held)},
        "results": results,
        "children": {"corrections": k_correction, "new_label_examples": k_new, "runs": children,
                     "summary": drops(children) if children else None}})


if __name__ == "__main__":
    main()
