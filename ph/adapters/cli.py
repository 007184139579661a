"""`ph` command line: `ph serve` runs the remote action server."""
from __future__ import annotations

import argparse
import logging
import os
import sys

from ..errors import ConfigError
from ..server.app import ServerSettings, is_loopback
from ..stores import parse_store_url, store_url

STORE_HELP = ("where heads live: a distributed store, redis://[:PASSWORD@]HOST:PORT/DB?"
              "objects=s3://BUCKET/PREFIX[&endpoint=URL] (none: $PH_STORE, else the "
              "local --heads-dir folder)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ph", description="Personalized heads for Jaseci")
    formatter = argparse.ArgumentDefaultsHelpFormatter
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the remote action server "
                                "(Jaseci: actions load remote http://HOST:PORT)",
                                formatter_class=formatter)
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--heads-dir", default=os.environ.get("PH_HEADS_DIR", "heads"),
                       help="folder of the heads (shared by every worker); with --store, "
                            "only this machine's cache")
    serve.add_argument("--store", help=STORE_HELP)  # no default: --help must not show $PH_STORE
    serve.add_argument("--workers", type=int, default=1, help="worker processes")
    serve.add_argument("--token", default=os.environ.get("PH_TOKEN"),
                       help="clients must send it (Bearer, or http://user:TOKEN@host:port); "
                            "required to serve other hosts (default $PH_TOKEN)")
    serve.add_argument("--allow-code", action="store_true",
                       help="let clients run user Python (uploaded source or python_file)")
    serve.add_argument("--allow-path", action="append", default=[], metavar="DIR",
                       help="let clients name files under DIR (repeatable); none by default")
    serve.add_argument("--memory-budget", default=os.environ.get("PH_MEMORY_BUDGET"),
                       help="bytes of loaded heads kept in memory per worker, e.g. 2GB")
    serve.add_argument("--batch-window-ms", type=float,
                       default=float(os.environ.get("PH_BATCH_WINDOW_MS") or 0),
                       help="wait this long to gather concurrent predict calls into one pass "
                            "(default 0: batch only calls that arrive while a pass runs)")
    serve.add_argument("--threads", type=int, default=int(os.environ.get("PH_TORCH_THREADS") or 0),
                       help="torch threads per worker (default 0: the cores per worker, less "
                            "one for its event loop, at least 1)")
    serve.add_argument("--access-log", action="store_true",
                       help="log every request (off by default: a line per request costs "
                            "throughput; errors are always logged)")
    serve.add_argument("--max-body-bytes", type=int,
                       default=int(os.environ.get("PH_MAX_BODY_BYTES") or 32 * 2**20),
                       help="largest request body accepted; a larger one gets a 413 "
                            "(default $PH_MAX_BODY_BYTES or 32 MiB)")
    serve.add_argument("--log-level", default="info")
    worker = commands.add_parser("worker", help="run a training worker for a distributed store",
                                 formatter_class=formatter)
    worker.add_argument("--store", help=STORE_HELP)
    worker.add_argument("--heads-dir", default=os.environ.get("PH_HEADS_DIR", "heads"),
                        help="this machine's cache of weights and code")
    worker.add_argument("--queues", default=os.environ.get("PH_TRAIN_QUEUES", "ph-train"),
                        help="comma-separated queues to take jobs from (ph-train: CPU jobs; "
                             "ph-gpu: jobs of heads whose Inference.device names cuda)")
    worker.add_argument("--ready-file", help="touch this file once the worker takes jobs")
    worker.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    setting, args.store = "--store" if args.store else "PH_STORE", store_url(args.store)
    try:  # here, not in uvicorn's or the workers' processes: one line, not a traceback
        if args.store:
            parse_store_url(args.store, setting)
    except ConfigError as exc:
        print(f"ph {args.command}: {exc}", file=sys.stderr)
        return 2
    if args.command == "worker":
        return worker_command(args)
    return serve_command(args)


def worker_command(args: argparse.Namespace) -> int:
    from ..errors import PHError
    from .training_worker import run_worker
    logging.basicConfig(level=args.log_level.upper())
    try:
        return run_worker(args.store, args.heads_dir, [q for q in args.queues.split(",") if q],
                          args.ready_file, args.log_level)
    except PHError as exc:
        print(f"ph worker: {exc}", file=sys.stderr)
        return 2


def serve_command(args: argparse.Namespace) -> int:
    if not is_loopback(args.host) and not args.token:
        print(f"ph serve: serving on {args.host} needs a token (--token or PH_TOKEN); "
              "without one only 127.0.0.1 may be used", file=sys.stderr)
        return 2
    settings = ServerSettings(args.heads_dir, args.store, args.token, args.allow_code,
                              args.allow_path,
                              args.memory_budget, args.batch_window_ms, args.workers, args.threads,
                              args.max_body_bytes)
    os.environ.update(settings.to_env())  # every worker builds its app from these
    logging.basicConfig(level=args.log_level.upper())
    from ..server.processes import can_spread, serve_workers
    if args.workers > 1 and can_spread():
        try:
            return serve_workers(args.host, args.port, args.workers, args.log_level,
                                 args.access_log)
        except OSError as exc:
            print(f"ph serve: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}; "
                  "is another server using it? Choose another --port", file=sys.stderr)
            return 2
    import uvicorn
    uvicorn.run("ph.server.app:serv_actions", factory=True, host=args.host, port=args.port,
                workers=args.workers, log_level=args.log_level, access_log=args.access_log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
