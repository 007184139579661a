"""Trainer: the epoch loop with a monitored metric, early stop and checkpoints
(pytorch-template's BaseTrainer), and `run_training`, which builds one from a config.

Training works on a copy of the head's model; the head's weights change only when the
caller takes the returned best weights, so a failed or stopped run changes nothing.
"""
from __future__ import annotations

import contextlib
import copy
import inspect
import logging
import math
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn

from . import metrics as _metrics  # noqa: F401  (register losses and metrics)
from ..config.components import DATALOADERS, LOSSES, METRICS, ComponentRegistry, build
from ..config.schema import parse_monitor
from .data import DataContext, TrainingData
from .. import metrics as process_metrics  # Prometheus figures (ph.metrics)
from ..errors import PHError, TrainingError
from .checkpoints import CheckpointWriter, snapshot
from .progress import RunProgress

log = logging.getLogger("ph.training")
OPTIMIZERS = ComponentRegistry("optimizer")
SCHEDULERS = ComponentRegistry("LR scheduler")
for _name, _cls in sorted(vars(torch.optim).items()):
    if (isinstance(_cls, type) and issubclass(_cls, torch.optim.Optimizer)
            and _cls is not torch.optim.Optimizer):
        OPTIMIZERS.add(_name, _cls)
for _name, _cls in sorted(vars(torch.optim.lr_scheduler).items()):
    if (isinstance(_cls, type) and issubclass(_cls, (torch.optim.lr_scheduler.LRScheduler,
                                                     torch.optim.lr_scheduler.ReduceLROnPlateau))
            and _cls not in (torch.optim.lr_scheduler.LRScheduler,
                             getattr(torch.optim.lr_scheduler, "_LRScheduler", None))):
        SCHEDULERS.add(_name, _cls)
_tensorboard_warned = False
_cpu_noted = False


class TrainingStopped(TrainingError):
    """The run was asked to stop; nothing it did reached the head."""


@dataclass
class LoopSettings:
    """Trainer.trainer, checked: how long to train, what to monitor, where to save."""

    epochs: int
    early_stop: int
    monitor: str
    save_period: int
    tensorboard: bool
    verbosity: int
    resume: str | None
    keep_checkpoints: int = 0

    @classmethod
    def from_config(cls, loop: Mapping) -> "LoopSettings":
        return cls(loop["epochs"], loop["early_stop"], loop["monitor"], loop["save_period"],
                   loop["tensorboard"], loop["verbosity"], loop.get("resume") or None,
                   loop.get("keep_checkpoints", 0))


class Trainer:
    """Fits a model: `fit` runs epochs; `train_epoch`/`valid_epoch`/`train_step` do the work."""

    # best_model.pt written at each improving epoch (False: once, at the end of the run;
    # a killed run leaves no best file, but its periodic checkpoints still resume it)
    best_each_epoch = True

    def __init__(self, model: nn.Module, criterion: Callable, metrics: dict[str, Callable],
                 optimizer: torch.optim.Optimizer, scheduler: Any, data: TrainingData,
                 settings: LoopSettings, device: torch.device, checkpoint_dir: Path, log_dir: Path,
                 checkpoint_extra: dict | None = None, stop: threading.Event | None = None,
                 on_epoch: Callable[[dict], None] | None = None):
        self.model, self.criterion, self.metrics = model, criterion, metrics
        self.optimizer, self.scheduler, self.data = optimizer, scheduler, data
        self.settings, self.device = settings, device
        self.checkpoint_dir, self.log_dir = checkpoint_dir, log_dir
        self.extra = checkpoint_extra or {}
        self.stop, self.on_epoch = stop, on_epoch
        mode, metric = parse_monitor(settings.monitor)
        if mode != "off" and data.valid is None and metric.startswith("val_"):
            log.warning("no validation data: monitoring %s instead of %s", metric[4:], metric)
            metric = metric[4:]
        self.mode, self.monitor_metric = mode, metric
        self.best_value = math.inf if mode == "min" else -math.inf
        self.best_state: dict | None = None
        self._deferred_best: tuple[dict, int] | None = None
        self.start_epoch = 1
        self.writer = CheckpointWriter(checkpoint_dir, settings.keep_checkpoints)
        self.progress: RunProgress | None = None  # fit's (train_epoch alone reports none)

    def fit(self) -> dict:
        """Run the epochs; returns a JSON-able summary (best epoch and value, final metrics)."""
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        writer = self._tensorboard()
        best_epoch, not_improved, history, started = 0, 0, [], time.time()
        if self.settings.resume:
            self._resume(Path(self.settings.resume))
        epoch = self.start_epoch - 1
        self.progress = RunProgress(self.settings.epochs, self.start_epoch, _length(self.data.train),
                                    getattr(self.on_epoch, "progress", None),
                                    self.checkpoint_dir.name)
        try:
            for epoch in range(self.start_epoch, self.settings.epochs + 1):
                record = {"epoch": epoch, **self.train_epoch(epoch)}
                if self.data.valid is not None:
                    record.update({f"val_{k}": v for k, v in self.valid_epoch().items()})
                self._step_scheduler(record)
                improved = self._improved(record)
                if improved:
                    best_epoch, not_improved = epoch, 0
                    self.best_state = self._state_dict()
                else:
                    not_improved += 1
                self._save_epoch(epoch, improved)
                history.append(record)
                self._report(record, improved, writer)
                if 0 < self.settings.early_stop <= not_improved:
                    log.info("no improvement of %s for %d epochs: stopping early",
                             self.monitor_metric, not_improved)
                    break
            if self._deferred_best is not None:
                self.writer.submit(*self._deferred_best, periodic=False, best=True)
            self.writer.wait()  # every file is on disk when fit returns
        finally:
            self.progress.close()
            if writer is not None:
                writer.close()
            with contextlib.suppress(TrainingError):
                self.writer.wait()
        final = history[-1] if history else {}
        return {"epochs_run": len(history), "last_epoch": epoch, "best_epoch": best_epoch,
                "monitor": self.settings.monitor if self.mode != "off" else "off",
                "monitored": self.monitor_metric or None,
                "best_value": None if self.mode == "off" else self.best_value,
                "final": final, "stopped_early": epoch < self.settings.epochs,
                "n_train": self.data.n_train, "n_valid": self.data.n_valid,
                "weights": str(self.checkpoint_dir / "best_model.pt"),
                "seconds": round(time.time() - started, 3)}

    def train_epoch(self, epoch: int) -> dict:
        self.model.train()
        totals: dict[str, float] = {}
        count = 0
        for index, (x, y) in enumerate(self.data.train, 1):
            self._check_stop()
            loss, output = self.train_step(x.to(self.device), y.to(self.device))
            if not math.isfinite(loss):
                raise TrainingError(f"the loss became {loss} at epoch {epoch}; lower "
                                    "Trainer.optimizer.args.lr or check the data")
            self._accumulate(totals, loss, output.detach(), y.to(self.device), len(x))
            count += len(x)
            if self.progress is not None:
                self.progress.batch(epoch, index, len(x))
        return {k: v / max(count, 1) for k, v in totals.items()}

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[float, torch.Tensor]:
        self.optimizer.zero_grad(set_to_none=True)
        output = self.model(x)
        loss = self.criterion(output, y)
        loss.backward()
        self.optimizer.step()
        return loss.item(), output

    def evaluate(self, x: torch.Tensor) -> torch.Tensor:
        """The model's output on a validation batch."""
        return self.model(x)

    def valid_epoch(self) -> dict:
        self.model.eval()
        totals: dict[str, float] = {}
        count = 0
        with torch.no_grad():
            for x, y in self.data.valid:
                x, y = x.to(self.device), y.to(self.device)
                output = self.evaluate(x)
                self._accumulate(totals, self.criterion(output, y).item(), output, y, len(x))
                count += len(x)
        return {k: v / max(count, 1) for k, v in totals.items()}

    def _accumulate(self, totals: dict, loss: float, output, y, n: int) -> None:
        totals["loss"] = totals.get("loss", 0.0) + loss * n
        for name, fn in self.metrics.items():
            totals[name] = totals.get(name, 0.0) + fn(output, y) * n

    def _improved(self, record: dict) -> bool:
        if self.mode == "off":
            return True  # the last epoch is the best one there is
        if self.monitor_metric not in record:
            raise TrainingError(f"Trainer.trainer.monitor: '{self.monitor_metric}' is not logged; "
                                f"logged metrics: {', '.join(k for k in record if k != 'epoch')}")
        value = record[self.monitor_metric]
        better = value < self.best_value if self.mode == "min" else value > self.best_value
        if better:
            self.best_value = value
        return better

    def _step_scheduler(self, record: dict) -> None:
        if self.scheduler is None:
            return
        if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            self.scheduler.step(record.get(self.monitor_metric or "loss", record["loss"]))
        else:
            self.scheduler.step()

    def _check_stop(self) -> None:
        if self.stop is not None and self.stop.is_set():
            raise TrainingStopped("training was stopped before it finished; the head keeps its "
                                  "previous weights")

    def _state_dict(self) -> dict:
        model = self.model.module if isinstance(self.model, nn.DataParallel) else self.model
        return snapshot(model.state_dict())

    def _save_epoch(self, epoch: int, improved: bool) -> None:
        """best_model.pt when improved, checkpoint-epochN.pt every save_period epochs."""
        periodic = epoch % self.settings.save_period == 0
        if not (periodic or improved):
            return
        state = {"epoch": epoch, "state_dict": self.best_state if improved else self._state_dict(),
                 "optimizer": snapshot(self.optimizer.state_dict()),
                 "lr_scheduler": snapshot(self.scheduler.state_dict()) if self.scheduler else None,
                 "monitor_best": self.best_value, **self.extra}
        if periodic or self.best_each_epoch:
            self.writer.submit(state, epoch, periodic, improved)
            self._deferred_best = None
        else:
            self._deferred_best = (state, epoch)

    def _resume(self, path: Path) -> None:
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
            model = self.model.module if isinstance(self.model, nn.DataParallel) else self.model
            model.load_state_dict(checkpoint["state_dict"])
            if checkpoint.get("optimizer") is not None:
                self.optimizer.load_state_dict(checkpoint["optimizer"])
            else:  # best_model.pt keeps weights only
                log.info("%s has no optimizer state (only checkpoint-epochN.pt files do): the "
                         "optimizer starts afresh from its weights", path)
            if self.scheduler is not None and checkpoint.get("lr_scheduler"):
                self.scheduler.load_state_dict(checkpoint["lr_scheduler"])
        except Exception as exc:
            raise TrainingError(f"Trainer.trainer.resume: cannot resume from '{path}' "
                                f"({type(exc).__name__}: {str(exc)[:200]}); give a checkpoint "
                                "saved by a run of this same config") from None
        self.start_epoch = int(checkpoint["epoch"]) + 1
        self.best_value = float(checkpoint.get("monitor_best", self.best_value))
        log.info("resumed from %s at epoch %d", path, self.start_epoch)

    def _report(self, record: dict, improved: bool, writer) -> None:
        line = "  ".join(f"{k}={v:.5g}" if isinstance(v, float) else f"{k}={v}"
                         for k, v in record.items()) + ("  *best*" if improved else "")
        with open(self.log_dir / "train.log", "a", encoding="utf-8") as fh:
            fh.write(line + "\n")
        if self.settings.verbosity >= 1:
            log.info(line)
        if writer is not None:
            for key, value in record.items():
                if key != "epoch":
                    writer.add_scalar(key, value, record["epoch"])
        process_metrics.training_epoch(self.data.n_train)
        if self.on_epoch is not None:
            self.on_epoch(record)

    def _tensorboard(self):
        global _tensorboard_warned
        if not self.settings.tensorboard:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            if not _tensorboard_warned:
                log.warning("tensorboard is not installed: no event files are written "
                            "(pip install tensorboard, or set Trainer.trainer.tensorboard: false)")
                _tensorboard_warned = True
            return None
        return SummaryWriter(log_dir=str(self.log_dir))


def _length(batches: Any) -> int | None:
    try:
        return len(batches)
    except TypeError:  # a user DataLoader over an IterableDataset
        return None


def training_device(n_gpu: int) -> torch.device:
    """CPU when n_gpu is 0 or no GPU is present, else the first GPU. n_gpu: 1 is the
    seed config's default, so a machine without a GPU says so once, as information: a
    warning on every CPU run would be noise (Inference.device: cuda is where a GPU is
    demanded, and refused clearly when there is none)."""
    global _cpu_noted
    if n_gpu <= 0:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        if not _cpu_noted:
            log.info("Trainer.n_gpu=%d but this machine has no GPU: training on the CPU", n_gpu)
            _cpu_noted = True
        return torch.device("cpu")
    return torch.device("cuda")


def build_optimizer(spec: Mapping, params) -> torch.optim.Optimizer:
    """The optimizer a spec names; its fused kernel when it has one and the spec does not
    say otherwise (same update, about 3x faster steps for the default head on a CPU)."""
    params = list(params)
    cls = OPTIMIZERS.get(spec["type"], "Trainer.optimizer.type")
    args = spec.get("args") or {}
    if "fused" in inspect.signature(cls).parameters and "fused" not in args and "foreach" not in args:
        try:
            return cls(params, **args, fused=True)
        except (RuntimeError, ValueError, TypeError):
            pass  # not supported for these parameters: build it plainly (and report errors)
    return build(OPTIMIZERS, spec, "Trainer.optimizer", None, injected={"params": params})


def build_scheduler(spec: Mapping | None, optimizer) -> Any:
    if not spec:
        return None
    return build(SCHEDULERS, spec, "Trainer.lr_scheduler", None, injected={"optimizer": optimizer})


def build_loader(spec: Mapping, context: DataContext):
    return build(DATALOADERS, spec, "Trainer.dataloader", context.code,
                 injected={"context": context})


def run_training(config: Mapping, model: nn.Module, context: DataContext, run_name: str,
                 resolve_path: Callable[[str, str], Path], stop: threading.Event | None = None,
                 on_epoch: Callable[[dict], None] | None = None) -> tuple[dict, dict, list | None]:
    """Train a copy of `model` with the config's Trainer section.

    Returns:
        (summary, best weights as a CPU state dict, label map of the data). The weights are
        None when a resumed run never beat the checkpoint's best value.
    Raises:
        PHError: bad data or config (before any epoch), TrainingError during training.
    """
    with torch.random.fork_rng(devices=[]):
        trainer = prepare_training(config, model, context, run_name, resolve_path, stop, on_epoch)
        return fit(trainer)


def prepare_training(config: Mapping, model: nn.Module, context: DataContext, run_name: str,
                     resolve_path: Callable[[str, str], Path], stop: threading.Event | None = None,
                     on_epoch: Callable[[dict], None] | None = None,
                     trainer_class: type[Trainer] = Trainer) -> Trainer:
    """A Trainer for a copy of `model`, its data loaded (seeds the global RNG: call it
    inside torch.random.fork_rng)."""
    trainer_cfg = config["Trainer"]
    loop = LoopSettings.from_config(trainer_cfg["trainer"])
    if loop.resume:  # a path like any other: the caller's policy decides if it may be read
        loop.resume = str(resolve_path(loop.resume, "Trainer.trainer.resume"))
    torch.manual_seed(trainer_cfg["seed"])
    data = build_loader(trainer_cfg["dataloader"], context).load()
    device = training_device(trainer_cfg["n_gpu"])
    net = copy.deepcopy(model).to(device=device, dtype=torch.float32)
    gpus = min(trainer_cfg["n_gpu"], torch.cuda.device_count())
    if gpus > 1:
        net = nn.DataParallel(net, device_ids=list(range(gpus)))
    optimizer = build_optimizer(trainer_cfg["optimizer"], net.parameters())
    scheduler = build_scheduler(trainer_cfg["lr_scheduler"], optimizer)
    save_dir = resolve_path(trainer_cfg["trainer"]["save_dir"], "Trainer.trainer.save_dir")
    name = trainer_cfg["name"]
    extra = {"arch": config["Model"]["type"], "config": copy.deepcopy(dict(config)),
             "labels": data.labels}
    return trainer_class(net, LOSSES.get(trainer_cfg["loss"], "Trainer.loss"),
                         {m: METRICS.get(m, "Trainer.metrics") for m in trainer_cfg["metrics"]},
                         optimizer, scheduler, data, loop, device,
                         save_dir / "models" / name / run_name, save_dir / "log" / name / run_name,
                         extra, stop, on_epoch)


def fit(trainer: Trainer) -> tuple[dict, dict | None, list | None]:
    """Run a prepared Trainer: (summary, best weights or None, label map)."""
    try:
        summary = trainer.fit()
    except PHError:
        raise
    except Exception as exc:
        raise TrainingError(f"training failed: {type(exc).__name__}: {str(exc)[:300]}; the "
                            "head keeps its previous weights") from exc
    return summary, trainer.best_state, trainer.data.labels  # best_state None: no epoch improved
