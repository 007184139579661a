"""Soak: concurrent clients mix every action against a real `ph serve --workers 2`, for a
bounded time, then check what a user's app relies on. Prints JSON figures.

    python bench/soak.py --seconds 180 --clients 6        (make soak)

The clients share a small pool of head uuids, so creates, deletes, replaces, reloads
and background trainings meet on the same heads, as users of one app would. Invariants
(every break is listed under "violations"; the exit status is 1 if there is one):
- no 5xx, and no 4xx but the expected refusals: 404 for a head another client deleted,
  409 for a head that is training or was replaced meanwhile;
- every job ends; none fails but the ones given bad data on purpose, and none stops
  unless a client asked it to;
- every listed head answers predict at the end;
- a head's revision never goes down (per head incarnation, in real-time order);
- nothing is left in `<heads>/_tmp`, nor as an atomic-write temp file (`.*.tmp`).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # helpers: the offline intent data, the test servers
from helpers.intent_data import as_label_lists, make_split  # noqa: E402
from helpers.servers import free_port, stop, wait_for  # noqa: E402

TEXTS = ["I want to order a pizza", "will it rain in Lima", "play some Bach", "wake me at 6"]
ENDED = ("succeeded", "failed", "stopped")
HEAD_ERRORS = {404: "not_found", 409: "conflict"}  # refusals a head-changing mix must expect


def head_config(data: Path) -> dict:
    """A head that trains in a second or two: the seed's structure, small sizes."""
    return {"Model": {"type": "PersonalizedHead",
                      "args": {"embedding_length": 64, "n_classes": 8, "ph_ff_dim": 64,
                               "ph_nhead": 2, "ph_nlayers": 1}},
            "Trainer": {"n_gpu": 0,
                        "trainer": {"epochs": 2, "save_period": 100, "tensorboard": False,
                                    "verbosity": 0, "early_stop": 0},
                        "dataloader": {"args": {"batch_size": 16, "num_workers": 0,
                                                "train_json": str(data / "train.json")}}}}


class Server:
    """`ph serve` in `work` on a free loopback port; stopped with its process group."""

    def __init__(self, work: Path, workers: int):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = work / "server.log"
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [str(Path(sys.executable).parent / "ph"), "serve", "--port", str(self.port),
                 "--workers", str(workers), "--heads-dir", str(work / "heads"),
                 "--allow-path", str(work), "--log-level", "warning"],
                cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_for(self.url + "/healthz", self.proc, timeout=120)
        except (RuntimeError, TimeoutError):
            self.stop()
            raise RuntimeError(f"ph serve did not start: {self.log.read_text()[-2000:]}") from None

    def stop(self) -> None:
        stop(self.proc)


class Soak:
    """The shared state of one run: what clients saw, and the checks at the end."""

    def __init__(self, url: str, work: Path, uuids: list[str], seed: int):
        self.url, self.work, self.uuids = url, work, uuids
        self.data = work / "data"
        self.config = head_config(self.data)
        self.labels = sorted(json.loads((self.data / "train.json").read_text()))
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.latency: dict[str, list[float]] = defaultdict(list)
        self.refusals: Counter = Counter()
        self.examples: dict[str, str] = {}  # one message per kind of refusal
        self.violations: list[str] = []
        self.revisions: list[tuple] = []  # (uuid, created, sent, received, revision)
        self.jobs_open: list[str] = []
        self.bad_jobs: set[str] = set()
        self.to_stop: list[str] = []  # every fifth good job (the first too) is stopped
        self.good_jobs = 0
        self.stop_asked: set[str] = set()
        self.calls = 0

    # --- calls -------------------------------------------------------------------------
    def call(self, session: requests.Session, label: str, action: str, expect=(), **args):
        """POST an action; records latency and refusals; returns (status, body, sent, received)."""
        sent = time.monotonic()
        try:
            response = session.post(f"{self.url}/{action}/", json=args, timeout=300)
            status, body = response.status_code, response.json()
        except (requests.RequestException, ValueError) as exc:
            status, body = 0, {"error": "transport", "message": f"{type(exc).__name__}: {exc}"}
        received = time.monotonic()
        with self.lock:
            self.calls += 1
            self.latency[label].append(received - sent)
            if status != 200:
                kind = f"{label} {status} {body.get('error')}{why(body.get('message', ''))}"
                if status in expect and HEAD_ERRORS.get(status) == body.get("error"):
                    self.refusals[kind] += 1
                    self.examples.setdefault(kind, body.get("message", "")[:300])
                else:
                    self.violations.append(f"{kind}: {body.get('message', body)!s:.400}")
        return status, body, sent, received

    def client(self, index: int, deadline: float, max_calls: int, think_s: float) -> None:
        rng = random.Random(index)
        session = requests.Session()
        actions = [(self.predict, 24), (self.predict_many, 8), (self.check_head, 10),
                   (self.read_only, 8), (self.create_head, 10), (self.train_background, 4),
                   (self.train_status, 8), (self.stop_training, 3), (self.load_weights, 5),
                   (self.delete_head, 5), (self.train_direct, 1), (self.create_head_list, 1),
                   (self.user_examples, 6)]
        steps, weights = zip(*actions)
        while time.time() < deadline and self.calls < max_calls:
            rng.choices(steps, weights)[0](session, rng, rng.choice(self.uuids))
            time.sleep(rng.uniform(0, think_s))

    def predict(self, s, rng, uuid):
        status, body, *_ = self.call(s, "predict", "predict", (404,), uuid=uuid,
                                     data=rng.choice(TEXTS))
        if status == 200 and not isinstance(body, (str, int)):
            self.violation(f"predict {uuid}: expected a label, got {body!r:.100}")

    def predict_many(self, s, rng, uuid):
        uuids = rng.sample(self.uuids, min(3, len(self.uuids)))
        status, body, *_ = self.call(s, "predict_many", "predict_many",
                                     requests=[[u, rng.choice(TEXTS)] for u in uuids])
        for answer in body if status == 200 else []:
            if isinstance(answer, dict) and answer.get("error") != "not_found":
                self.violation(f"predict_many: an answer failed: {answer}")

    def check_head(self, s, rng, uuid):
        status, body, sent, received = self.call(s, "check_head", "check_head", (404,), uuid=uuid)
        if status == 200 and body.get("exists"):
            with self.lock:
                self.revisions.append((uuid, body.get("created"), sent, received, body["revision"]))

    def read_only(self, s, rng, uuid):
        action = rng.choice(["list_heads", "get_config", "head_stats"])
        self.call(s, action, action, (404,), **({"uuid": uuid} if action == "get_config" else {}))

    def create_head(self, s, rng, uuid):
        if rng.random() < 0.2:
            self.call(s, "create_head(replace)", "create_head", (409,), uuid=uuid, replace=True)
        else:
            self.call(s, "create_head", "create_head", (), uuid=uuid)

    def create_head_list(self, s, rng, uuid):
        self.call(s, "create_head_list", "create_head_list", (), config=self.config)

    def train_background(self, s, rng, uuid):
        bad = rng.random() < 0.15
        config = ({"Trainer": {"dataloader": {"args": {"train_json": str(self.data / "bad.json")}}}}
                  if bad else None)
        status, body, *_ = self.call(s, "train_head(bad data)" if bad else "train_head(background)",
                                     "train_head", (404, 409), uuid=uuid, config=config,
                                     background=True)
        if status == 200:
            with self.lock:
                self.jobs_open.append(body["job_id"])
                if bad:
                    self.bad_jobs.add(body["job_id"])
                else:
                    self.good_jobs += 1
                    if self.good_jobs % 5 == 1:
                        self.to_stop.append(body["job_id"])

    def train_direct(self, s, rng, uuid):
        self.call(s, "train_head(direct)", "train_head", (404, 409), uuid=uuid,
                  config={"Trainer": {"trainer": {"epochs": 1}}})

    def train_status(self, s, rng, uuid):
        with self.lock:
            job_id = rng.choice(self.jobs_open) if self.jobs_open else None
        if job_id is None:
            return
        status, body, *_ = self.call(s, "train_status", "train_status", job_id=job_id)
        if status == 200 and body["state"] in ENDED:
            with self.lock, contextlib.suppress(ValueError):
                self.jobs_open.remove(job_id)

    def stop_training(self, s, rng, uuid):
        with self.lock:
            job_id = self.to_stop.pop() if self.to_stop else None
            if job_id is not None:
                self.stop_asked.add(job_id)
        if job_id is not None:
            self.call(s, "stop_training", "stop_training", job_id=job_id)

    def user_examples(self, s, rng, uuid):
        """A user's corrections arrive, are read back, or are forgotten."""
        pick = rng.random()
        if pick < 0.6:
            label = rng.choice(self.labels)
            self.call(s, "add_examples", "add_examples", (404,), uuid=uuid,
                      examples={label: [rng.choice(TEXTS)]})
        elif pick < 0.9:
            self.call(s, "list_examples", "list_examples", (404,), uuid=uuid, limit=20)
        else:
            self.call(s, "delete_examples", "delete_examples", (404, 409), uuid=uuid)

    def load_weights(self, s, rng, uuid):
        self.call(s, "load_weights", "load_weights", (404, 409), uuid=uuid,
                  weights_file=str(self.data / "seed.pt"))

    def delete_head(self, s, rng, uuid):
        self.call(s, "delete_head", "delete_head", (404, 409), uuid=uuid)

    def violation(self, text: str) -> None:
        with self.lock:
            self.violations.append(text)

    # --- the checks at the end -------------------------------------------------------------
    def settle_jobs(self, session: requests.Session, timeout: float = 300) -> Counter:
        """Wait for every job in the heads folder to end; count how they ended."""
        job_ids = [p.stem for p in (self.work / "heads" / "_jobs").glob("*.json")]
        outcomes, deadline = Counter(), time.time() + timeout
        for job_id in job_ids:
            while True:
                status, job, *_ = self.call(session, "train_status", "train_status", job_id=job_id)
                if status != 200 or job["state"] in ENDED or time.time() > deadline:
                    break
                time.sleep(0.2)
            if status != 200:
                continue
            state, error = job["state"], job.get("error") or ""
            if state not in ENDED:
                self.violation(f"job {job_id} of head {job['uuid']} still {state} after {timeout}s")
            elif state == "failed" and job_id in self.bad_jobs:  # its own data's fault
                state = "failed (bad data, on purpose)"
            elif state == "failed":
                self.violation(f"job {job_id} of head {job['uuid']} failed: {error}")
            elif state == "stopped" and job_id not in self.stop_asked:
                self.violation(f"job {job_id} of head {job['uuid']} stopped unasked: {error}")
            elif state == "succeeded" and job_id in self.bad_jobs:
                self.violation(f"job {job_id} trained on bad data and succeeded")
            outcomes[state] += 1
        return outcomes

    def check_heads(self, session: requests.Session) -> int:
        """Every listed head answers, and its revision joins the record."""
        status, heads, *_ = self.call(session, "list_heads", "list_heads")
        for uuid in heads if status == 200 else []:
            self.predict(session, self.rng, uuid)
            self.check_head(session, self.rng, uuid)
        return len(heads) if status == 200 else 0

    def leftovers(self) -> list[str]:
        tmp = self.work / "heads" / "_tmp"
        left = [str(p.relative_to(self.work)) for p in tmp.iterdir()]
        left += [str(p.relative_to(self.work)) for p in self.work.rglob(".*.tmp")]
        return left

    def report(self, duration: float, clients: int, workers: int, jobs: Counter,
               heads_at_end: int) -> dict:
        by_action = {label: {"calls": len(t), "p50_ms": round(pct(t, 50) * 1e3, 1),
                             "p99_ms": round(pct(t, 99) * 1e3, 1)}
                     for label, t in sorted(self.latency.items())}
        return {"benchmark": "soak", "duration_s": round(duration, 1), "clients": clients,
                "workers": workers, "heads_pool": len(self.uuids), "calls": self.calls,
                "calls_per_s": round(self.calls / duration, 1),
                "refusals": dict(sorted(self.refusals.items())),
                "refusal_examples": dict(sorted(self.examples.items())),
                "jobs": dict(sorted(jobs.items())), "heads_at_end": heads_at_end,
                "by_action": by_action, "violations": self.violations[:50],
                "violation_count": len(self.violations), "ok": not self.violations}


def why(message: str) -> str:
    """What a conflict was about, from its message (so refusals can be counted by cause)."""
    for cause, words in (("a job", "(job "), ("a direct run", "already training"),
                         ("replaced", "was replaced")):
        if words in message:
            return f" ({cause})"
    return ""


def revision_violations(observations: list[tuple]) -> list[str]:
    """Observations (uuid, created, sent, received, revision) where a revision went down:
    one seen by a call sent after another call's answer arrived, for the same head
    incarnation (uuid and creation time), is lower than that answer's."""
    found = []
    by_head = defaultdict(list)
    for uuid, created, sent, received, revision in observations:
        by_head[(uuid, created)].append((sent, received, revision))
    for (uuid, _), seen in by_head.items():
        answered = sorted(seen, key=lambda o: o[1])
        highest, i = None, 0
        for sent, _, revision in sorted(seen):
            while i < len(answered) and answered[i][1] < sent:
                highest = max(highest or 0, answered[i][2])
                i += 1
            if highest is not None and revision < highest:
                found.append(f"head {uuid}: revision {revision} seen after {highest}")
    return found


def pct(times: list[float], q: float) -> float:
    ordered = sorted(times)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))] if ordered else 0.0


def prepare(work: Path) -> Path:
    """Training data made offline: a small intent set, and a file with a wrong label."""
    data = work / "data"
    data.mkdir(parents=True)
    train, _ = make_split(seed=0, per_intent=12)
    (data / "train.json").write_text(json.dumps(as_label_lists(train)))
    (data / "bad.json").write_text(json.dumps([{"text": "hi", "label": 99}]))
    return data


def run(seconds: float, clients: int, max_calls: int = 10**9, workers: int = 2, heads: int = 5,
        think_ms: float = 20, seed: int = 0, work: Path | None = None) -> dict:
    """Run the soak; returns the report (see the module docstring)."""
    own = work is None
    work = Path(tempfile.mkdtemp(prefix="ph-soak-")) if own else Path(work)
    data = prepare(work)
    server = Server(work, workers)
    try:
        soak = Soak(server.url, work, [f"h{i}" for i in range(heads)], seed)
        session = requests.Session()
        soak.call(session, "create_head_list", "create_head_list", config=soak.config)
        soak.call(session, "create_head", "create_head", uuid="seed")
        soak.call(session, "train_head(direct)", "train_head", uuid="seed")
        shutil.copy(work / "saved" / "models" / "PersonalizedHeadTrainer" / "seed" / "best_model.pt",
                    data / "seed.pt")
        start = time.time()
        threads = [threading.Thread(target=soak.client, args=(i, start + seconds, max_calls,
                                                              think_ms / 1e3), daemon=True)
                   for i in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        duration = time.time() - start
        jobs = soak.settle_jobs(session)
        heads_at_end = soak.check_heads(session)
        soak.violations += revision_violations(soak.revisions)
        soak.violations += [f"left in a temporary folder: {p}" for p in soak.leftovers()]
        report = soak.report(duration, clients, workers, jobs, heads_at_end)
    finally:
        server.stop()
    if not report["ok"]:
        report["server_log_tail"] = server.log.read_text(errors="replace")[-3000:]
    elif own:
        shutil.rmtree(work, ignore_errors=True)
    return report


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=180, help="how long the clients run")
    p.add_argument("--clients", type=int, default=6, help="concurrent client threads")
    p.add_argument("--max-calls", type=int, default=10**9, help="stop after this many calls")
    p.add_argument("--workers", type=int, default=2, help="ph serve worker processes")
    p.add_argument("--heads", type=int, default=5, help="head uuids the clients share")
    p.add_argument("--think-ms", type=float, default=20, help="a client's pause between calls, up to")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="", help="also write the JSON report to this file")
    args = p.parse_args()
    report = run(args.seconds, args.clients, args.max_calls, args.workers, args.heads,
                 args.think_ms, args.seed)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
