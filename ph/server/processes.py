"""Several `ph serve` worker processes on one port, each with its own listening socket.

uvicorn's own workers share one listening socket, and a few long-lived client
connections can all land on the worker that happens to accept first (measured: two
workers no faster than one for 32 keep-alive connections). With `SO_REUSEPORT` every
worker listens on its own socket and the kernel spreads new connections across them.
The supervisor restarts a worker that dies and stops them all on SIGTERM or SIGINT.
"""
from __future__ import annotations

import logging
import multiprocessing
import signal
import socket
import time

from .. import metrics

log = logging.getLogger("ph.workers")
RESTART_DELAY_S = 1.0


def can_spread() -> bool:
    return hasattr(socket, "SO_REUSEPORT")


def serve_workers(host: str, port: int, workers: int, log_level: str, access_log: bool) -> int:
    """Run `workers` server processes on host:port until SIGTERM or SIGINT."""
    check_port_free(host, port)
    context = multiprocessing.get_context("spawn")  # workers build their app from PH_* variables
    args = (host, port, log_level, access_log)
    procs = [context.Process(target=_worker, args=args, daemon=False) for _ in range(workers)]
    stopping = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.append(True))
    for proc in procs:
        proc.start()
    while not stopping:
        time.sleep(0.2)
        for i, proc in enumerate(procs):
            if not proc.is_alive() and not stopping:
                log.warning("worker %s exited with %s; starting another", proc.pid, proc.exitcode)
                metrics.process_ended(proc.pid)
                time.sleep(RESTART_DELAY_S)
                procs[i] = context.Process(target=_worker, args=args, daemon=False)
                procs[i].start()
    for proc in procs:
        proc.terminate()  # uvicorn finishes the requests in flight on SIGTERM
    for proc in procs:
        proc.join(timeout=30)
        if proc.is_alive():
            proc.kill()
    return 0


def check_port_free(host: str, port: int) -> None:
    """Fail like a plain bind would if another program holds the port: SO_REUSEPORT alone
    would quietly share it with another process of this user."""
    with socket.socket(_family(host), socket.SOCK_STREAM) as probe:
        probe.bind((host, port))


def listening_socket(host: str, port: int) -> socket.socket:
    sock = socket.socket(_family(host), socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _worker(host: str, port: int, log_level: str, access_log: bool) -> None:
    import uvicorn
    from .. import logs, settings
    logs.configure(log_level, settings.value("PH_LOG_FORMAT"))
    config = uvicorn.Config("ph.server.app:serv_actions", factory=True, host=host, port=port,
                            log_level=log_level, access_log=access_log, log_config=None)
    uvicorn.Server(config).run(sockets=[listening_socket(host, port)])


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET
