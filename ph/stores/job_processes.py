"""LocalStore's job runner: each background job is a process of its own on this machine
(`python -m ph.adapters.job_runner HEADS_DIR JOB_ID`), the local counterpart of the
distributed store's queue (job_queue). A process, so that serving stays responsive and
a crash or kill of the job cannot touch the serving process.

The processes this process started are kept here, one table per process whichever
store instance started them, so their end is seen at once (not by a process id the
system may reuse) and they are reaped; a job another process started is judged by its
process id.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from ..errors import TrainingError

RUNNER = "ph.adapters.job_runner"  # the module a job's process runs (by name: no import)
JOB_STARTUP_GRACE_S = 120  # a job that has not reported its process after this is dead
ENDED_KEPT = 1024
children: dict[str, subprocess.Popen] = {}  # job id -> the process this process started
ended: dict[str, int] = {}  # job id -> exit code, of those that ended (oldest first)


def start(root: Path, job: dict) -> int:
    """Start the job's process for the heads folder `root`; its process id.

    Raises:
        TrainingError: the process could not be started.
    """
    reap()
    try:
        proc = subprocess.Popen([sys.executable, "-m", RUNNER, str(root), job["id"]],
                                cwd=os.getcwd(), stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
    except OSError as exc:
        raise TrainingError(f"could not start the training process: {exc}") from None
    children[job["id"]] = proc
    return proc.pid


def alive(job: dict) -> bool:
    """Whether the job's process lives: one this process started by polling it, another
    by its recorded process id; a job with none yet for JOB_STARTUP_GRACE_S after it was
    created."""
    reap()
    if job["id"] in ended:
        return False
    if job["id"] in children:
        return True
    pid = job.get("pid")
    if not pid:  # queued: give the process time to start and write its pid
        return time.time() - job.get("created", 0) < JOB_STARTUP_GRACE_S
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def reap() -> None:
    """Reap the job processes of this process that have ended (remembering the latest
    ENDED_KEPT of them as ended)."""
    for job_id, proc in list(children.items()):
        if proc.poll() is not None:
            children.pop(job_id, None)
            ended[job_id] = proc.returncode
            while len(ended) > ENDED_KEPT:
                ended.pop(next(iter(ended)))
