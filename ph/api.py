"""The ph actions as plain Python functions over one process-wide HeadRegistry.

These are what `ph.actions` registers with Jaseci and what `ph.server` serves over
HTTP: argument handling only (both call forms of the seed, JSON-able results).
"""
from __future__ import annotations

import math
import threading
from typing import Any

import torch

from . import settings
from .errors import BadInputError, ConfigError, PHError
from .stores.example_files import ExampleLimits
from .heads.policy import PathPolicy
from .heads.jobs import job_status, start_group_job, start_job, stop_job
from .heads.service import LIST_PAGE, HeadRegistry
from .heads.together import Each
from .stores import parse_store_url, store_url

_registry: HeadRegistry | None = None
_registry_lock = threading.Lock()


def setup(heads_dir: str | None = None, memory_budget: int | str | None = None,
          policy: PathPolicy | None = None, max_examples_per_call: int | None = None,
          max_examples_per_head: int | None = None, store: str | None = None) -> HeadRegistry:
    """(Re)create the process-wide registry; Jaseci calls this with a module's context.

    Args:
        heads_dir: folder of the heads (default: $PH_HEADS_DIR or ./heads).
        memory_budget: bytes of loaded heads to keep in memory (default: $PH_MEMORY_BUDGET
            or unlimited); accepts suffixes like "2GB".
        policy: which paths and code callers may use (default: all; the server passes its own).
        max_examples_per_call: examples one add_examples call may add (default:
            $PH_MAX_EXAMPLES_PER_CALL or 1000).
        max_examples_per_head: examples one head may hold (default:
            $PH_MAX_EXAMPLES_PER_HEAD or 100000).
        store: where heads live (default: $PH_STORE, else the heads folder): a distributed
            store's URL, redis://HOST:PORT/DB?objects=s3://BUCKET/PREFIX (see ph.stores);
            heads_dir is then only this machine's cache.

    Raises:
        ConfigError: the store URL is malformed (one line, naming `store` or PH_STORE, the
            password masked); the registry in use is then kept.
    """
    global _registry
    with _registry_lock:
        if _registry is not None and heads_dir is memory_budget is policy is store is None \
                and max_examples_per_call is max_examples_per_head is None:
            return _registry  # Jaseci calls setup() with no context on every module load
        url = store_url(store)
        if isinstance(url, str):  # before the registry in use is closed
            parse_store_url(url, "store" if store not in (None, "") else "PH_STORE")
        if _registry is not None:
            _registry.close()
        budget = parse_bytes(memory_budget) if memory_budget is not None \
            else settings.value("PH_MEMORY_BUDGET")
        _registry = HeadRegistry(heads_dir or settings.value("PH_HEADS_DIR"), policy, budget,
                                 ExampleLimits.from_env(max_examples_per_call,
                                                        max_examples_per_head),
                                 url)
        return _registry


def get_registry() -> HeadRegistry:
    """The process-wide registry, created from the environment on first use."""
    with _registry_lock:
        registry = _registry
    return registry if registry is not None else setup()


def create_head_list(config: dict | str | None = None, python: str | None = None,
                     config_file: str | None = None) -> None:
    """Set the default config (a dict or a YAML path) and user Python source for new heads."""
    get_registry().create_head_list(_one_config(config, config_file), python)


def create_head(uuid: str | None = None, config: dict | str | None = None,
                config_file: str | None = None, replace: bool = False,
                parent: str | None = None, addin: Any = None) -> str:
    """Create a head (config merged onto the head list's); returns its uuid.

    With `parent` (a head's uuid) the new head is its child: it answers with the parent's
    weights and labels until it first trains, then has weights of its own (cold start for
    a new user). `config` may then change Trainer only. With `addin` too ("lora",
    "adapter", "bias", or {"type", "args"}), it trains only a small add-in on the frozen
    parent (a few KB per user instead of a whole head)."""
    return get_registry().create_head(uuid, _one_config(config, config_file),
                                      _flag(replace, "replace"), parent, addin)


def predict(uuid: str, data: Any) -> Any:
    """The head's prediction for `data` (one input or a list), as plain JSON values."""
    return to_plain(get_registry().predict(uuid, data))


def predict_many(requests: list) -> list:
    """Answers for many heads at once: `requests` is a list of [uuid, data] pairs (or
    {"uuid", "data"} objects). Heads of one architecture answer in one stacked pass. A
    request that fails gets {"error", "message"} in its place; the others still answer."""
    pairs = [_request_pair(r, i) for i, r in enumerate(_as_list(requests, "requests"))]
    return [r.to_dict() if isinstance(r, PHError) else to_plain(r)
            for r in get_registry().predict_many(pairs)]


def train_head(uuid: str, config: dict | str | None = None, config_file: str | None = None,
               auto_update: bool = True, background: bool = False,
               incremental: bool = False, rebase: bool = False) -> dict:
    """Train a head; returns the summary, or `{"job_id": ...}` at once when `background`.

    Without a train_json in `config`, a head with stored examples trains on them; with
    one, on both. `incremental` starts from the current weights and trains on the
    examples added since the last run plus a replay sample of older ones. `rebase` (an
    add-in head) moves it onto its parent's current weights (see rebase_addins)."""
    registry = get_registry()
    config = _one_config(config, config_file)
    auto_update = _flag(auto_update, "auto_update")
    incremental = _flag(incremental, "incremental")
    rebase = _flag(rebase, "rebase")
    if _flag(background, "background"):
        return start_job(registry, uuid, config, auto_update, incremental, rebase)
    return to_plain(registry.train(uuid, config, auto_update, incremental=incremental,
                                   rebase=rebase))


def train_heads(uuids: list, config: dict | str | None = None, config_file: str | None = None,
                incremental: bool = True, rebase: bool = False, background: bool = False) -> dict:
    """Train many add-in heads together: one pass of their shared parent per step for all
    of them, each with its own data, optimizer and result (as its own run would give).
    Returns {"heads": {uuid: summary or {"error", "message"}}}, or with `background` one
    job's {"job_id", "uuids", "refused"} (train_status reports each head under "heads";
    stop_training(job_id, uuid) stops one head's run)."""
    registry = get_registry()
    uuids = _as_list(uuids, "uuids")
    config = _one_config(config, config_file)
    incremental, rebase = _flag(incremental, "incremental"), _flag(rebase, "rebase")
    if _flag(background, "background"):
        return start_group_job(registry, uuids, config, incremental, rebase)
    results = registry.train_together(uuids, incremental, rebase, Each(config=config))
    return {"heads": {uuid: r.to_dict() if isinstance(r, PHError) else to_plain(r)
                      for uuid, r in results.items()}}


def rebase_addins(parent: str, background: bool = True) -> dict:
    """Move the add-ins on `parent` that are pinned to an older revision onto its current
    weights: they are trained again together (train_heads with rebase: incrementally, on
    their stored examples and a replay of what the parent knew). Returns {"parent",
    "revision", "heads": {uuid: summary or error}}, or with `background` also "job_id"
    (one job for all of them; "heads" then says {"job_id"} per head)."""
    registry = get_registry()
    behind = registry.addins_behind(parent)
    out = {"parent": parent, "revision": registry.store.read(parent)["revision"]}
    if not behind:
        return {**out, "heads": {}}
    if _flag(background, "background"):
        job = start_group_job(registry, behind, None, True, True)
        heads = {uuid: {"job_id": job["job_id"]} for uuid in job["uuids"]}
        return {**out, "job_id": job["job_id"], "heads": {**heads, **job["refused"]}}
    return {**out, **train_heads(behind, incremental=True, rebase=True)}


def export_weights(uuid: str, weights_file: str) -> dict:
    """Write the head's weights as a plain state dict of its model ({"state_dict",
    "labels"}; an add-in folded into its parent's weights) that plain torch loads."""
    return get_registry().export_weights(uuid, weights_file)


def train_status(job_id: str, log_lines: int = 20) -> dict:
    """State of a background training job: `progress` while it runs (epoch of `epochs`,
    batch of `batches`, samples_per_s, eta_s; at most a couple of seconds old), the last
    epoch's `metrics`, error or summary, and `log`: the last `log_lines` lines of its log
    (at most 200; 0 for none)."""
    if isinstance(log_lines, bool) or not isinstance(log_lines, int) or not 0 <= log_lines <= 200:
        raise BadInputError(f"train_status: log_lines must be a whole number from 0 to 200, "
                            f"got {log_lines!r}")
    return job_status(get_registry().store, job_id, log_lines)


def stop_training(job_id: str, uuid: str | None = None) -> dict:
    """Ask a background training job to stop; the head keeps its previous weights. With
    `uuid`, only that head's run in a job of train_heads stops; the others go on."""
    return stop_job(get_registry(), job_id, uuid)


def load_weights(uuid: str, weights_file: str | None = None, path: str | None = None) -> dict:
    """Switch a head to weights from a file (`weights_file`, or `path` as in the seed)."""
    if weights_file and path and weights_file != path:
        raise BadInputError("give the weights file once: weights_file or path, not both")
    return get_registry().load_weights(uuid, weights_file or path)


def list_revisions(uuid: str) -> list:
    """The head's published revisions it keeps (PH_WEIGHT_HISTORY, default 3), newest
    first: `{"revision", "current", "updated", "labels", "examples_seen"}` each."""
    return get_registry().list_revisions(uuid)


def rollback_head(uuid: str, revision: int) -> dict:
    """Serve a kept earlier revision's weights again, atomically, as the next revision
    (itself kept, so a roll-back can be undone). Refused while the head trains."""
    return get_registry().rollback_head(uuid, revision)


def get_config(uuid: str) -> dict:
    return get_registry().get_config(uuid)


def check_head(uuid: str) -> dict:
    """What is known about a head; `{"uuid", "exists": false}` when there is none."""
    return to_plain(get_registry().check_head(uuid))


def add_examples(uuid: str, examples: Any) -> int:
    """Store training examples with the head (the layouts train_json takes: {label:
    [texts]} or [{text | input_ids | embedding, label}]); returns its example count.
    The whole call is checked first: on an error nothing is stored."""
    return get_registry().add_examples(uuid, examples)


def list_examples(uuid: str, offset: int = 0, limit: int = 100) -> list:
    """The head's stored examples, oldest first: `{"id", "text" | "input_ids" | ..., "label",
    "added"}` each."""
    return get_registry().list_examples(uuid, offset, limit)


def delete_examples(uuid: str, ids: list | None = None) -> dict:
    """Delete some stored examples by id, or all of them (ids omitted)."""
    return get_registry().delete_examples(uuid, ids)


def list_heads(offset: int = 0, limit: int = LIST_PAGE) -> list:
    """Uuids of the heads in sorted order: `limit` (at most LIST_PAGE_MAX) from `offset`."""
    return get_registry().list_heads(offset, limit)


def delete_head(uuid: str) -> bool:
    return get_registry().delete_head(uuid)


def head_stats() -> dict:
    """Memory held by loaded heads and cache hits, misses and evictions."""
    return get_registry().stats()


ACTIONS = (create_head_list, create_head, predict, predict_many, train_head, train_status, stop_training,
           load_weights, get_config, check_head, list_heads, delete_head, head_stats,
           add_examples, list_examples, delete_examples, train_heads, rebase_addins, export_weights,
           list_revisions, rollback_head)


def _flag(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise BadInputError(f"{name}: must be true or false, got {value!r}")
    return value


def _as_list(value: Any, name: str) -> list:
    if not isinstance(value, (list, tuple)):
        raise BadInputError(f"{name}: must be a list, got {type(value).__name__}")
    return list(value)


def _request_pair(request: Any, index: int) -> tuple[str, Any]:
    if isinstance(request, dict) and set(request) == {"uuid", "data"}:
        return request["uuid"], request["data"]
    if isinstance(request, (list, tuple)) and len(request) == 2:
        return request[0], request[1]
    raise BadInputError(f"requests[{index}]: must be [uuid, data] or {{\"uuid\": ..., \"data\": ...}}, "
                        f"got {request!r:.80}")


def _one_config(config: Any, config_file: Any) -> Any:
    if config is not None and config_file is not None:
        raise ConfigError("give the config once: config (a dict or path) or config_file, not both")
    return config_file if config_file is not None else config


def to_plain(value: Any) -> Any:
    """Tensors and numpy values -> lists and numbers (Jaseci and JSON cannot carry tensors)."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().tolist()
    if isinstance(value, dict):
        return {k: to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    if hasattr(value, "tolist") and hasattr(value, "dtype"):
        return to_plain(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN or infinity
    return value


def parse_bytes(value: int | str) -> int:
    """Bytes from 123, '512MB', '2GB' or '1.5GiB' (a memory budget)."""
    return settings.parse("PH_MEMORY_BUDGET", value, "memory_budget")
