"""Many users' trainings at once, in lockstep: each round, one joint forward and backward
over every user's batch (for add-ins: one pass of their shared parent).

Each user keeps its own Trainer (its data, optimizer, schedule, validation, early stop,
checkpoints), running in a thread of its own. Only its steps are shared: a step waits
until every running user has a batch ready (or has finished), then one thread runs the
round: `joint(users, x, counts)` computes every user's rows with that user's own model
(ph.modeling.addins.joint_addin_forward stacks the users' add-ins over one parent
pass), and the sum of the users' losses is backpropagated. A user's loss depends on its
own parameters alone, so each user's gradient is the gradient its own run would get,
and its own optimizer steps it: with the same seed a user's result equals its run alone
up to float rounding (the batches come from seeded generators, so no global random state
is shared).

A user whose step fails alone (a non-finite loss, a stop) leaves the round; a round
that fails as a whole is run again user by user, so one user's bad data never fails
another's training.
"""
from __future__ import annotations

import threading
from typing import Callable

import torch
from torch import nn

from .trainer import Trainer, fit


Joint = Callable[[list[int], torch.Tensor, list[int]], torch.Tensor]


class Lockstep:
    """The shared step of `models`: `joint(users, x, counts)` is the output of
    models[users[k]] on the k-th run of counts[k] rows of x, for every k at once."""

    def __init__(self, models: list[nn.Module], joint: Joint):
        self.models, self.joint = models, joint
        self._cond = threading.Condition()
        self._waiting: dict[int, tuple] = {}
        self._results: dict[int, object] = {}
        self._live = set(range(len(models)))
        self._running = False
        self.rounds = 0

    def step(self, i: int, x: torch.Tensor, y: torch.Tensor | None,
             criterion: Callable | None) -> tuple[torch.Tensor | None, torch.Tensor]:
        """User i's forward and backward (its gradients accumulate in its own add-in);
        returns (its loss, its output). Without a criterion, the forward alone (its
        validation). Blocks until the round with it has run."""
        with self._cond:
            self._waiting[i] = (x, y, criterion)
            while i not in self._results:
                if not self._running and set(self._waiting) == self._live:
                    self._running = True
                    batch, self._waiting = self._waiting, {}
                    self._cond.release()
                    try:
                        results = self._round(batch)
                    finally:
                        self._cond.acquire()
                        self._running = False
                    self._results.update(results)
                    self._cond.notify_all()
                else:
                    self._cond.wait()
            result = self._results.pop(i)
        if isinstance(result, BaseException):
            raise result
        return result

    def leave(self, i: int) -> None:
        """User i's training ended (done, failed or stopped): rounds no longer wait for it."""
        with self._cond:
            self._live.discard(i)
            self._cond.notify_all()

    def _round(self, batch: dict[int, tuple]) -> dict[int, object]:
        self.rounds += 1
        users = sorted(batch)
        try:
            return self._together(users, batch)
        except Exception:  # noqa: BLE001  (one user's input spoils the round: run each alone)
            for i in users:
                for p in self.models[i].parameters():
                    p.grad = None
            return {i: self._alone(i, batch[i]) for i in users}

    def _together(self, users: list[int], batch: dict[int, tuple]) -> dict[int, object]:
        counts = [len(batch[i][0]) for i in users]
        x = torch.cat([batch[i][0] for i in users])
        training = [i for i in users if batch[i][2] is not None]
        with torch.set_grad_enabled(bool(training)):  # the round runs in any user's thread
            out = self.joint(users, x, counts)
            outputs = dict(zip(users, torch.split(out, counts)))
            losses = {i: batch[i][2](outputs[i], batch[i][1]) for i in training}
            if losses:
                torch.stack(list(losses.values())).sum().backward()
        return {i: (losses[i].detach() if i in losses else None, outputs[i].detach())
                for i in users}

    def _alone(self, i: int, item: tuple) -> object:
        x, y, criterion = item
        try:
            with torch.set_grad_enabled(criterion is not None):
                out = self.models[i](x)
                if criterion is None:
                    return None, out.detach()
                loss = criterion(out, y)
                loss.backward()
            return loss.detach(), out.detach()
        except Exception as exc:  # noqa: BLE001  (this user's own failure)
            return exc


class LockstepTrainer(Trainer):
    """A Trainer whose training and validation steps are rounds of a Lockstep
    (`lockstep`, `index` set after construction)."""

    lockstep: Lockstep
    index: int
    best_each_epoch = False  # 100 users' best files at every epoch would be the run's cost

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[float, torch.Tensor]:
        self.optimizer.zero_grad(set_to_none=True)
        loss, output = self.lockstep.step(self.index, x, y, self.criterion)
        self.optimizer.step()
        return loss.item(), output

    def evaluate(self, x: torch.Tensor) -> torch.Tensor:
        return self.lockstep.step(self.index, x, None, None)[1]


def fit_together(trainers: list[LockstepTrainer],
                 joint_of: Callable[[list[nn.Module]], Joint]) -> list[tuple | BaseException]:
    """Fit prepared LockstepTrainers at once, `joint_of(their models)` computing a round;
    per trainer, fit's (summary, best weights, labels) or the exception that ended it."""
    models = [t.model for t in trainers]
    lockstep = Lockstep(models, joint_of(models))
    for i, trainer in enumerate(trainers):
        trainer.lockstep, trainer.index = lockstep, i
    results: list = [None] * len(trainers)

    def run(i: int) -> None:
        try:
            results[i] = fit(trainers[i])
        except BaseException as exc:  # noqa: BLE001  (reported per user)
            results[i] = exc
        finally:
            lockstep.leave(i)

    threads = [threading.Thread(target=run, args=(i,), name=f"ph-together-{i}", daemon=True)
               for i in range(len(trainers))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results
