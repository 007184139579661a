"""RedisStore's change listener: seeing other servers' writes without a cost per predict.

Every write publishes the head's uuid on NS:changes (see redis_store); each process
keeps the signatures it has read in memory (`ChangeListener`) and drops one when its
uuid is published. While the subscription is down, nothing is trusted from memory
(every call reads Redis), and on reconnecting everything is dropped once.
"""
from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid as uuidlib
from typing import Any

log = logging.getLogger("ph.stores")
# The change listener's liveness: it publishes an echo every ECHO_EVERY_S; memory is
# trusted only while an echo came back in the last ECHO_STALE_S (a silent network loss
# then costs at most that long of stale answers).
ECHO_EVERY_S, ECHO_TIMEOUT_S, ECHO_STALE_S = 1.0, 2.0, 3.0


class ChangeListener:
    """Head signatures kept in memory while a thread of its own, on a Redis client of its
    own (`client`), follows the changes channel `channel`, until `close`."""

    def __init__(self, client: Any, channel: str):
        self.client, self.channel = client, channel
        self.sigs: dict[str, tuple] = {}  # uuid -> signature, valid while subscribed
        self._changes = 0  # bumped on every notification: a read that raced one is not kept
        self._lock = threading.Lock()
        self.subscribed = threading.Event()
        self._echoed = 0.0  # when this listener last heard its own echo
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._listen, daemon=True,
                                        name="ph-store-changes")
        self._thread.start()

    def trusted(self) -> bool:
        """Signatures in memory are current: subscribed, and Redis echoed recently."""
        return self.subscribed.is_set() and time.monotonic() - self._echoed < ECHO_STALE_S

    def known(self, uuid: str) -> tuple | None:
        """The head's signature from memory, if there is one that can be trusted."""
        return self.sigs.get(uuid) if self.trusted() else None

    def mark(self) -> int:
        """Taken before reading a record: `remember` keeps what was read only if no
        notification arrived since."""
        return self._changes

    def remember(self, uuid: str, sig: tuple, mark: int) -> None:
        with self._lock:  # not if a notification arrived since the read began
            if mark == self._changes and self.trusted():
                self.sigs[uuid] = sig

    def forget(self, uuid: str) -> None:
        self.sigs.pop(uuid, None)

    def close(self) -> None:
        """End the thread and let go of its connection."""
        self._closed.set()
        self._thread.join(timeout=3)
        with contextlib.suppress(Exception):
            self.client.close()

    def _listen(self) -> None:
        import redis
        while not self._closed.is_set():
            pubsub = self.client.pubsub()
            try:
                pubsub.subscribe(self.channel)
                while (pubsub.get_message(timeout=1.0) or {}).get("type") != "subscribe":
                    if self._closed.is_set():  # from the confirmation on, no change is missed
                        return
                self._dropped_all()
                self.subscribed.set()
                self._follow(pubsub)
            except (redis.RedisError, OSError) as exc:
                log.info("change notifications interrupted (%s); reading Redis on every call "
                         "until they are back", exc)
            finally:
                self.subscribed.clear()
                self._dropped_all()
                with contextlib.suppress(Exception):
                    pubsub.close()
            self._closed.wait(0.5)

    def _follow(self, pubsub) -> None:
        """Drop the signature of every head whose uuid is published. Every ECHO_EVERY_S this
        listener publishes an echo of its own on the changes channel: an echo that does
        not come back in time means notifications are not arriving (a connection that
        died without closing, a subscription left on an old primary after a failover)."""
        import redis
        echo = f"!echo:{uuidlib.uuid4().hex}"  # '!' is never part of a uuid
        sent = time.monotonic()
        answered = sent - 1  # waiting for the first echo
        self.client.publish(self.channel, echo)
        while not self._closed.is_set():
            message = pubsub.get_message(timeout=0.5)
            now = time.monotonic()
            if message is not None and message["type"] == "message":
                data = message["data"].decode()
                if data == echo:
                    answered = self._echoed = now
                elif not data.startswith("!"):  # other servers' echoes change nothing
                    with self._lock:
                        self._changes += 1
                        self.sigs.pop(data, None)
            elif message is not None and message["type"] == "subscribe":
                # redis-py lost the connection, reconnected and subscribed again on its
                # own (its retry): whatever was published meanwhile was missed
                self._dropped_all()
            if answered < sent and now - sent > ECHO_TIMEOUT_S:
                raise redis.ConnectionError(f"no echo from Redis for {ECHO_TIMEOUT_S} s")
            if now - sent >= ECHO_EVERY_S and answered >= sent:
                sent = now
                self.client.publish(self.channel, echo)

    def _dropped_all(self) -> None:
        with self._lock:
            self._changes += 1
            self.sigs.clear()
