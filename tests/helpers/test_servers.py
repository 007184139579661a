"""The test servers themselves: Redis keeps acknowledged data across restarts and crashes,
the proxy really cuts a server off and back on, moto stores objects, and each test gets a
store URL of its own."""
from __future__ import annotations

import socket
from urllib.parse import parse_qs, urlsplit

import boto3
import pytest
import redis
from botocore.config import Config
from botocore.exceptions import ConnectionError as BotoConnectionError, HTTPClientError
from redis.backoff import NoBackoff
from redis.retry import Retry

from helpers.servers import RedisServer, TcpProxy, ph_worker


def client(port: int) -> redis.Redis:
    """No retries: redis-py's default backoff would take seconds to report the outage."""
    return redis.Redis(host="127.0.0.1", port=port, socket_timeout=5, retry=Retry(NoBackoff(), 0))


def test_redis_keeps_acknowledged_writes_across_restart_and_kill(tmp_path):
    with RedisServer(tmp_path / "redis") as server:
        port = server.port
        client(port).set("stopped", "1")
        server.restart()
        assert server.port == port and client(port).get("stopped") == b"1"
        client(port).set("killed", "2")
        server.kill()
        with pytest.raises(redis.ConnectionError):
            client(port).ping()
        server.start()
        assert client(port).mget("stopped", "killed") == [b"1", b"2"]


def test_proxy_forwards_blocks_and_forwards_again(redis_server):
    with TcpProxy(("127.0.0.1", redis_server.port)) as proxy:
        held = client(proxy.port)
        held.set("k", "v")
        proxy.block()
        with pytest.raises(redis.ConnectionError):
            held.get("k")  # its open connection was cut
        with pytest.raises(redis.ConnectionError):
            client(proxy.port).ping()  # and a new one is refused
        assert client(redis_server.port).get("k") == b"v"  # the server itself is fine
        proxy.unblock()
        assert held.get("k") == b"v" and client(proxy.port).get("k") == b"v"


def test_proxy_freezes_connections_without_closing_them_and_thaw_can_cut_them(redis_server):
    with TcpProxy(("127.0.0.1", redis_server.port)) as proxy:
        with socket.create_connection(proxy.address, timeout=5) as sock:
            sock.sendall(b"PING\r\n")
            assert sock.recv(100) == b"+PONG\r\n"
            proxy.freeze()
            sock.sendall(b"PING\r\n")
            sock.settimeout(0.5)
            with pytest.raises(TimeoutError):
                sock.recv(100)  # nothing comes back, and nothing is closed
            proxy.thaw(cut=True)
            sock.settimeout(5)
            assert sock.recv(100) == b""  # closed: the held PING never got its answer
        assert client(proxy.port).ping()  # new connections pass again


def test_s3_server_stores_objects_also_through_a_proxy(s3_server):
    s3 = s3_server.client()
    s3.put_object(Bucket="ph-test", Key="servers/a", Body=b"weights")
    assert s3.get_object(Bucket="ph-test", Key="servers/a")["Body"].read() == b"weights"
    with TcpProxy(("127.0.0.1", s3_server.port)) as proxy:
        via = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{proxy.port}",
                           config=Config(retries={"max_attempts": 1}), aws_access_key_id="test",
                           aws_secret_access_key="test", region_name="us-east-1")
        assert via.get_object(Bucket="ph-test", Key="servers/a")["Body"].read() == b"weights"
        proxy.block()
        with pytest.raises((BotoConnectionError, HTTPClientError)):  # refused or cut
            via.get_object(Bucket="ph-test", Key="servers/a")
        proxy.unblock()
        assert via.get_object(Bucket="ph-test", Key="servers/a")["Body"].read() == b"weights"


SEEN: list[tuple[str, str]] = []


@pytest.mark.parametrize("run", [1, 2])
def test_store_url_is_fresh_for_each_test(store_url, redis_server, s3_server, run):
    """Two tests in the same worker process must not share a namespace or a prefix
    (under xdist the two may land in different processes; each is still checked as fresh)."""
    parts = urlsplit(store_url)
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    objects = urlsplit(query["objects"])
    assert (parts.scheme, parts.port, parts.path) == ("redis", redis_server.port, "/0")
    assert query["endpoint"] == s3_server.endpoint and objects.netloc == "ph-test"
    namespace, prefix = query["namespace"], objects.path.strip("/")
    assert namespace and prefix and (namespace, prefix) not in SEEN
    assert not any(ns == namespace or p == prefix for ns, p in SEEN)
    SEEN.append((namespace, prefix))
    assert not list(client(redis_server.port).scan_iter(match=f"*{namespace}*"))
    assert boto3.client("s3", endpoint_url=s3_server.endpoint).list_objects_v2(
        Bucket="ph-test", Prefix=prefix)["KeyCount"] == 0  # credentials from os.environ


@pytest.mark.slow  # a `ph worker` process
def test_ph_worker_reports_a_worker_that_exits(tmp_path):
    with pytest.raises(RuntimeError, match="ph worker exited"):
        with ph_worker("nosuch://store", tmp_path / "heads"):
            pass
