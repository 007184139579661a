"""Heads for tests: small configs, a user-code model, a training held mid-run, and
waiting for a background job."""
from __future__ import annotations

import contextlib
import json
import threading
import time
from pathlib import Path

TINY_SOURCE = ("import torch\nclass Tiny(torch.nn.Module):\n"
               "    def __init__(self):\n        super().__init__()\n        self.l = torch.nn.Linear(64, 8)\n"
               "    def forward(self, x):\n        return torch.log_softmax(self.l(x.squeeze(1)), -1)\n")


def small_config(**trainer_loop) -> dict:
    """A head small enough to train in a second, with the seed's structure."""
    loop = {"epochs": 3, "save_period": 100, "tensorboard": False, "verbosity": 0,
            "early_stop": 0, **trainer_loop}
    return {
        "Model": {"type": "PersonalizedHead",
                  "args": {"embedding_length": 64, "n_classes": 8, "ph_ff_dim": 64,
                           "ph_nhead": 2, "ph_nlayers": 1}},
        "Trainer": {"n_gpu": 0, "trainer": loop,
                    "dataloader": {"args": {"batch_size": 16, "num_workers": 0}}},
    }


def tiny_custom_config(registry) -> dict:
    """A head config whose model is user code without a stacked forward (its source set
    as the registry's head-list Python)."""
    registry.create_head_list(python=TINY_SOURCE)
    config = small_config()
    config["Model"] = {"type": "CustomModel", "args": {"module_name": "Tiny"}}
    config["Inference"] = {"preprocess": {"args": {"embedding_length": 64}}}
    return config


def write_json(path: Path, obj) -> Path:
    path.write_text(json.dumps(obj))
    return path


@contextlib.contextmanager
def training_held(registry, uid: str, on_hold=lambda: None):
    """Train `uid` in a thread that holds at the end of its first epoch (after calling
    `on_hold`) until the block ends; yields the list that gets the run's exception."""
    held, release, errors = threading.Event(), threading.Event(), []

    def hold(_record):
        on_hold()
        held.set()
        release.wait(30)

    def run():
        try:
            registry.train(uid, on_epoch=hold)
        except Exception as exc:  # noqa: BLE001  (the caller checks it)
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    try:
        assert held.wait(30)
        yield errors
    finally:
        release.set()
        thread.join(60)


def wait_job(status, job_id, states=("succeeded", "failed", "stopped"), timeout=120):
    """Poll `status(job_id)` until the job's state is one of `states`; returns the job."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = status(job_id)
        if job["state"] in states:
            return job
        time.sleep(0.1)
    raise TimeoutError(f"job {job_id} still {job['state']}")
