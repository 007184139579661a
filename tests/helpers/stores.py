"""Store helpers: the test bucket, closing a store, what a store keeps of the examples,
records and weights to write, polling for a change to arrive, a plain Redis client on a
store, and untrained weights saved to a file."""
from __future__ import annotations

import time
from pathlib import Path

import torch

from helpers.heads import small_config

TEST_BUCKET = "ph-test"
NOTIFY_S = 1.0  # how long a change notification may take to reach another server


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


def record(uuid: str, **extra) -> dict:
    """A head record as a store keeps it (the fields every backend has)."""
    return {"uuid": uuid, "config": {"Model": {"type": "PersonalizedHead"}}, "labels": None,
            "revision": 0, **extra}


def weights(value: float) -> dict:
    """A small state dict whose weight is `value` everywhere."""
    return {"fc.weight": torch.full((2, 3), value), "fc.bias": torch.zeros(2)}


def eventually(check, timeout: float = NOTIFY_S):
    """Poll `check` until it returns a true value (returned) or `timeout` passes (fails)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"not within {timeout} s: {check.__doc__ or check}"
        time.sleep(0.01)


def client_of(store):
    """A plain client (redis.Redis) on the store's Redis, for looking at its keys."""
    import redis
    return redis.Redis.from_url(store.url)


def save_untrained_weights(path: Path, seed: int) -> None:
    """The untrained weights of a `small_config` head built from `seed`, saved to `path`."""
    from ph.config.components import UserCode
    from ph.heads.validate import validate_config
    from ph.modeling.engine import make_model
    model = make_model(validate_config(small_config()), UserCode(), seed=seed)
    torch.save(model.state_dict(), path)
