"""Leases and fencing for the distributed store (RedisStore and its sweeper).

A lease is a Redis key set with NX and an expiry to a token only its holder knows; the
holder renews it while it works (so a long upload keeps it) and a dead holder's lease
frees itself when it expires. Fencing: a write that must come from a lease's holder, or
from a writer that read the latest state, is one Lua script that checks and writes in
the same step, so nobody can slip in between the check and the write.

Every Lua script the store runs is here, each annotated as redis-py's lock.py does: its
KEYS, its ARGV, and what it returns. A script may run twice for one call (redis-py sends
a command again when a reply was lost), so every write script also counts "this very
write, already done" as done: the write id (ARGV) makes a second run recognisable.
"""
from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid as uuidlib
from typing import Any, Callable, Iterator

from ..errors import ConflictError

log = logging.getLogger("ph.stores")

# A head record is replaced only if its incarnation and version are the ones the writer
# read (and, for a training run, only while the run still holds the head's training
# lease): a worker that lost its lease or raced a newer write cannot publish. The
# incarnation counts too: a head deleted and created again starts at version 1 again.
# KEYS[1] - the record (NS:h:<uuid>)
# KEYS[2] - the head's training lease (NS:train:<uuid>)
# KEYS[3] - the changes channel (NS:changes)
# KEYS[4] - the removal queue (NS:gc)
# ARGV[1] - the "inc:v" the writer read
# ARGV[2] - the new record (JSON)
# ARGV[3] - the run's lease token ('' for a write outside a training run)
# ARGV[4] - the uuid (published on the changes channel)
# ARGV[5] - the new record's write id
# ARGV[6] - the time (the removal queue's value)
# ARGV[7...] - objects the new record no longer names, queued for removal in this write
# return 1 written (or written before by this very write), -1 no record,
#        -2 changed since it was read, -3 the run's lease is lost
SWITCH = """
local cur = redis.call('GET', KEYS[1])
if not cur then return -1 end
local rec = cjson.decode(cur)
if rec['w'] == ARGV[5] then return 1 end
if rec['inc'] .. ':' .. tostring(rec['v']) ~= ARGV[1] then return -2 end
if ARGV[3] ~= '' and redis.call('GET', KEYS[2]) ~= ARGV[3] then return -3 end
redis.call('SET', KEYS[1], ARGV[2])
for i = 7, #ARGV do redis.call('HSET', KEYS[4], ARGV[i], ARGV[6]) end
redis.call('PUBLISH', KEYS[3], ARGV[4])
return 1
"""

# An example log's state switches only from the state the writer read.
# KEYS[1] - the log's state (NS:ex:<uuid>:<inc>)
# KEYS[2] - the removal queue (NS:gc)
# ARGV[1] - the write id of the state the writer read ('' for none)
# ARGV[2] - the new state (JSON, with its write id under 'w')
# ARGV[3] - the new state's write id
# ARGV[4] - the time (the removal queue's value)
# ARGV[5...] - chunks the new state no longer names, queued for removal in this write
# return 1 switched (or switched before by this very write), 0 changed since it was read
EXAMPLES_SWITCH = """
local cur = redis.call('GET', KEYS[1])
local written = ''
if cur then written = cjson.decode(cur)['w'] or '' end
if written == ARGV[3] then return 1 end
if written ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
for i = 5, #ARGV do redis.call('HSET', KEYS[2], ARGV[i], ARGV[4]) end
return 1
"""

# A job record is written unless the writer expects an attempt and the stored job has
# ended or moved on to another attempt.
# KEYS[1] - the job's record (NS:job:<id>)
# ARGV[1] - the new record (JSON, with its write id under 'w')
# ARGV[2] - seconds to keep it ('' for no expiry: a queued or running job)
# ARGV[3] - the attempt the writer expects to be current ('' to write whatever is stored)
# ARGV[4] - the new record's write id
# return 1 written (or written before by this very write), 0 refused
JOB_WRITE = """
local cur = redis.call('GET', KEYS[1])
if ARGV[3] ~= '' then
  if not cur then return 0 end
  local job = cjson.decode(cur)
  if job['w'] ~= ARGV[4] then
    if (job['state'] ~= 'queued' and job['state'] ~= 'running')
        or tostring(job['attempt'] or 1) ~= ARGV[3] then return 0 end
  end
end
if ARGV[2] ~= '' then redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
else redis.call('SET', KEYS[1], ARGV[1]) end
return 1
"""

# KEYS[1] - the lease
# ARGV[1] - the holder's token
# ARGV[2] - the new expiry, in milliseconds from now
# return 1 renewed, 0 not held by this token (it expired, or another holder has it)
RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""

# KEYS[1] - the lease
# ARGV[1] - the holder's token
# return 1 released, 0 not held by this token (it expired while held)
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class Leases:
    """Leases in one Redis, renewed by a thread of this process while held.

    `call` runs a Redis call and turns Redis being unreachable into the store's
    StoreUnavailableError (RedisStore.call)."""

    def __init__(self, redis: Any, call: Callable[..., Any]):
        self.redis = redis
        self.call = call
        self._renew = redis.register_script(RENEW)
        self._release = redis.register_script(RELEASE)
        self._tokens = threading.local()  # name -> token of the lease this thread holds

    @contextlib.contextmanager
    def held(self, key: str, lease_s: float, wait_s: float, busy: str) -> Iterator[str]:
        """Hold the lease `key` for the block (yields its token), renewed every lease_s / 3.

        Raises:
            ConflictError: `busy`, when another holder kept it for `wait_s`.
            StoreUnavailableError: Redis cannot be reached.
        """
        token, lease_ms = uuidlib.uuid4().hex, int(lease_s * 1000)
        deadline = time.monotonic() + wait_s
        while not self.call(self.redis.set, key, token, nx=True, px=lease_ms):
            if self.call(self.redis.get, key) == token.encode():
                break  # our own SET, sent again by a client retry
            if time.monotonic() > deadline:
                raise ConflictError(busy)
            time.sleep(0.02)
        done = threading.Event()
        renewer = threading.Thread(target=self._keep, args=(key, token, lease_ms, done),
                                   daemon=True)
        renewer.start()
        try:
            yield token
        finally:
            done.set()
            renewer.join()
            with contextlib.suppress(Exception):
                if not self._release(keys=[key], args=[token]):
                    log.warning("%s expired while held (the holder stalled for longer than "
                                "its lease)", key)

    @contextlib.contextmanager
    def held_in_thread(self, name: str, key: str, lease_s: float, wait_s: float,
                       busy: str) -> Iterator[str]:
        """`held`, with the token kept for this thread under `name` while the block runs,
        so that the writes it makes are fenced by it (`token_in_thread`)."""
        with self.held(key, lease_s, wait_s, busy) as token:
            setattr(self._tokens, name, token)
            try:
                yield token
            finally:
                delattr(self._tokens, name)

    def token_in_thread(self, name: str) -> str:
        """The token of the lease `name` this thread holds ('' for none): SWITCH's ARGV[3]."""
        return getattr(self._tokens, name, None) or ""

    def _keep(self, key: str, token: str, lease_ms: int, done: threading.Event) -> None:
        import redis
        while not done.wait(lease_ms / 3000):
            try:
                if not self._renew(keys=[key], args=[token, lease_ms]):
                    log.warning("lease %s was lost; a training run holding it will not "
                                "publish", key)
                    return
            except redis.RedisError as exc:  # keep trying until the lease would expire
                log.warning("could not renew lease %s: %s", key, exc)
