"""Tenants of one `ph serve`: each with its own tokens, heads, examples and jobs, and
quotas. Set by the operator in a tokens file (PH_TOKENS_FILE, `--tokens-file`):

    admins: [ADMIN-TOKEN]              # see and touch everything (PH_TOKEN is one too)
    tenants:
      acme:
        tokens: [ACME-TOKEN]           # or token: ACME-TOKEN
        quotas: {heads: 1000, examples: 100000, jobs: 2, rps: 50}   # each optional

A tenant's heads live in the one store under `<tenant>.<uuid>`; a tenant names them,
and sees them named, without the prefix, so it cannot even name another tenant's head:
every action on one is answered exactly as for a head that does not exist. Jobs are
checked by the heads they train. `list_heads` lists the tenant's own heads. The head
list (create_head_list) and head_stats are the operator's: a tenant passes its config
to create_head.

Quotas: `heads` and `examples` (summed over the tenant's heads, checked before a call
adds any), `jobs` (background trainings running or queued at once), `rps` (requests per
second, a token bucket per worker process, each worker taking its share). Over one the
answer is 429 with Retry-After and a message naming the quota.
"""
from __future__ import annotations

import hashlib
import math
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml
from starlette.concurrency import run_in_threadpool

from ..errors import ConfigError, NotFoundError, PermissionDeniedError, PHError, QuotaError
from ..heads.lifecycle import LIST_PAGE
from ..heads.policy import path_scope

TENANT_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
QUOTAS = ("heads", "examples", "jobs", "rps")
OPERATOR_ONLY = ("create_head_list", "head_stats")
HEAD_ARGS = ("uuid", "parent")  # arguments that name one head
# fields of answers that name heads: one, a list, or a mapping by uuid
HEAD_FIELDS, HEAD_LISTS, HEAD_MAPS = ("uuid", "parent", "follows_parent"), ("uuids",), ("heads", "refused")
JOB_ACTIONS = ("train_status", "stop_training")
ADDS_HEADS = ("create_head",)
ADDS_EXAMPLES = ("add_examples",)
STARTS_JOBS = ("train_head", "train_heads", "rebase_addins")
RAISE_HINT = "ask the operator to raise it (tokens file, quotas.{quota})"


@dataclass
class Tenant:
    name: str
    quotas: dict[str, float] = field(default_factory=dict)
    admin: bool = False
    _bucket: list = field(default_factory=lambda: [0.0, 0.0], repr=False)  # tokens, last time
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def prefix(self) -> str:
        return f"{self.name}."


ADMIN = Tenant("admin", admin=True)


def load_tokens(path: str, admin_token: str | None) -> dict[str, Tenant]:
    """{sha256 of a token: its tenant} from the tokens file; PH_TOKEN, if set, is an
    admin token. Raises ConfigError, one line per problem, never echoing a token."""
    where = f"PH_TOKENS_FILE ({path})"
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{where}: cannot read it ({type(exc).__name__}); give a YAML file "
                          "with admins: [...] and tenants: {name: {tokens: [...], quotas: {...}}}") \
            from None
    problems: list[str] = []
    if not isinstance(data, dict) or set(data) - {"admins", "tenants"}:
        raise ConfigError(f"{where}: the top level takes admins and tenants only")
    by_hash: dict[str, Tenant] = {}

    def add(token: Any, tenant: Tenant, at: str) -> None:
        if not isinstance(token, str) or len(token) < 16:
            problems.append(f"{where} {at}: a token must be text of at least 16 characters")
            return
        key = _hash(token)
        if key in by_hash:
            problems.append(f"{where} {at}: this token is already given to "
                            f"'{by_hash[key].name}'; every token names one tenant")
        by_hash[key] = tenant

    for i, token in enumerate(data.get("admins") or []):
        add(token, ADMIN, f"admins[{i}]")
    for name, spec in (data.get("tenants") or {}).items():
        at = f"tenants.{name}"
        if not isinstance(name, str) or not TENANT_NAME.fullmatch(name) or name == "admin":
            problems.append(f"{where} {at}: a tenant name is 1 to 32 of a-z, 0-9, '_', '-' "
                            "(not 'admin')")
            continue
        spec = spec if isinstance(spec, dict) else {}
        quotas = spec.get("quotas") or {}
        unknown = sorted(set(quotas) - set(QUOTAS)) if isinstance(quotas, dict) else ["?"]
        if unknown:
            problems.append(f"{where} {at}.quotas: unknown {', '.join(map(str, unknown))}; "
                            f"quotas are {', '.join(QUOTAS)}")
            continue
        bad = [k for k, v in quotas.items()
               if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0]
        if bad:
            problems.append(f"{where} {at}.quotas.{bad[0]}: must be a number > 0")
            continue
        tenant = Tenant(name, dict(quotas))
        tokens = spec.get("tokens") or ([spec["token"]] if "token" in spec else [])
        if not tokens:
            problems.append(f"{where} {at}: give it a token (token: or tokens: [...])")
        for i, token in enumerate(tokens):
            add(token, tenant, f"{at}.tokens[{i}]")
    if admin_token:
        by_hash.setdefault(_hash(admin_token), ADMIN)
    if problems:
        raise ConfigError(problems)
    if not by_hash:
        raise ConfigError(f"{where}: it names no token")
    return by_hash


def tenant_of(tokens: dict[str, Tenant], given: str | None) -> Tenant | None:
    """The tenant a presented token belongs to (looked up by its hash: no timing leak
    of how much of a token matched), or None."""
    return tokens.get(_hash(given)) if given else None


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class TenantActions:
    """Runs an action for a tenant: its arguments' uuids prefixed, the quotas checked,
    its answer's uuids (and its error's) unprefixed."""

    def __init__(self, registry_of: Callable[[], Any], workers: int = 1):
        self.registry_of, self.workers = registry_of, max(1, workers)

    async def call(self, tenant: Tenant, fn: Callable, args: dict, run: Callable | None) -> Any:
        """`fn(**args)` for the tenant (`run`: the predict batcher's coroutine); what reads
        the store (quotas, a job's owner) runs in a worker thread."""
        name = fn.__name__
        path_scope.set(tenant.name)  # its files: <allowed folder>/<tenant> (heads.policy)
        try:
            if name in ADDS_HEADS + ADDS_EXAMPLES + STARTS_JOBS + JOB_ACTIONS:
                args = await run_in_threadpool(self.before, tenant, name, args)
            else:
                args = self.before(tenant, name, args)
            if name == "list_heads":
                result = await run_in_threadpool(self.registry_of().list_heads,
                                                 args.get("offset", 0),
                                                 args.get("limit", LIST_PAGE), args["prefix"])
            elif run is not None:
                result = await run(**args)
            else:
                result = await run_in_threadpool(fn, **args)
        except PHError as exc:
            raise self.error(tenant, exc) from None
        return self.after(tenant, name, result)

    def before(self, tenant: Tenant, action: str, args: dict) -> dict:
        """The arguments as the store names things; raises what the tenant may not do."""
        if action in OPERATOR_ONLY:
            raise PermissionDeniedError(f"{action} is the operator's (it concerns every "
                                        f"tenant); pass your config to create_head instead"
                                        if action == "create_head_list" else
                                        f"{action} is the operator's: it concerns every tenant")
        self._rate(tenant)
        args = dict(args)
        for key in HEAD_ARGS:
            if isinstance(args.get(key), str):
                args[key] = tenant.prefix + args[key]
        if action == "create_head" and args.get("uuid") is None:
            from ..stores.base import new_uuid
            args["uuid"] = tenant.prefix + new_uuid()
        if isinstance(args.get("uuids"), list):
            args["uuids"] = [tenant.prefix + u if isinstance(u, str) else u for u in args["uuids"]]
        if action == "predict_many" and isinstance(args.get("requests"), list):
            args["requests"] = [_prefixed_request(r, tenant.prefix) for r in args["requests"]]
        if action == "list_heads":
            args["prefix"] = tenant.prefix
        if action in JOB_ACTIONS and isinstance(args.get("job_id"), str):
            self._own_job(tenant, args["job_id"])
        self._quotas(tenant, action, args)
        return args

    def after(self, tenant: Tenant, action: str, result: Any) -> Any:
        """The answer as the tenant names things: the fields that name heads (and the
        messages that quote them), never the tenant's own data (texts, labels, configs)."""
        if action == "create_head" and isinstance(result, str):
            return _strip(result, tenant.prefix)
        if action == "list_heads" and isinstance(result, list):
            return [_strip(u, tenant.prefix) for u in result]
        return _shown(result, tenant.prefix)

    def error(self, tenant: Tenant, exc: PHError) -> PHError:
        exc.args = (_unquoted(str(exc), tenant.prefix),)
        return exc

    # --- ownership and quotas --------------------------------------------------------
    def _own_job(self, tenant: Tenant, job_id: str) -> None:
        store = self.registry_of().store
        job = store.read_job(job_id)
        heads = [job.get("uuid") or ""] + list(job.get("uuids") or [])
        if not all(h.startswith(tenant.prefix) for h in heads if h):
            raise _no_such_job(store, job_id)

    def _quotas(self, tenant: Tenant, action: str, args: dict) -> None:
        quotas, registry = tenant.quotas, self.registry_of()
        if "heads" in quotas and action in ADDS_HEADS and \
                not (isinstance(args.get("uuid"), str) and registry.store.exists(args["uuid"])):
            count = len(registry.store.list(prefix=tenant.prefix))
            if count >= quotas["heads"]:
                raise QuotaError(f"quota heads: this tenant has {count} heads, its limit; delete "
                                 f"some (delete_head) or {RAISE_HINT.format(quota='heads')}", 60)
        if "examples" in quotas and action in ADDS_EXAMPLES:
            held = sum(registry.store.examples(u).summary().count
                       for u in registry.store.list(prefix=tenant.prefix))
            adding = _example_count(args.get("examples"))
            if held + adding > quotas["examples"]:
                raise QuotaError(f"quota examples: this tenant stores {held} examples and the "
                                 f"call adds {adding}, over its limit of {quotas['examples']:g}; "
                                 "delete some (delete_examples) or "
                                 f"{RAISE_HINT.format(quota='examples')}", 60)
        if "jobs" in quotas and action in STARTS_JOBS and _in_background(action, args):
            active = sum(1 for u in registry.store.list(prefix=tenant.prefix)
                         if registry.training_job(u))
            if active >= quotas["jobs"]:
                raise QuotaError(f"quota jobs: this tenant has {active} training jobs running or "
                                 "queued, its limit; wait for one to end (train_status) or "
                                 f"{RAISE_HINT.format(quota='jobs')}", 10)

    def _rate(self, tenant: Tenant) -> None:
        """A token bucket of `rps` per second (this worker's share), `rps` deep."""
        if "rps" not in tenant.quotas:
            return
        rate = tenant.quotas["rps"] / self.workers
        depth = max(1.0, rate)  # a share under 1 request/s still lets one through
        with tenant._lock:
            now = time.monotonic()
            tokens, last = tenant._bucket
            tokens = depth if last == 0 else min(depth, tokens + (now - last) * rate)
            if tokens < 1:
                tenant._bucket[:] = [tokens, now]
                raise QuotaError(f"quota rps: this tenant may send {tenant.quotas['rps']:g} "
                                 "requests per second; slow down, or "
                                 f"{RAISE_HINT.format(quota='rps')}",
                                 max(1, math.ceil((1 - tokens) / rate)))
            tenant._bucket[:] = [tokens - 1, now]


def _prefixed_request(request: Any, prefix: str) -> Any:
    """A predict_many request, in either form api takes ([uuid, data] or {"uuid", "data"}),
    naming the tenant's head; any other shape goes on unchanged, to be refused by api."""
    if isinstance(request, dict) and isinstance(request.get("uuid"), str):
        return {**request, "uuid": prefix + request["uuid"]}
    if isinstance(request, (list, tuple)) and request and isinstance(request[0], str):
        return [prefix + request[0], *request[1:]]
    return request


def _no_such_job(store: Any, job_id: str) -> NotFoundError:
    """The very error an unknown job id gets (another tenant's job is one)."""
    probe = "0" * 8 + "-0000-4000-8000-" + "0" * 12
    try:
        store.read_job(probe)
    except NotFoundError as exc:
        return NotFoundError(str(exc).replace(probe, job_id))
    return NotFoundError(f"no training job '{job_id}'")


def _in_background(action: str, args: dict) -> bool:
    return bool(args.get("background", action == "rebase_addins"))


def _example_count(examples: Any) -> int:
    if isinstance(examples, dict):
        return sum(len(v) if isinstance(v, list) else 1 for v in examples.values())
    return len(examples) if isinstance(examples, list) else 0


def _shown(value: Any, prefix: str) -> Any:
    """`value` (an answer) with the head names in HEAD_FIELDS, HEAD_LISTS and HEAD_MAPS
    unprefixed, and messages unquoted; everything else as it is."""
    if isinstance(value, list):
        return [_shown(v, prefix) for v in value]
    if not isinstance(value, dict):
        return value
    shown = {}
    for key, item in value.items():
        if key in HEAD_FIELDS and isinstance(item, str):
            shown[key] = _strip(item, prefix)
        elif key in HEAD_LISTS and isinstance(item, list):
            shown[key] = [_strip(u, prefix) if isinstance(u, str) else u for u in item]
        elif key in HEAD_MAPS and isinstance(item, dict):
            shown[key] = {_strip(k, prefix): _shown(v, prefix) for k, v in item.items()}
        elif key in ("message", "error") and isinstance(item, str):
            shown[key] = _unquoted(item, prefix)
        else:
            shown[key] = _shown(item, prefix)
    return shown


def _strip(uuid: str, prefix: str) -> str:
    return uuid[len(prefix):] if uuid.startswith(prefix) else uuid


def _unquoted(message: str, prefix: str) -> str:
    """A message as the tenant names things: ph quotes uuids ('acme.h' -> 'h')."""
    return message.replace(f"'{prefix}", "'")
