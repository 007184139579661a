"""Trainer semantics (pytorch-template): monitor, early stop, checkpoints, resume, logs."""
from __future__ import annotations

import logging
import threading

import pytest
import torch

from helpers.heads import small_config, write_json
from ph.config.schema import deep_merge
from ph.training.data import DataContext
from ph.modeling.engine import build_processors, make_model
from ph.errors import TrainingError
from ph.training.trainer import TrainingStopped, run_training, training_device
from ph.heads.validate import validate_config


def train(workdir, config_overrides=None, stop=None, on_epoch=None, **loop):
    config = validate_config(deep_merge(small_config(**loop), config_overrides or {}))
    pre = build_processors(config, None)[0]
    context = DataContext(preprocessor=pre, n_classes=config["Model"]["args"].get("n_classes"),
                          seed=config["Trainer"]["seed"],
                          resolve_path=lambda p, key: workdir / p)
    model = make_model(config, None, seed=1)
    return run_training(config, model, context, "run", lambda p, key: workdir / p, stop, on_epoch)


def run_dir(workdir, kind="models"):
    return workdir / "saved" / kind / "PersonalizedHeadTrainer" / "run"


def test_default_head_learns_intents_and_generalises_to_held_out_utterances(registry, train_json,
                                                                            intents):
    uid = registry.create_head("learner", {"Trainer": {
        "n_gpu": 0, "trainer": {"epochs": 12, "save_period": 100, "tensorboard": False}}})
    summary = registry.train(uid)
    held_out = intents[1]
    labels = registry.check_head(uid)["labels"]
    predictions = registry.predict(uid, [r["text"] for r in held_out])
    accuracy = sum(labels[p] == r["label"] for p, r in zip(predictions, held_out)) / len(held_out)
    assert accuracy >= 0.9, f"held-out accuracy {accuracy:.2f}"
    assert summary["final"]["val_accuracy"] >= 0.9


def test_checkpoints_and_best_model_load_with_weights_only(train_json, workdir):
    summary, best, labels = train(workdir, save_period=1, keep_checkpoints=0)
    models = run_dir(workdir)
    assert sorted(p.name for p in models.iterdir()) == [
        "best_model.pt", "checkpoint-epoch1.pt", "checkpoint-epoch2.pt", "checkpoint-epoch3.pt"]
    checkpoint = torch.load(models / "checkpoint-epoch3.pt", weights_only=True)
    assert {"epoch", "state_dict", "optimizer", "lr_scheduler", "monitor_best", "config",
            "labels", "arch"} <= set(checkpoint)
    assert checkpoint["epoch"] == 3 and checkpoint["labels"] == labels
    best_file = torch.load(models / "best_model.pt", weights_only=True)
    assert best_file["epoch"] == summary["best_epoch"]
    assert all(torch.equal(best_file["state_dict"][k], best[k]) for k in best)
    assert summary["weights"] == str(models / "best_model.pt")


def test_keep_checkpoints_prunes_older_periodic_checkpoints(train_json, workdir):
    train(workdir, epochs=5, save_period=1, keep_checkpoints=2)
    names = sorted(p.name for p in run_dir(workdir).glob("checkpoint-*"))
    assert names == ["checkpoint-epoch4.pt", "checkpoint-epoch5.pt"]


def test_early_stop_ends_training_after_epochs_without_improvement(train_json, workdir):
    records = []
    summary, _, _ = train(workdir, on_epoch=records.append, epochs=60, early_stop=2,
                          monitor="max val_accuracy")
    assert summary["stopped_early"]
    assert summary["epochs_run"] == summary["best_epoch"] + 2 < 60
    best = max(records, key=lambda r: r["val_accuracy"])  # the first epoch at the maximum
    assert summary["best_epoch"] == best["epoch"] and summary["best_value"] == best["val_accuracy"]


def test_min_monitor_picks_the_epoch_with_the_lowest_value(train_json, workdir):
    records = []
    summary, _, _ = train(workdir, on_epoch=records.append, epochs=6, monitor="min val_loss")
    best = min(records, key=lambda r: r["val_loss"])
    assert summary["best_epoch"] == best["epoch"] and summary["best_value"] == best["val_loss"]


def test_save_period_writes_a_checkpoint_every_nth_epoch_only(train_json, workdir):
    train(workdir, epochs=5, save_period=2, keep_checkpoints=0)
    names = sorted(p.name for p in run_dir(workdir).glob("checkpoint-*"))
    assert names == ["checkpoint-epoch2.pt", "checkpoint-epoch4.pt"]


def test_monitor_off_keeps_the_last_epoch_as_best(train_json, workdir):
    summary, _, _ = train(workdir, monitor="off")
    assert summary["best_epoch"] == 3 and summary["best_value"] is None
    assert (run_dir(workdir) / "best_model.pt").is_file()


def test_without_validation_data_monitors_training_loss_and_says_so(train_json, workdir, caplog):
    with caplog.at_level(logging.WARNING, logger="ph.training"):
        summary, _, _ = train(workdir, {"Trainer": {"dataloader": {"args": {"validation_split": 0}}}})
    assert "monitoring loss instead of val_loss" in caplog.text
    assert summary["monitored"] == "loss" and summary["n_valid"] == 0
    assert summary["best_value"] == min(summary["best_value"], summary["final"]["loss"])
    assert (run_dir(workdir) / "best_model.pt").is_file()


def test_metrics_are_logged_for_training_and_validation_every_epoch(train_json, workdir):
    records = []
    train(workdir, on_epoch=records.append)
    assert [r["epoch"] for r in records] == [1, 2, 3]
    for record in records:
        assert {"loss", "accuracy", "top_k_acc", "val_loss", "val_accuracy", "val_top_k_acc"} <= set(record)
        assert 0.0 <= record["val_accuracy"] <= 1.0
    log_lines = (run_dir(workdir, "log") / "train.log").read_text().splitlines()
    assert len(log_lines) == 3 and log_lines[0].startswith("epoch=1")


def test_scheduler_steps_once_per_epoch(train_json, workdir):
    train(workdir, {"Trainer": {"lr_scheduler": {"type": "StepLR", "args": {"step_size": 1, "gamma": 0.5}},
                                "optimizer": {"args": {"lr": 0.008}}}}, save_period=3)
    checkpoint = torch.load(run_dir(workdir) / "checkpoint-epoch3.pt", weights_only=True)
    assert checkpoint["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.001)


def test_resume_continues_after_the_checkpoint_epoch_from_its_weights(train_json, workdir):
    first = []
    train(workdir, on_epoch=first.append, epochs=2, save_period=1)
    resume = str(run_dir(workdir) / "checkpoint-epoch2.pt")
    resumed = []
    summary, _, _ = train(workdir, on_epoch=resumed.append, epochs=4, resume=resume)
    assert summary["epochs_run"] == 2 and summary["last_epoch"] == 4
    assert [r["epoch"] for r in resumed] == [3, 4]
    # it goes on from the trained weights, not from scratch
    assert resumed[0]["loss"] < 0.7 * first[0]["loss"]


def test_resume_from_a_missing_checkpoint_is_a_clear_error(train_json, workdir):
    with pytest.raises(TrainingError, match="cannot resume from"):
        train(workdir, resume=str(workdir / "nope.pt"))


def test_tensorboard_event_files_are_written_only_when_enabled(train_json, workdir):
    train(workdir, tensorboard=False)
    assert sorted(p.name for p in run_dir(workdir, "log").iterdir()) == ["train.log"]
    train(workdir, tensorboard=True)
    assert list(run_dir(workdir, "log").glob("events.out.tfevents.*"))


def test_diverging_loss_stops_with_a_training_error(train_json, workdir):
    with pytest.raises(TrainingError, match="lower Trainer.optimizer.args.lr"):
        train(workdir, {"Trainer": {"optimizer": {"type": "SGD", "args": {"lr": 1e38}},
                                    "lr_scheduler": None}})


def test_stop_event_interrupts_training_before_new_weights_exist(train_json, workdir):
    stop = threading.Event()
    stop.set()
    with pytest.raises(TrainingStopped):
        train(workdir, stop=stop)
    assert not (run_dir(workdir) / "best_model.pt").exists()


def test_n_gpu_falls_back_to_the_cpu_without_a_gpu(caplog):
    if torch.cuda.is_available():
        assert training_device(1).type == "cuda"
        return
    from ph.training import trainer
    trainer._cpu_noted = False
    with caplog.at_level(logging.INFO, logger="ph.training"):
        assert training_device(1).type == "cpu"
        assert training_device(1).type == "cpu"
    noted = [r for r in caplog.records if "has no GPU" in r.getMessage()]
    assert len(noted) == 1 and noted[0].levelno == logging.INFO  # once, and not a warning
    assert training_device(0).type == "cpu"


def test_vector_labels_train_a_vector_to_vector_head(workdir):
    rng = torch.Generator().manual_seed(0)
    x = torch.randn(64, 8, generator=rng)
    write_json(workdir / "v2v.json", [{"embedding": a.tolist(), "label": (a * 2).tolist()} for a in x])
    config = {"Inference": {"preprocess": {"type": "V2VPreProcessor"},
                            "postprocess": {"type": "V2VPostProcessor"}},
              "Model": {"type": "PHVector2Vector", "args": {"input_dim": 8, "output_dim": 8,
                                                            "hidden_dim": 32, "dropout": 0.0}},
              "Trainer": {"loss": "mse_loss", "metrics": ["mse", "mae"],
                          "optimizer": {"args": {"lr": 0.01}},
                          "dataloader": {"args": {"train_json": "v2v.json"}}}}
    summary, _, labels = train(workdir, config, epochs=40)
    assert labels is None
    baseline = float((2 * x).pow(2).mean())  # mse of always answering zeros
    assert summary["final"]["val_mse"] < 0.1 * baseline


def test_a_new_run_prunes_only_its_own_checkpoints(train_json, workdir):
    train(workdir, epochs=5, save_period=1, keep_checkpoints=2)
    train(workdir, epochs=3, save_period=1, keep_checkpoints=2)
    names = sorted(p.name for p in run_dir(workdir).glob("checkpoint-*"))
    assert names == ["checkpoint-epoch2.pt", "checkpoint-epoch3.pt",  # this run's newest two
                     "checkpoint-epoch4.pt", "checkpoint-epoch5.pt"]  # the earlier run's, untouched
    assert torch.load(run_dir(workdir) / "best_model.pt", weights_only=True)["epoch"] <= 3


# --- on a CUDA device (skipped where there is none) ---------------------------------------------

@pytest.mark.gpu
def test_training_with_n_gpu_1_runs_on_cuda_and_the_weights_come_back_on_the_cpu(train_json, workdir):
    assert training_device(1).type == "cuda"
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    summary, best, labels = train(workdir, {"Trainer": {"n_gpu": 1}})
    assert torch.cuda.max_memory_allocated() > before  # the model, its batches, the optimizer
    assert summary["epochs_run"] == 3 and best is not None and labels
    assert all(t.device.type == "cpu" for t in best.values())
    saved = torch.load(run_dir(workdir) / "best_model.pt", weights_only=True)
    assert all(t.device.type == "cpu" for t in saved["state_dict"].values())
    assert all(torch.equal(saved["state_dict"][k], best[k]) for k in best)
