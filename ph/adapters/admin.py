"""`ph heads ...`: what an operator does to the heads of a store from a shell, without a
server: list, check, delete, export, revisions, rollback. Each prints JSON (one value
per line for `list`), so it pipes into jq; a head that is not there exits with status 1
and one line saying so; a bad flag or store URL exits with status 2.

It opens the store the servers use (`--store`/PH_STORE, or the heads folder), so a
change is seen by running servers at their next call, as any other writer's is.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Callable

COMMANDS: dict[str, tuple[str, Callable[[Any, argparse.Namespace], Any]]] = {
    "list": ("uuids of the heads, one per line (--prefix acme. for a tenant's)",
             lambda r, a: r.list_heads(a.offset, a.limit, a.prefix)),
    "check": ("what is known about a head (check_head)", lambda r, a: r.check_head(a.uuid)),
    "delete": ("delete a head, its weights and examples", lambda r, a: r.delete_head(a.uuid)),
    "export": ("write a head's weights as a plain state dict (export_weights)",
               lambda r, a: r.export_weights(a.uuid, a.weights_file)),
    "revisions": ("the published revisions a head keeps (list_revisions)",
                  lambda r, a: r.list_revisions(a.uuid)),
    "rollback": ("serve a kept earlier revision again (rollback_head)",
                 lambda r, a: r.rollback_head(a.uuid, a.revision)),
}


def add_parser(commands: Any, add_store_flags: Callable[[argparse.ArgumentParser], None]) -> None:
    heads = commands.add_parser("heads", help="list, check, delete, export or roll back heads "
                                "of a store (no server needed)")
    actions = heads.add_subparsers(dest="heads_command", required=True,
                                   metavar="{" + ",".join(COMMANDS) + "}")
    for name, (meaning, _) in COMMANDS.items():
        sub = actions.add_parser(name, help=meaning, description=meaning)
        add_store_flags(sub)
        if name == "list":
            sub.add_argument("--offset", type=int, default=0, help="skip this many (default 0)")
            sub.add_argument("--limit", type=int, default=1000, help="at most this many "
                             "(default 1000, at most 10000)")
            sub.add_argument("--prefix", default="", help="only uuids starting with this")
            continue
        sub.add_argument("uuid", help="the head's uuid (a tenant's: <tenant>.<uuid>)")
        if name == "export":
            sub.add_argument("weights_file", help="the .pt file to write")
        if name == "rollback":
            sub.add_argument("revision", type=int, help="a revision `ph heads revisions` shows")


def run(args: argparse.Namespace, values: dict) -> int:
    """Run one `ph heads` command; 0, or 1 when the action refused (one line on stderr)."""
    from ..errors import ConfigError, PHError
    from ..heads.policy import PathPolicy
    from ..heads.service import HeadRegistry
    registry = HeadRegistry(values["PH_HEADS_DIR"], PathPolicy(),  # the operator: any path
                            store=values["PH_STORE"])
    try:
        result = COMMANDS[args.heads_command][1](registry, args)
    except ConfigError:
        raise
    except PHError as exc:
        print(f"ph heads {args.heads_command}: {exc}", file=sys.stderr)
        return 1
    finally:
        registry.close()
    if args.heads_command == "list":
        for uuid in result:
            print(uuid)
    else:
        from .. import api
        print(json.dumps(api.to_plain(result), indent=2, default=str))
    return 0
