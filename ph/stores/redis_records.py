"""RedisStore's head records (base.Records): the records and their configs in Redis, their
weights in the object store, the head list and followers, each record's signature from
memory while the change listener (redis_changes) trusts it. Every write that stops
naming objects queues them for removal in that same write (leases.SWITCH, or the
transaction of a create or delete). The key and object layout: redis_store.
"""
from __future__ import annotations

import io
import json
import time
import uuid as uuidlib
from typing import Any

import torch

from ..errors import ConflictError, HeadNotFoundError, NotFoundError, StoreUnavailableError, \
    WeightsError
from .base import check_uuid, content_id, weights_named
from .fileio import load_state
from .leases import Leases
from .redis_access import redis_errors
from .redis_blobs import RedisBlobs
from .redis_changes import ChangeListener
from .sweeper import GC_PREFIX

INLINE_MAX_BYTES = 256 * 1024  # weights up to this size also live in Redis (add-ins: ~80 KB)


class RedisRecords(RedisBlobs):
    """base.Records for RedisStore, which gives `changes` (its ChangeListener), `leases`,
    `_switch` (the registered leases.SWITCH script) and `_configs` (content id -> config
    JSON, immutable); the objects it lets go of go through RedisBlobs.forget_objects."""

    changes: ChangeListener
    leases: Leases
    _switch: Any
    _configs: dict[str, str]

    def exists(self, uuid: str) -> bool:
        try:
            self.signature(uuid)
            return True
        except NotFoundError:
            return False

    def signature(self, uuid: str) -> tuple:
        """Changes whenever the head's record is rewritten; from memory while the change
        notifications are flowing (no round trip), else from Redis."""
        sig = self.changes.known(uuid)
        if sig is not None:
            return sig
        return self._signature_of(self._read_raw(uuid))

    def _signature_of(self, record: dict) -> tuple:
        """Incarnation, version and write id: the write id differs even where a failover
        lost a write and the version number is given out again."""
        return (record["inc"], record["v"], record.get("w"))

    @redis_errors
    def _read_raw(self, uuid: str) -> dict:
        mark = self.changes.mark()
        raw = self.redis.get(self.key("h", check_uuid(uuid)))
        if raw is None:
            self.changes.forget(uuid)
            raise HeadNotFoundError(f"no head with uuid '{uuid}'; create it with "
                                    "create_head(uuid=...) or list them with list_heads()")
        record = json.loads(raw)
        self.changes.remember(uuid, self._signature_of(record), mark)
        return record

    def read(self, uuid: str) -> dict:
        record = self._read_raw(uuid)
        record["config"] = json.loads(self._config(record.pop("config_id")))
        return record

    @redis_errors
    def _config(self, config_id: str) -> str:
        text = self._configs.get(config_id)
        if text is None:
            raw = self.redis.get(self.key("cfg", config_id))
            if raw is None:
                raise WeightsError(f"config {config_id} of a head is missing from Redis; "
                                   "create the head again")
            text = self._configs[config_id] = raw.decode("utf-8")
        return text

    @redis_errors
    def _store_config(self, config: dict) -> str:
        text = json.dumps(config, sort_keys=True, separators=(",", ":"))
        config_id = content_id(text.encode("utf-8"))
        if config_id not in self._configs:
            self.redis.set(self.key("cfg", config_id), text)
            self._configs[config_id] = text
        return config_id

    def _stored(self, record: dict) -> dict:
        """The record as kept in Redis: config by content id."""
        stored = {k: v for k, v in record.items() if k != "config"}
        stored["config_id"] = self._store_config(record["config"])
        return stored

    @redis_errors
    def create(self, uuid: str, record: dict, state: dict | None = None,
               replace: bool = False) -> None:
        """Publish a new head (its weights uploaded first) in one Redis write; fails if
        the uuid exists, unless `replace`, which swaps the old head for the new one in
        that same write (there is no moment without a head) and then removes the old
        one's objects."""
        check_uuid(uuid)
        inc = uuidlib.uuid4().hex[:12]
        record = {**record, "inc": inc, "v": 1, "w": uuidlib.uuid4().hex[:12]}
        if state is not None:
            name = f"heads/{uuid}/{inc}/weights-1-{uuidlib.uuid4().hex[:8]}.pt"
            self._put_weights(uuid, inc, name, state)
            record.update(revision=1, weights=name)
        text = json.dumps(self._stored(record))
        old = self.redis.get(self.key("h", uuid)) if replace else None
        with self.redis.pipeline() as pipe:  # one transaction (MULTI/EXEC)
            pipe.set(self.key("h", uuid), text, nx=not replace)
            pipe.zadd(self.key("heads"), {uuid: 0})
            pipe.publish(self.key("changes"), uuid)
            gone = self._drop_incarnation(pipe, uuid, json.loads(old)["inc"]) if old else []
            created = pipe.execute()[0]
        if not created and self._read_raw(uuid).get("inc") == inc:
            created = True  # our own create, sent again by a client retry
        if not created:
            if record.get("weights"):
                self.forget_objects([record["weights"]],
                                    f"head '{uuid}' already exists; the weights uploaded for it")
            raise ConflictError(f"head '{uuid}' already exists")
        self.changes.forget(uuid)
        if gone:
            self.forget_objects(gone, f"head '{uuid}' was replaced; the old head's objects",
                                queued=True)

    def write(self, uuid: str, record: dict) -> dict:
        """Rewrite a head's record if it has not changed since `record` was read (and,
        inside a training run, only while the run holds its lease): leases.SWITCH."""
        return self._rewrite(uuid, record, [])

    @redis_errors
    def _rewrite(self, uuid: str, record: dict, dropped: list[str]) -> dict:
        """`write`, with `dropped`: objects the new record no longer names, queued for
        removal in that same write (the caller then removes them,
        `forget_objects(queued=True)`)."""
        new = {**record, "v": record["v"] + 1, "w": uuidlib.uuid4().hex[:12]}
        self._publish(uuid, f"{record['inc']}:{record['v']}", new, dropped)
        return new

    @redis_errors
    def _save_weights(self, uuid: str, record: dict, revision: int, state: dict) -> str:
        """Uploaded under a name of their own (immutable: a cached copy never goes stale)."""
        name = f"heads/{uuid}/{record['inc']}/weights-{revision}-{uuidlib.uuid4().hex[:8]}.pt"
        self._put_weights(uuid, record["inc"], name, state)
        return name

    def _put_weights(self, uuid: str, inc: str, name: str, state: dict) -> None:
        """Upload weights; small ones (an add-in) are also kept in Redis, in the head
        incarnation's NS:inline hash, so a cold load costs no object-store round trip.
        The object stays the durable copy (and the sweeper's view is unchanged)."""
        data = _tensor_bytes(state)
        self.objects.put(name, data)
        if len(data) <= INLINE_MAX_BYTES:
            self.redis.hset(self.key("inline", uuid, inc), name, data)

    @redis_errors
    def _switch_weights(self, uuid: str, old: dict, new: dict) -> dict:
        """One fenced write (leases.SWITCH) that also queues the old weights for removal."""
        dropped = sorted(weights_named(old) - weights_named(new))
        try:
            new = self._rewrite(uuid, new, dropped)
        except (ConflictError, HeadNotFoundError):  # refused for sure: nothing names it
            if new["weights"] not in weights_named(old):  # (a roll-back uploaded nothing)
                self.redis.hdel(self.key("inline", uuid, new["inc"]), new["weights"])
                self.forget_objects([new["weights"]],
                                    f"head '{uuid}': the refused upload of new weights")
            raise
        if dropped:
            self.redis.hdel(self.key("inline", uuid, old["inc"]), *dropped)
        self.forget_objects(dropped, f"head '{uuid}' has new weights; the old weights",
                            queued=True)
        return new

    def _publish(self, uuid: str, expected: str, new: dict, dropped: list[str]) -> None:
        """Switch the record to `new` if it is still at `expected` ("inc:v"), queueing
        the `dropped` objects for removal in that same write (leases.SWITCH)."""
        token = self.leases.token_in_thread(uuid)
        result = self._switch(keys=[self.key("h", uuid), self.key("train", uuid),
                                    self.key("changes"), self.key("gc")],
                              args=[expected, json.dumps(self._stored(new)), token, uuid,
                                    new["w"], time.time(), *dropped])
        self.changes.forget(uuid)
        if result == -1:
            raise HeadNotFoundError(f"head '{uuid}' was deleted meanwhile")
        if result == -2:
            raise ConflictError(f"head '{uuid}' was changed by another call meanwhile; nothing "
                                "was written: try again")
        if result == -3:
            raise ConflictError(f"head '{uuid}': this training run lost its lease (it was too "
                                "slow to renew it, or Redis lost it), so its weights were not "
                                "published; the head keeps its current weights. Train again")

    def read_current(self, uuid: str) -> tuple[dict, dict | None]:
        """(record, its weights), read together even while a writer switches them."""
        for _ in range(5):
            record = self.read(uuid)
            try:
                return record, self.read_weights(uuid, record)
            except FileNotFoundError:
                continue  # switched to newer weights between the two reads: read again
        raise WeightsError(f"head '{uuid}': its weights object {record.get('weights')} is missing "
                           f"from the object store; load weights again with load_weights")

    @redis_errors
    def read_weights(self, uuid: str, record: dict) -> dict | None:
        if not record.get("weights"):
            return None
        inline = self.redis.hget(self.key("inline", uuid, record["inc"]), record["weights"])
        if inline is not None:
            return load_state(io.BytesIO(inline))
        try:
            return load_state(self.objects.cached(record["weights"]))
        except StoreUnavailableError:
            raise
        except Exception:  # noqa: BLE001  (a cached copy a crash cut short: fetch it again)
            self.objects.forget_cached(record["weights"])
            return load_state(self.objects.cached(record["weights"]))

    @redis_errors
    def delete(self, uuid: str) -> None:
        """Remove a head in one Redis write, which also queues its objects for removal;
        they go at once if the object store answers, else when the sweeper next runs."""
        raw = self.redis.get(self.key("h", check_uuid(uuid)))
        if raw is None:
            raise HeadNotFoundError(f"no head with uuid '{uuid}' to delete")
        with self.redis.pipeline() as pipe:  # one transaction (MULTI/EXEC)
            pipe.delete(self.key("h", uuid))
            pipe.zrem(self.key("heads"), uuid)
            pipe.delete(self.key("latest", uuid))  # its last job's record expires by itself
            pipe.publish(self.key("changes"), uuid)
            gone = self._drop_incarnation(pipe, uuid, json.loads(raw)["inc"])
            pipe.execute()
        self.changes.forget(uuid)
        self.forget_objects(gone, f"head '{uuid}' was deleted; its objects", queued=True)

    def _drop_incarnation(self, pipe: Any, uuid: str, inc: str) -> list[str]:
        """Add to `pipe` (the transaction that deletes or replaces the record) the end of
        incarnation `inc`: its example log's key goes, and every object under its prefix
        is queued for removal. Returns the NS:gc entry."""
        entry = f"{GC_PREFIX}heads/{uuid}/{inc}/"
        pipe.delete(self.key("ex", uuid, inc))
        pipe.delete(self.key("inline", uuid, inc))
        pipe.hset(self.key("gc"), entry, time.time())
        return [entry]

    @redis_errors
    def list(self, offset: int = 0, limit: int | None = None, prefix: str = "") -> list[str]:
        """Uuids in sorted order, from `offset` (at most `limit`); every score is 0, so
        the set is ordered by name and a prefix is a lexicographic range."""
        if limit == 0:
            return []
        if prefix:
            page = {"start": offset, "num": -1 if limit is None else limit}
            found = self.redis.zrangebylex(self.key("heads"), b"[" + prefix.encode(),
                                           b"(" + prefix.encode() + b"\xff", **page)
            return [u.decode() for u in found]
        stop = -1 if limit is None else offset + limit - 1
        return [u.decode() for u in self.redis.zrange(self.key("heads"), offset, stop)]

    @redis_errors
    def count(self) -> int:
        return self.redis.zcard(self.key("heads"))

    # --- followers --------------------------------------------------------------------------
    @redis_errors
    def add_follower(self, parent: str, child: str) -> None:
        self.redis.sadd(self.key("fol", check_uuid(parent)), check_uuid(child))

    @redis_errors
    def remove_follower(self, parent: str, child: str) -> None:
        self.redis.srem(self.key("fol", check_uuid(parent)), check_uuid(child))

    @redis_errors
    def follower_count(self, parent: str) -> int:
        return self.redis.scard(self.key("fol", check_uuid(parent)))

    @redis_errors
    def followers(self, parent: str) -> list[str]:
        return sorted(m.decode() for m in self.redis.smembers(self.key("fol", check_uuid(parent))))

    # --- the head list -----------------------------------------------------------------------
    @redis_errors
    def write_head_list(self, record: dict) -> None:
        self.redis.set(self.key("list"), json.dumps(record))
        self.redis.publish(self.key("changes"), "")

    @redis_errors
    def read_head_list(self) -> dict | None:
        raw = self.redis.get(self.key("list"))
        return json.loads(raw) if raw is not None else None


def _tensor_bytes(state: dict) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()
