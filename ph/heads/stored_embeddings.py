"""A head's stored examples keep their embeddings in the head's store (base.Embeddings),
so that a training on any machine encodes only what no run encoded before: an
incremental run costs in proportion to its new examples, and a run whose texts are all
stored loads no encoder at all (in a `ph worker` on another machine too).

Before a run encodes its data, `run_embeddings` reads the head's packs for the run's
encoder, encodes the missing texts (through the encoder's cache and this machine's
embedding store) and stores them as one more pack; the rows are then pinned in the
encoder's cache while the run's data loader encodes (`EmbeddingCache.for_training`). Packs are merged once there are
MAX_PACKS. Only a shared model-backed encoder takes part: the hashing encoder costs less
than reading a pack.

A pack: MAGIC, then (dim, rows) as two little-endian uint32, the rows' keys (sha256 of the
text, 32 bytes each), then the rows as float32. A pack that does not parse is ignored and
merged away: it is derived data, encoded again.
"""
from __future__ import annotations

import contextlib
import logging
import struct
from typing import Any, Iterable, Iterator

import torch

from ..errors import StoreUnavailableError
from ..modeling.embedding_store import text_key

log = logging.getLogger("ph.encoders")
MAGIC = b"PHEMB1\n\0"
HEADER = struct.Struct("<8sII")
KEY_BYTES = 32
MAX_PACKS = 8  # a head with more is merged into one pack on its next run


@contextlib.contextmanager
def run_embeddings(store: Any, uuid: str, preprocessor: Any, inputs: Iterable) -> Iterator[None]:
    """A context in which the encoder answers every text of `inputs` from the head's
    stored embeddings (nothing to do for other encoders). The packs are read when the
    data loader enters it: a run that fails before, or a loader that never encodes the
    stored examples, costs nothing."""
    encoder = getattr(preprocessor, "shared_text_encoder", None)
    if encoder is None or not hasattr(encoder, "identity"):
        yield
        return
    wanted = {text_key(t): t for t in inputs if isinstance(t, str)}
    try:
        known = _stored(store, uuid, encoder, wanted) if wanted else {}
    except StoreUnavailableError as exc:  # only a cache: the run encodes as before
        log.warning("head '%s': its stored embeddings could not be read or written (%s); "
                    "encoding its examples instead", uuid, getattr(exc, "reason", exc))
        known = {}
    with encoder.cache.for_training({text: known[key] for key, text in wanted.items()
                                     if key in known}):
        yield


def _stored(store: Any, uuid: str, encoder: Any, wanted: dict[bytes, str]) -> dict[bytes, torch.Tensor]:
    packs = store.embedding_packs(uuid, encoder.identity)
    known: dict[bytes, torch.Tensor] = {}
    damaged = False
    for name, data in packs.items():
        rows = unpack(data, encoder.dim)
        if rows is None:
            log.warning("head '%s': embedding pack %s is damaged; it is merged away", uuid, name)
        damaged = damaged or rows is None
        known.update(rows or {})
    missing = [(key, text) for key, text in wanted.items() if key not in known]
    if missing:
        with encoder.cache.for_training():  # this machine's embedding store first
            vectors = encoder.encode([text for _, text in missing])
        fresh = {key: vector for (key, _), vector in zip(missing, vectors)}
        known.update(fresh)
        merge = damaged or len(packs) >= MAX_PACKS
        store.save_embedding_pack(uuid, encoder.identity, pack(known if merge else fresh),
                                  replaces=list(packs) if merge else ())
    return known


def pack(rows: dict[bytes, torch.Tensor]) -> bytes:
    keys = list(rows)
    matrix = torch.stack([rows[k] for k in keys]).to(torch.float32).contiguous()
    return (HEADER.pack(MAGIC, matrix.shape[1], len(keys)) + b"".join(keys)
            + matrix.numpy().tobytes())


def unpack(data: bytes, dim: int) -> dict[bytes, torch.Tensor] | None:
    """The pack's rows, or None when it is not a whole pack of `dim`-wide rows."""
    if len(data) < HEADER.size:
        return None
    magic, width, n = HEADER.unpack_from(data)
    keys_end = HEADER.size + n * KEY_BYTES
    if magic != MAGIC or width != dim or len(data) != keys_end + n * dim * 4:
        return None
    matrix = torch.frombuffer(bytearray(data[keys_end:]), dtype=torch.float32).view(n, dim)
    return {data[HEADER.size + i * KEY_BYTES:HEADER.size + (i + 1) * KEY_BYTES]: matrix[i]
            for i in range(n)}
