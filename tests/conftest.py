"""Shared fixtures: a scratch working folder, intent data made offline, small configs, and
real Redis and S3 servers for the distributed store."""
from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
import uuid
from pathlib import Path

import pytest

# Tests run in 2 parallel workers on 2 cores and start servers and jsctl processes: one
# compute thread per process avoids oversubscription (torch threads spin while waiting).
os.environ.setdefault("OMP_NUM_THREADS", "1")
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from intent_data import as_label_lists, make_split  # noqa: E402
from servers import RedisServer, S3Server, distributed_url  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).parent / "fixtures"
torch.set_num_threads(1)


TINY_SOURCE = ("import torch\nclass Tiny(torch.nn.Module):\n"
               "    def __init__(self):\n        super().__init__()\n        self.l = torch.nn.Linear(64, 8)\n"
               "    def forward(self, x):\n        return torch.log_softmax(self.l(x.squeeze(1)), -1)\n")


def tiny_custom_config(registry) -> dict:
    """A head config whose model is user code without a stacked forward (its source set
    as the registry's head-list Python)."""
    registry.create_head_list(python=TINY_SOURCE)
    config = small_config()
    config["Model"] = {"type": "CustomModel", "args": {"module_name": "Tiny"}}
    config["Inference"] = {"preprocess": {"args": {"embedding_length": 64}}}
    return config


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


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """Run the test in an empty folder (heads/, saved/ and data land here)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PH_HEADS_DIR", raising=False)
    return tmp_path


@pytest.fixture(scope="session")
def intents():
    """(train, held_out) intent records; held-out uses unseen templates and slot values."""
    return make_split(seed=0)


@pytest.fixture
def train_json(workdir, intents):
    """train.json in the working folder, {label: [utterances]} form."""
    path = workdir / "train.json"
    path.write_text(json.dumps(as_label_lists(intents[0])))
    return path


@pytest.fixture
def registry(workdir):
    from ph.heads.service import HeadRegistry
    return HeadRegistry(workdir / "heads")


@pytest.fixture
def fresh_api(workdir):
    """The process-wide registry of ph.api, pointed at this test's heads folder."""
    import ph.api
    registry = ph.api.setup(heads_dir=str(workdir / "heads"))
    yield registry
    ph.api._registry = None
    for job in (workdir / "heads" / "_jobs").glob("*.json"):
        job.with_suffix(".stop").touch()  # a job a failed test left running stops itself


TEST_BUCKET = "ph-test"


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """One real Redis per pytest(-xdist) worker process, shared by its tests (a test that
    stops or kills Redis starts its own RedisServer, or cuts this one off with a TcpProxy)."""
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(scope="session")
def s3_server():
    """One real S3-compatible server (moto) per pytest worker process, with TEST_BUCKET."""
    with S3Server() as server:
        server.create_bucket(TEST_BUCKET)
        yield server


@pytest.fixture
def store_url(redis_server, s3_server, monkeypatch):
    """A distributed store URL of this test's own: a fresh namespace in the shared Redis
    and a fresh prefix in the shared bucket. Sets the dummy AWS credentials in os.environ."""
    for name, value in s3_server.env.items():
        monkeypatch.setenv(name, value)
    unique = f"t{uuid.uuid4().hex[:12]}"
    return distributed_url(redis_server.url, s3_server.endpoint, TEST_BUCKET, unique, unique)


@pytest.fixture(params=["local", "distributed"])
def any_store(request):
    """Each store backend in turn, as the `store` setting: None (the local heads folder),
    then a distributed store URL of this test's own (`store_url`). A test of a
    backend-neutral behaviour takes this (or `any_registry`), so the two cannot drift."""
    if request.param == "local":
        return None
    return request.getfixturevalue("store_url")


@pytest.fixture
def any_registry(workdir, any_store):
    """A HeadRegistry on each store backend in turn (see `any_store`)."""
    from ph.heads.service import HeadRegistry
    registry = HeadRegistry(workdir / "heads", store=any_store)
    yield registry
    close_store(registry.store)


def close_store(store) -> None:
    """Stop a RedisStore's notification thread (nothing to do for a local store)."""
    close = getattr(store, "close", None)
    if close is not None:
        close()


def stored_example_bytes(store) -> bytes:
    """Every byte of every head's stored examples as the store keeps them (the local
    folder's examples.jsonl files; a distributed store's example chunk objects), to check
    that deleted examples are gone from storage, not merely hidden."""
    if not getattr(store, "distributed", False):
        return b"".join(p.read_bytes() for p in sorted(store.root.rglob("examples.jsonl")))
    return b"".join(store.objects.get(name) for name in store.objects.list("heads/")
                    if "/examples/" in name)


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
