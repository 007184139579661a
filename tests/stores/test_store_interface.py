"""The store interface (ph.stores.base): every backend has every method of every
Protocol with the same signature (parameter names, kinds, defaults, annotations) and the
same return annotation, each real store is a structural instance of `Store` and its
example log of `StoredExamples`, and nothing outside ph/stores reaches past the
interface (a private method, or a question of which backend it is)."""
from __future__ import annotations

import inspect
import re
import typing
from pathlib import Path

import pytest

from helpers.paths import ROOT
from helpers.stores import close_store
from ph.stores import LocalStore, open_store
from ph.stores.base import Blobs, Embeddings, Examples, Jobs, Locks, Records, Store, StoredExamples
from ph.stores.example_files import ExampleLog

pytest.importorskip("redis")
pytest.importorskip("boto3")
from ph.stores.example_objects import ObjectExampleLog  # noqa: E402
from ph.stores.redis_store import RedisStore  # noqa: E402

CONCERNS = (Records, Blobs, Examples, Embeddings, Locks, Jobs)
BACKENDS = (LocalStore, RedisStore)
LOGS = (ExampleLog, ObjectExampleLog)


def members(protocol: type) -> tuple[set[str], set[str]]:
    """(methods, data attributes) a Protocol declares, its bases' included."""
    methods, data = set(), set()
    for klass in protocol.__mro__:
        if klass in (object, typing.Protocol, typing.Generic):
            continue
        for name, value in vars(klass).items():
            if not name.startswith("_") and callable(value):
                methods.add(name)
        data |= {name for name in vars(klass).get("__annotations__", {})
                 if not name.startswith("_")}
    return methods, data


def shape(function) -> tuple:
    """What must agree: each parameter's name, kind, default and annotation (as written:
    the modules use `from __future__ import annotations`), and the return annotation."""
    signature = inspect.signature(function)
    return (tuple((p.name, p.kind, p.default, p.annotation)
                  for p in signature.parameters.values()), signature.return_annotation)


def method_cases(protocols, classes):
    return [pytest.param(protocol, name, cls, id=f"{cls.__name__}.{name}")
            for protocol in protocols for name in sorted(members(protocol)[0])
            for cls in classes]


def test_store_combines_every_concern_and_adds_only_its_own_life():
    methods, data = members(Store)
    concern_methods = set().union(*(members(c)[0] for c in CONCERNS))
    assert concern_methods <= methods
    assert methods - concern_methods == {"check_ready", "close", "start_background_tasks"}
    assert data == {"root", "can_resend_jobs"}


def test_the_concerns_do_not_overlap():
    seen: dict[str, str] = {}
    for concern in CONCERNS:
        for name in members(concern)[0]:
            assert name not in seen, f"{name} is in both {seen[name]} and {concern.__name__}"
            seen[name] = concern.__name__


@pytest.mark.parametrize("protocol, name, cls", method_cases([Store], BACKENDS))
def test_every_backend_has_the_method_with_the_protocols_signature(protocol, name, cls):
    assert callable(getattr(cls, name, None)), f"{cls.__name__} lacks {name}"
    assert shape(getattr(cls, name)) == shape(getattr(protocol, name))


@pytest.mark.parametrize("protocol, name, cls", method_cases([Store], BACKENDS))
def test_every_annotation_resolves_to_the_same_types(protocol, name, cls):
    hints = typing.get_type_hints(getattr(cls, name))
    assert hints == typing.get_type_hints(getattr(protocol, name))


@pytest.mark.parametrize("protocol, name, cls", method_cases([StoredExamples], LOGS))
def test_every_example_log_has_the_method_with_the_protocols_signature(protocol, name, cls):
    assert shape(getattr(cls, name)) == shape(getattr(protocol, name))
    assert typing.get_type_hints(getattr(cls, name)) == \
        typing.get_type_hints(getattr(protocol, name))


@pytest.mark.parametrize("cls", BACKENDS)
def test_every_backend_says_whether_it_can_resend_jobs(cls):
    assert isinstance(cls.can_resend_jobs, bool)


def test_only_a_queue_sends_a_job_again():
    assert RedisStore.can_resend_jobs and not LocalStore.can_resend_jobs


def test_each_store_and_its_example_log_are_structural_instances(any_store, tmp_path):
    store = open_store(any_store, tmp_path / "heads")
    try:
        assert isinstance(store, Store)
        for concern in CONCERNS:
            assert isinstance(store, concern)
        assert isinstance(store.root, Path)
        store.create("h", {"uuid": "h", "config": {}, "labels": None, "revision": 0})
        log = store.examples("h")
        assert isinstance(log, StoredExamples)
        log.append([{"text": "hi", "label": "a"}])
        assert [row["id"] for row in log.read()] == [1]
    finally:
        close_store(store)


def test_start_background_tasks_is_nothing_for_the_local_folder(tmp_path):
    store = LocalStore(tmp_path / "heads")
    store.start_background_tasks()
    store.close()


# --- nothing outside ph/stores reaches past the interface ----------------------------------

OUTSIDE = sorted(p for p in (ROOT / "ph").rglob("*.py") if "stores" not in p.relative_to(ROOT).parts)
# `ph worker` runs only on a distributed store (it checks) and uses RedisStore's own
# object store, URL and sweeper.
DISTRIBUTED_ONLY = {ROOT / "ph" / "adapters" / "training_worker.py"}
STORE_ATTRIBUTE = re.compile(r"\bstore\.([A-Za-z_]\w*)")


def test_nothing_outside_the_stores_calls_a_private_method_or_asks_for_the_backend():
    found = [(path.relative_to(ROOT), name) for path in OUTSIDE
             for name in STORE_ATTRIBUTE.findall(path.read_text(encoding="utf-8"))
             if name.startswith("_") or name == "distributed"]
    assert found == []


def test_everything_used_outside_the_stores_is_in_the_interface():
    methods, data = members(Store)
    found = {(path.relative_to(ROOT), name) for path in OUTSIDE if path not in DISTRIBUTED_ONLY
             for name in STORE_ATTRIBUTE.findall(path.read_text(encoding="utf-8"))}
    assert {(path, name) for path, name in found if name not in methods | data} == set()
