"""`ph` command line: `ph serve` runs the remote action server, `ph worker` a training
worker for a distributed store, `ph heads` the operator's commands on a store's heads.

Flags that are settings (ph.settings) take their default from the PH_* variable, are
parsed by ph.settings, and a bad value (or a bad flag) ends in one line and exit status
2, never a traceback or a password."""
from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import NoReturn

from .. import logs, metrics, settings
from . import admin
from ..errors import ConfigError, PHError
from ..server.app import ServerSettings, is_loopback
from ..server.tenants import load_tokens
from ..stores import parse_store_url

SERVE_SETTINGS = ("PH_STORE", "PH_HEADS_DIR", "PH_WORKERS", "PH_TOKEN", "PH_ALLOW_CODE",
                  "PH_ALLOW_PATHS", "PH_MEMORY_BUDGET", "PH_BATCH_WINDOW_MS",
                  "PH_TORCH_THREADS", "PH_MAX_BODY_BYTES", "PH_LOG_LEVEL", "PH_LOG_FORMAT",
                  "PH_METRICS", "PH_METRICS_OPEN", "PH_API_DOCS", "PH_TOKENS_FILE")
WORKER_SETTINGS = ("PH_STORE", "PH_HEADS_DIR", "PH_TRAIN_QUEUES", "PH_LOG_LEVEL", "PH_LOG_FORMAT")
HEADS_SETTINGS = ("PH_STORE", "PH_HEADS_DIR")
SETTINGS_OF = {"serve": SERVE_SETTINGS, "worker": WORKER_SETTINGS, "heads": HEADS_SETTINGS}


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (what was wrong; --help for the rest)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def add_setting(parser: argparse.ArgumentParser, env: str) -> None:
    """A flag for setting `env`, its help from the settings table, its default shown once."""
    setting = settings.BY_ENV[env]
    if setting.flag is None:  # set by its variable only
        return
    shown = setting.shown_default()
    default = "" if setting.secret or shown == "(none)" else f"default {shown}; "
    kwargs = {"dest": dest(env), "default": None,
              "help": f"{setting.meaning} ({default}${env})"}
    if setting.kind == "flag":
        kwargs["action"] = "store_const"
        kwargs["const"] = "1"
    elif setting.kind == "paths":
        kwargs.update(action="append", metavar="DIR")
    parser.add_argument(setting.flag, **kwargs)


def dest(env: str) -> str:
    """The attribute a setting's flag lands in: --heads-dir -> heads_dir."""
    return settings.BY_ENV[env].flag[2:].replace("-", "_")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="ph", description="Personalized heads for Jaseci")
    parser.add_argument("--version", action="version", version=f"ph {settings.version()}")
    commands = parser.add_subparsers(dest="command", required=True,
                                     metavar="{serve,worker,heads}")
    serve = commands.add_parser("serve", help="run the remote action server (Jaseci: actions "
                                "load remote http://HOST:PORT)")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    serve.add_argument("--access-log", action="store_true",
                       help="log every request (a line per request costs throughput; errors "
                            "are always logged)")
    for env in SERVE_SETTINGS:
        add_setting(serve, env)
    worker = commands.add_parser("worker", help="run a training worker for a distributed store")
    worker.add_argument("--ready-file", help="touch this file once the worker takes jobs")
    for env in WORKER_SETTINGS:
        add_setting(worker, env)
    admin.add_parser(commands, lambda sub: [add_setting(sub, env) for env in HEADS_SETTINGS])
    return parser


def resolve(args: argparse.Namespace, names: tuple[str, ...]) -> dict:
    """Each setting's value: the flag if given, else its variable, else its default.

    Raises:
        ConfigError: one line naming the flag or variable and what is accepted.
    """
    values = {}
    for env in names:
        setting = settings.BY_ENV[env]
        given = getattr(args, dest(env)) if setting.flag else None
        values[env] = settings.parse(env, given, setting.flag) if given is not None \
            else settings.value(env)
    if values["PH_STORE"]:  # checked here, not in uvicorn's or the workers' processes
        parse_store_url(values["PH_STORE"], "--store" if args.store else "PH_STORE")
    return values


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings.check_environment()  # every PH_* variable, not only this command's
        values = resolve(args, SETTINGS_OF[args.command])
        if args.command == "serve":
            return serve_command(args, values)
        if args.command == "heads":
            return admin.run(args, values)
        return worker_command(args, values)
    except PHError as exc:
        print(f"ph {args.command}: {exc}", file=sys.stderr)
        return 2


def worker_command(args: argparse.Namespace, values: dict) -> int:
    from .training_worker import run_worker  # celery: only for ph worker
    logs.configure(values["PH_LOG_LEVEL"], values["PH_LOG_FORMAT"])
    metrics.use_folder()  # its jobs' training figures (a scrape of ph serve does not see them)
    return run_worker(values["PH_STORE"], values["PH_HEADS_DIR"], list(values["PH_TRAIN_QUEUES"]),
                      args.ready_file, values["PH_LOG_LEVEL"])


def serve_command(args: argparse.Namespace, values: dict) -> int:
    port = args.port
    if not 0 <= port <= 65535:
        raise ConfigError(f"--port: must be a whole number from 0 to 65535, got {port}")
    if not is_loopback(args.host) and not values["PH_TOKEN"] and not values["PH_TOKENS_FILE"]:
        raise ConfigError(f"serving on {args.host} needs a token (--token or PH_TOKEN) or "
                          "tenants' tokens (--tokens-file); without one only 127.0.0.1 may be used")
    if values["PH_TOKENS_FILE"]:
        load_tokens(values["PH_TOKENS_FILE"], values["PH_TOKEN"])  # its errors now, in one place
    server = ServerSettings.from_values(values)
    os.environ.update(server.to_env())  # every worker builds its app from these
    level = values["PH_LOG_LEVEL"]
    logs.configure(level, values["PH_LOG_FORMAT"])
    if server.metrics:
        metrics.use_folder()  # before a worker or job starts: they all write there
    from ..server.processes import can_spread, serve_workers  # uvicorn: only for ph serve
    if server.workers > 1 and can_spread():
        try:
            return serve_workers(args.host, port, server.workers, level, args.access_log)
        except OSError as exc:
            raise ConfigError(f"cannot listen on {args.host}:{port}: {exc.strerror or exc}; is "
                              "another server using it? Choose another --port") from None
    import uvicorn
    # uvicorn raises SIGTERM again once it has shut down: exit through Python, so atexit
    # runs (the metrics folder this process made is removed)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    uvicorn.run("ph.server.app:serv_actions", factory=True, host=args.host, port=port,
                workers=server.workers, log_level=level, access_log=args.access_log,
                log_config=None)  # ph.logs formats uvicorn's lines too
    return 0


if __name__ == "__main__":
    sys.exit(main())
