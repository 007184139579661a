"""A run's progress while it trains, for whoever watches: a background job's record
(`train_status`: epoch of total, batches done, samples/s, an ETA, from the first batch
on) through the caller's `on_epoch.progress`, and a tqdm bar when a person runs a direct
`train_head` in a terminal (jsctl, a script). Elsewhere the trainer logs a line per
epoch instead.
"""
from __future__ import annotations

import sys
import threading
import time
from typing import Callable

REPORT_EVERY_S = 1.0  # train_status is at most this stale (plus the job's own write)


def person_watching() -> bool:
    """A terminal on stderr and the main thread: jsctl or a script, not a server's worker
    thread or a job process (whose stderr goes nowhere)."""
    return sys.stderr.isatty() and threading.current_thread() is threading.main_thread()


class RunProgress:
    """Counts a run's batches; reports at the first batch, then every REPORT_EVERY_S."""

    def __init__(self, epochs: int, start_epoch: int, batches_per_epoch: int | None,
                 report: Callable[[dict], None] | None, label: str = "training"):
        self.epochs, self.per_epoch, self.report = epochs, batches_per_epoch, report
        self.total = None if batches_per_epoch is None else \
            batches_per_epoch * (epochs - start_epoch + 1)
        self.started = time.monotonic()
        self.last_report = None
        self.batches = self.samples = 0
        self.bar = None
        if person_watching():
            from tqdm import tqdm
            self.bar = tqdm(total=self.total, unit="batch", desc=label, leave=False,
                            dynamic_ncols=True)

    def batch(self, epoch: int, index: int, samples: int) -> None:
        self.batches += 1
        self.samples += samples
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(epoch=f"{epoch}/{self.epochs}", refresh=False)
        now = time.monotonic()
        if self.report is None or (self.last_report is not None
                                   and now - self.last_report < REPORT_EVERY_S):
            return
        self.last_report = now
        elapsed = max(now - self.started, 1e-9)
        left = None if self.total is None else max(0, self.total - self.batches)
        self.report({"epoch": epoch, "epochs": self.epochs, "batch": index,
                     "batches": self.per_epoch, "samples_per_s": round(self.samples / elapsed, 1),
                     "elapsed_s": round(elapsed, 1),
                     "eta_s": None if left is None else round(left * elapsed / self.batches, 1)})

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
