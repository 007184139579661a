"""Cold start from a shared head: child heads that answer with their parent's weights
until they first train.

A child's record names its `parent` and holds no weights. While it has none it
*follows* the parent: a predict resolves to the parent's loaded head (one load, one
bank slot, the parent's latest revision), so 10,000 new users of one shared head cost
10,000 small records on disk and no model memory. Its first training starts from the
parent's current weights and label map and gives it weights of its own; from then on
it is a head like any other, and the parent's later trainings do not touch it.

Rules that keep this simple and safe:
- A child has its parent's Model and Inference sections (it answers with the parent's
  model); only Trainer may differ.
- The parent must exist, and must not itself be an untrained child (no chains of
  followers: an untrained child always resolves in one hop). A trained child may be
  a parent.
- A head that untrained children follow cannot be deleted or replaced (409), so a
  follower never loses its parent and a cycle cannot form.
"""
from __future__ import annotations

import threading
from typing import Mapping

from typing import Any

from ..config.schema import SECTION_KEYS, config_diff, deep_merge
from ..errors import BadInputError, ConfigError, ConflictError, NotFoundError, did_you_mean
from ..stores import check_uuid


def follows_parent(record: Mapping) -> str | None:
    """The parent a head's record follows: set while the head is a child with no
    weights of its own, None otherwise."""
    parent = record.get("parent")
    return parent if parent and not record.get("weights") else None


def depends_on(record: Mapping, uuid: str) -> bool:
    """Whether `record`'s head needs head `uuid`: it follows it (an untrained child) or
    is an add-in on it (trained or not: it is pinned to one of its revisions)."""
    return follows_parent(record) == uuid or bool(record.get("addin") and record.get("parent") == uuid)


def check_parent(uuid: str, parent: Any) -> str:
    """The `parent` argument of create_head, checked (a valid uuid, not the head itself)."""
    if not isinstance(parent, str) or not parent:
        raise BadInputError(f"parent: give the uuid of an existing head, got {parent!r:.60}")
    check_uuid(parent)
    if parent == uuid:
        raise BadInputError(f"parent: head '{uuid}' cannot be its own parent; name the shared "
                            "head it should start from")
    return parent


def read_parent(store, parent: str) -> dict:
    """The record of the head a new child will follow (call under the parent's lock).

    Raises:
        NotFoundError: no such head.
        BadInputError: the parent itself follows a head (no chains of followers).
    """
    try:
        record = store.read(parent)
    except NotFoundError:
        raise NotFoundError(f"parent: no head with uuid '{parent}'; create the shared head first "
                            f"(create_head(uuid='{parent}', ...)), then its children") from None
    grandparent = follows_parent(record)
    if grandparent:
        raise BadInputError(f"parent: head '{parent}' has not trained yet and itself follows "
                            f"'{grandparent}'; use parent='{grandparent}', or train '{parent}' first")
    return record


def refuse_if_followed(store, uuid: str, doing: str) -> None:
    """Raise a ConflictError if untrained children or add-ins depend on `uuid` (call under
    its lock).

    Each recorded follower is checked against its record; links left by trained or
    deleted children, or by a crashed create, are removed on the way. Costs one read per
    recorded follower: only delete and replace pay it, never predict."""
    followers, addins = [], []
    for child in store.followers(uuid):
        try:
            record = store.read(child)
            if depends_on(record, uuid):
                (addins if record.get("addin") else followers).append(child)
                continue
        except NotFoundError:
            pass
        store.remove_follower(uuid, child)
    reasons = []
    if followers:
        reasons.append(f"{len(followers)} untrained child head(s) answer with its weights "
                       f"({_shown(followers)}). Train each child first (train_head gives it "
                       "weights of its own) or delete it (delete_head)")
    if addins:
        reasons.append(f"{len(addins)} add-in head(s) are trained on it ({_shown(addins)}). Delete "
                       "them first (delete_head)")
    if reasons:
        raise ConflictError(f"head '{uuid}' cannot be {doing}: {'; '.join(reasons)}, then try again")


def _shown(uuids: list[str]) -> str:
    return ", ".join(f"'{c}'" for c in uuids[:5]) + (" ..." if len(uuids) > 5 else "")


def merge_trainer_only(base: dict, overrides: Mapping, doing: str, why: str) -> dict:
    """`base` with `overrides` deep-merged, where only the Trainer section may change.

    Args:
        base: the full config the result must keep Model and Inference of.
        overrides: a partial config.
        doing: what the caller is doing, for messages ("train_head").
        why: why Model and Inference may not change, and what to do instead.
    Raises:
        ConfigError: unknown sections, or a change to Model or Inference.
    """
    unknown = [k for k in overrides if k not in SECTION_KEYS]
    if unknown:
        raise ConfigError([f"{k}: unknown key{did_you_mean(k, SECTION_KEYS)}; {doing} takes "
                           "Trainer (and Model and Inference only as the head has them)"
                           for k in unknown])
    merged = deep_merge(base, overrides)
    for section in ("Model", "Inference"):
        if merged[section] != base[section]:
            changes = "; ".join(config_diff(base[section], merged[section], section)[:5])
            raise ConfigError(f"{doing} cannot change {section} ({changes}): {why}")
    return merged


class FollowMap:
    """child uuid -> (signature of its record, parent uuid) for the untrained children this
    process has seen: a child's predict then costs a stat of its record and one of its
    parent's, with no read. Bounded (oldest entries forgotten first); a forgotten
    child costs one read of its small record on its next call."""

    def __init__(self, max_entries: int = 200_000):
        self.max_entries = max_entries
        self._map: dict[str, tuple[tuple, str]] = {}
        self._lock = threading.Lock()

    def get(self, uuid: str, signature: tuple) -> str | None:
        entry = self._map.get(uuid)  # a dict read needs no lock
        return entry[1] if entry is not None and entry[0] == signature else None

    def put(self, uuid: str, signature: tuple, parent: str) -> None:
        with self._lock:
            self._map.pop(uuid, None)
            self._map[uuid] = (signature, parent)
            while len(self._map) > self.max_entries:
                del self._map[next(iter(self._map))]

    def pop(self, uuid: str) -> None:
        with self._lock:
            self._map.pop(uuid, None)

    def __len__(self) -> int:
        return len(self._map)
