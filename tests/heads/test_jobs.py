"""Background training: a job per process; serving continues; failures change nothing."""
from __future__ import annotations

import os
import re
import signal
import threading
import time

import pytest
import requests

from helpers.heads import small_config, wait_job
from helpers.servers import ph_server
from ph.heads.service import HeadRegistry

pytestmark = pytest.mark.slow  # a job process per training; some through ph serve

TEXTS = ["I want to order a pizza", "will it rain in Lima", "play some Bach", "wake me at 6"]


def wait_epoch(status, job_id, epoch, timeout=120):
    return wait_job(lambda j: {**status(j), "state": "ready" if status(j)["epoch"] >= epoch
                               else status(j)["state"]}, job_id, ("ready", "succeeded", "failed"),
                    timeout)


def test_background_training_reports_progress_and_updates_the_head(fresh_api, train_json):
    import ph
    ph.create_head(uuid="bg", config=small_config(epochs=3))
    job = ph.train_head("bg", background=True)
    assert job["state"] == "queued" and job["uuid"] == "bg"
    done = wait_job(ph.train_status, job["job_id"])
    assert done["state"] == "succeeded", done["error"]
    assert done["epoch"] == 3 == done["epochs"] and "val_loss" in done["metrics"]
    assert done["summary"]["updated"] and done["summary"]["revision"] == 1
    assert ph.check_head("bg")["revision"] == 1
    fresh = HeadRegistry(fresh_api.store.root)
    assert ph.predict("bg", TEXTS) == fresh.predict("bg", TEXTS)



def test_a_running_job_reports_progress_from_its_first_epoch_and_keeps_its_log(fresh_api,
                                                                             train_json):
    """Batch size 1 makes each epoch a few hundred steps: progress must show mid-epoch,
    move on between two looks, and the job's log lines stay with its record."""
    import ph
    config = small_config(epochs=4, verbosity=1)
    config["Trainer"]["dataloader"]["args"]["batch_size"] = 1
    ph.create_head(uuid="watched", config=config)
    job = ph.train_head("watched", background=True)
    first = wait_job(ph.train_status, job["job_id"], ("running",))
    deadline = time.time() + 60
    while (first.get("progress") is None) and time.time() < deadline:
        time.sleep(0.2)
        first = ph.train_status(job["job_id"])
    progress = first["progress"]
    assert progress["epochs"] == 4 and progress["batches"] >= 100
    assert progress["samples_per_s"] > 0 and progress["eta_s"] > 0
    time.sleep(2.5)  # reported every second (plus its write)
    later = ph.train_status(job["job_id"])["progress"]
    assert (later["epoch"], later["batch"]) > (progress["epoch"], progress["batch"])
    done = wait_job(ph.train_status, job["job_id"])
    assert done["state"] == "succeeded", done["error"]
    assert any("epoch=4" in line for line in ph.train_status(job["job_id"], log_lines=200)["log"])
    assert any("succeeded" in line for line in done["log"])  # the job's own last line
    assert ph.train_status(job["job_id"], log_lines=0)["log"] == []
    with pytest.raises(ph.BadInputError, match="log_lines"):
        ph.train_status(job["job_id"], log_lines=1000)


def test_a_finished_job_prunes_old_job_records_and_their_status_says_so(workdir, train_json,
                                                                        monkeypatch):
    monkeypatch.setenv("PH_JOB_RECORDS_MAX_AGE_S", "3600")  # the job process reads it too
    import ph
    import ph.api
    from ph.errors import NotFoundError
    from ph.stores.fileio import atomic_write_json
    store = ph.api.setup(heads_dir=str(workdir / "heads")).store
    try:
        old = store.job_path("old-job")
        atomic_write_json(old, {"id": "old-job", "uuid": "x", "state": "succeeded"})
        os.utime(old, (time.time() - 7200, time.time() - 7200))
        ph.create_head(uuid="fresh", config=small_config(epochs=1))
        job_id = ph.train_head("fresh", background=True)["job_id"]
        assert ph.train_status("old-job")["state"] == "succeeded"  # a queued job prunes nothing
        assert wait_job(ph.train_status, job_id)["state"] == "succeeded"
        with pytest.raises(NotFoundError, match="no training job 'old-job'.*after 1 hour,"):
            ph.train_status("old-job")
    finally:
        ph.api._registry = None

def test_a_failing_job_reports_why_and_leaves_the_head_alone(fresh_api, workdir):
    import ph
    ph.create_head(uuid="bad", config=small_config())
    before = ph.predict("bad", TEXTS)
    (workdir / "train.json").write_text('[{"text": "hi", "label": 99}]')
    done = wait_job(ph.train_status, ph.train_head("bad", background=True)["job_id"])
    assert done["state"] == "failed" and "outside 0..7" in done["error"]
    assert ph.check_head("bad")["revision"] == 0 and ph.predict("bad", TEXTS) == before


def test_a_killed_job_is_reported_failed_and_the_head_keeps_its_weights(fresh_api, train_json):
    import ph
    ph.create_head(uuid="victim", config=small_config(epochs=400))
    before = ph.predict("victim", TEXTS)
    job_id = ph.train_head("victim", background=True)["job_id"]
    wait_epoch(ph.train_status, job_id, 1)
    pid = fresh_api.store.read_job(job_id)["pid"]
    os.kill(pid, signal.SIGKILL)
    done = wait_job(ph.train_status, job_id)
    assert done["state"] == "failed" and "killed or crashed" in done["error"]
    assert ph.check_head("victim")["revision"] == 0 and not ph.check_head("victim")["training"]
    assert ph.predict("victim", TEXTS) == before
    assert ph.train_head("victim", {"Trainer": {"trainer": {"epochs": 1}}})["revision"] == 1


def test_a_stopped_job_ends_as_stopped_without_new_weights(fresh_api, train_json):
    import ph
    ph.create_head(uuid="halt", config=small_config(epochs=400))
    job_id = ph.train_head("halt", background=True)["job_id"]
    wait_epoch(ph.train_status, job_id, 1)
    ph.stop_training(job_id)
    done = wait_job(ph.train_status, job_id)
    assert done["state"] == "stopped" and "previous weights" in done["error"]
    assert ph.check_head("halt")["revision"] == 0


def test_a_training_head_refuses_a_second_job_and_deletion(fresh_api, train_json):
    import ph
    from ph.errors import ConflictError
    ph.create_head(uuid="once", config=small_config(epochs=400))
    job_id = ph.train_head("once", background=True)["job_id"]
    with pytest.raises(ConflictError, match=f"already training \\(job {job_id}\\)"):
        ph.train_head("once", background=True)  # while the first is still starting
    wait_epoch(ph.train_status, job_id, 1)
    with pytest.raises(ConflictError, match="already training"):
        ph.train_head("once", background=True)
    with pytest.raises(ConflictError, match="stop_training"):
        ph.delete_head("once")
    ph.stop_training(job_id)
    wait_job(ph.train_status, job_id)
    assert ph.delete_head("once")


def test_predictions_keep_answering_during_training_then_switch_to_new_weights(workdir, train_json):
    with ph_server(workdir, "--allow-path", str(workdir)) as url:
        def call(action, **args):
            response = requests.post(f"{url}/{action}/", json=args, timeout=60)
            assert response.status_code == 200, response.text
            return response.json()

        call("create_head", uuid="trainee", config=small_config(epochs=12))
        call("create_head", uuid="bystander", config=small_config())
        before, bystander = call("predict", uuid="trainee", data=TEXTS), call("predict", uuid="bystander", data=TEXTS)
        job_id = call("train_head", uuid="trainee", background=True)["job_id"]
        answers, stop = [], threading.Event()

        def stream():
            while not stop.is_set():
                answers.append((call("predict", uuid="trainee", data=TEXTS),
                                call("predict", uuid="bystander", data=TEXTS)))

        thread = threading.Thread(target=stream)
        thread.start()
        done = wait_job(lambda j: call("train_status", job_id=j), job_id)
        time.sleep(0.3)
        stop.set()
        thread.join(30)
        assert done["state"] == "succeeded", done["error"]
        after = HeadRegistry(workdir / "heads").predict("trainee", TEXTS)
        assert len(answers) >= 20 and before != after
        assert all(a in (before, after) for a, _ in answers)  # old or new weights, never a mix
        assert any(a == before for a, _ in answers)  # it answered while the job ran
        assert answers[-1][0] == after and call("predict", uuid="trainee", data=TEXTS) == after
        assert all(b == bystander for _, b in answers)
        assert call("check_head", uuid="trainee")["revision"] == 1


def test_stopping_a_job_before_it_starts_leaves_the_head_alone(fresh_api, train_json):
    import ph
    ph.create_head(uuid="early", config=small_config(epochs=400))
    job_id = ph.train_head("early", background=True)["job_id"]
    assert ph.stop_training(job_id)["state"] in ("queued", "running")
    done = wait_job(ph.train_status, job_id)
    assert done["state"] == "stopped" and ph.check_head("early")["revision"] == 0


def test_a_training_job_runs_below_the_server_on_the_cpu(fresh_api, train_json):
    import ph
    from ph.adapters.job_runner import JOB_NICENESS
    ph.create_head(uuid="nice", config=small_config(epochs=200))
    job = ph.train_head("nice", background=True)
    wait_epoch(ph.train_status, job["job_id"], 1)
    fields = open(f"/proc/{job['pid']}/stat").read().rsplit(")", 1)[1].split()
    assert int(fields[16]) == min(19, os.nice(0) + JOB_NICENESS)  # field 19 of stat: niceness
    assert ph.stop_training(job["job_id"])["state"] in ("running", "stopped")
    wait_job(ph.train_status, job["job_id"])


def _weights_file(heads, uuid, path):
    """A state dict that fits `uuid`, saved as a user's weights file."""
    import torch
    torch.save(HeadRegistry(heads).loaded(uuid).engine.model.state_dict(), path)
    return str(path)


def test_an_accepted_job_owns_its_head_before_its_process_starts(fresh_api, train_json, workdir):
    """The mixed-load bug: a delete between train_head's return and the job taking the
    training lock made the job fail with "no head". Every change is refused instead."""
    import ph
    from ph.errors import ConflictError
    ph.create_head(uuid="owned", config=small_config(epochs=20))  # outlasts the refusals
    weights = _weights_file(workdir / "heads", "owned", workdir / "w.pt")
    job_id = ph.train_head("owned", background=True)["job_id"]
    assert ph.train_status(job_id)["state"] == "queued"  # its process is still starting
    assert ph.check_head("owned")["training"] and ph.check_head("owned")["training_job"] == job_id
    refused = {"delete_head": lambda: ph.delete_head("owned"),
               "create_head(replace=True)": lambda: ph.create_head("owned", small_config(), replace=True),
               "load_weights": lambda: ph.load_weights("owned", weights),
               "delete_examples": lambda: ph.delete_examples("owned"),
               "a second train_head": lambda: ph.train_head("owned", background=True)}
    for action, call in refused.items():
        with pytest.raises(ConflictError, match=f"already training \\(job {job_id}\\), so "
                                                f"{re.escape(action)} is refused.*stop_training"):
            call()
    with pytest.raises(ConflictError, match=f"job {job_id}"):
        ph.train_head("owned")  # a direct run too
    done = wait_job(ph.train_status, job_id)
    assert done["state"] == "succeeded", done["error"]
    assert ph.check_head("owned")["revision"] == 1 and not ph.check_head("owned")["training"]
    assert ph.load_weights("owned", weights)["revision"] == 2
    assert ph.delete_head("owned") and ph.list_heads() == []


def test_a_job_stopped_while_starting_ends_stopped_and_then_the_head_can_go(fresh_api, train_json):
    import ph
    from ph.errors import ConflictError
    ph.create_head(uuid="brief", config=small_config(epochs=400))
    job_id = ph.train_head("brief", background=True)["job_id"]
    ph.stop_training(job_id)
    with pytest.raises(ConflictError, match=f"job {job_id}"):
        ph.delete_head("brief")  # stopping is asked, not done: it owns the head until it ends
    done = wait_job(ph.train_status, job_id)
    assert done["state"] == "stopped" and "previous weights" in done["error"]
    assert ph.delete_head("brief")


def test_over_http_with_two_workers_a_starting_job_refuses_every_change_until_stopped(workdir,
                                                                                      train_json):
    with ph_server(workdir, "--workers", "2", "--allow-path", str(workdir)) as url:
        def call(action, expect=200, **args):
            response = requests.post(f"{url}/{action}/", json=args, timeout=60)
            assert response.status_code == expect, response.text
            return response.json()

        call("create_head", uuid="h5", config=small_config(epochs=400))
        weights = _weights_file(workdir / "heads", "h5", workdir / "w.pt")
        job_id = call("train_head", uuid="h5", background=True)["job_id"]
        for _ in range(3):  # each call may reach either worker
            for action, args in (("delete_head", {}), ("load_weights", {"weights_file": weights}),
                                 ("create_head", {"config": small_config(), "replace": True}),
                                 ("train_head", {"background": True}), ("train_head", {})):
                refusal = call(action, expect=409, uuid="h5", **args)
                assert refusal["error"] == "conflict" and job_id in refusal["message"], refusal
        assert call("stop_training", job_id=job_id)["state"] in ("queued", "running")
        done = wait_job(lambda j: call("train_status", job_id=j), job_id)
        assert done["state"] == "stopped" and "previous weights" in done["error"], done
        assert call("check_head", uuid="h5")["revision"] == 0
        assert call("delete_head", uuid="h5") is True and call("list_heads") == []
