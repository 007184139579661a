"""Start real servers on 127.0.0.1 for tests: `ph serve` and a Jaseci server (jsserv)."""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import requests

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(url: str, proc: subprocess.Popen, timeout: float = 60, **kwargs) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}: {_output(proc)}")
        with contextlib.suppress(requests.RequestException):
            if requests.get(url, timeout=2, **kwargs).status_code < 500:
                return
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer in {timeout}s: {_output(proc)}")


def _output(proc: subprocess.Popen) -> str:
    with contextlib.suppress(Exception):
        proc.kill()
        return (proc.communicate(timeout=5)[0] or "")[-3000:]
    return ""


def stop(proc: subprocess.Popen) -> None:
    """Stop a server and everything it started (its process group)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)


@contextlib.contextmanager
def ph_server(cwd: Path, *args: str, env: dict | None = None) -> Iterator[str]:
    """`ph serve` on a free loopback port in `cwd`; yields its URL."""
    port = free_port()
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    proc = subprocess.Popen([str(BIN / "ph"), "serve", "--port", str(port), "--log-level", "warning",
                             *args], cwd=cwd, env=full_env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(url + "/healthz", proc)
        yield url
    finally:
        stop(proc)


@contextlib.contextmanager
def jaseci_server(cwd: Path, password: str = "ph-test-Passw0rd") -> Iterator[tuple[str, str, str]]:
    """A real jaseci-serv on a free loopback port; yields (url, email, password)."""
    env = {**os.environ, "DJANGO_SUPERUSER_PASSWORD": password, "PYTHONUNBUFFERED": "1"}
    email = "admin@example.com"
    for cmd in (["makemigrations", "base"], ["migrate"],
                ["createsuperuser", "--noinput", "--email", email]):
        subprocess.run([str(BIN / "jsserv"), *cmd], cwd=cwd, env=env, check=True,
                       capture_output=True, timeout=300)
    port = free_port()
    proc = subprocess.Popen([str(BIN / "jsserv"), "runserver", f"127.0.0.1:{port}", "--noreload"],
                            cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(url + "/admin/", proc, timeout=120)
        yield url, email, password
    finally:
        stop(proc)
