"""Shared fixtures: a scratch working folder, intent data made offline, registries, and
real Redis and S3 servers for the distributed store; gpu-marked tests are skipped where no
CUDA device is present. Shared helper functions live in tests/helpers/, not here."""
from __future__ import annotations

import json
import os
import sys
import uuid
from pathlib import Path

import pytest

# Tests run in 2 parallel workers on 2 cores and start servers and jsctl processes: one
# compute thread per process avoids oversubscription (torch threads spin while waiting).
os.environ.setdefault("OMP_NUM_THREADS", "1")
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))  # `helpers` (tests/helpers/) imports from here
from helpers.intent_data import as_label_lists, make_split  # noqa: E402
from helpers.servers import RedisServer, S3Server, distributed_url  # noqa: E402
from helpers.stores import TEST_BUCKET, close_store  # noqa: E402

torch.set_num_threads(1)

NO_GPU = "no CUDA device on this machine"


def pytest_collection_modifyitems(config, items):
    """Tests marked `gpu` need a CUDA device: without one they are skipped, with the reason
    (`pytest -rs` lists them)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason=NO_GPU)
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


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

