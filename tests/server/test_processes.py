"""Several server processes on one heads folder see each other's changes."""
from __future__ import annotations

import threading
import time

import pytest
import requests

from helpers.heads import small_config
from helpers.http import call
from helpers.servers import ph_server

pytestmark = pytest.mark.slow  # ph serve processes, several workers

TEXTS = ["I want to order a pizza", "will it rain in Lima", "play some Bach"]


def test_two_servers_on_one_folder_see_heads_created_trained_reloaded_and_deleted(workdir, train_json):
    allow = ("--allow-path", str(workdir))
    with ph_server(workdir, *allow) as a, ph_server(workdir, *allow) as b:
        call(a, "create_head_list", config=small_config())
        call(b, "create_head", uuid="shared")  # b uses the head list a wrote
        assert call(a, "predict", uuid="shared", data=TEXTS) == call(b, "predict", uuid="shared", data=TEXTS)
        call(a, "train_head", uuid="shared")
        assert call(b, "check_head", uuid="shared")["revision"] == 1
        trained = call(a, "predict", uuid="shared", data=TEXTS)
        assert call(b, "predict", uuid="shared", data=TEXTS) == trained
        call(b, "create_head", uuid="other")
        call(b, "load_weights", uuid="other",
             weights_file="saved/models/PersonalizedHeadTrainer/shared/best_model.pt")
        assert call(a, "predict", uuid="other", data=TEXTS) == trained
        call(a, "delete_head", uuid="shared")
        assert call(b, "predict", uuid="shared", data=TEXTS, expect=404)["error"] == "not_found"
        assert call(b, "list_heads") == ["other"]


def test_concurrent_creates_of_one_uuid_in_two_servers_leave_exactly_one_head(workdir):
    with ph_server(workdir) as a, ph_server(workdir) as b:
        results = {}

        def create(url, n_classes):
            config = small_config()
            config["Model"]["args"]["n_classes"] = n_classes
            results[url] = requests.post(f"{url}/create_head/", json={"uuid": "race", "config": config},
                                         timeout=60)

        threads = [threading.Thread(target=create, args=(u, n)) for u, n in ((a, 5), (b, 6))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        codes = sorted(r.status_code for r in results.values())
        assert codes == [200, 409], [r.text for r in results.values()]
        n_classes = call(a, "get_config", uuid="race")["Model"]["args"]["n_classes"]
        assert call(b, "get_config", uuid="race")["Model"]["args"]["n_classes"] == n_classes
        assert isinstance(call(b, "predict", uuid="race", data="hi"), int)


def test_workers_of_one_server_share_the_heads(workdir, train_json):
    with ph_server(workdir, "--workers", "2", "--allow-path", str(workdir)) as url:
        pids, deadline = set(), time.time() + 60
        while len(pids) < 2 and time.time() < deadline:  # the second worker may start later
            pids.add(requests.get(url + "/healthz", timeout=10).json()["pid"])
        assert len(pids) == 2
        call(url, "create_head", uuid="w", config=small_config())
        first = {str(call(url, "predict", uuid="w", data=TEXTS)) for _ in range(20)}
        assert len(first) == 1
        call(url, "train_head", uuid="w")
        after = {str(call(url, "predict", uuid="w", data=TEXTS)) for _ in range(20)}
        assert len(after) == 1 and call(url, "check_head", uuid="w")["revision"] == 1


def test_workers_listen_on_their_own_sockets_so_long_lived_connections_spread(workdir):
    with ph_server(workdir, "--workers", "2") as url:
        wait_for_workers(url, 2)
        sessions = [requests.Session() for _ in range(16)]  # one keep-alive connection each
        pids = [s.get(url + "/healthz", timeout=30).json()["pid"] for s in sessions]
        assert len(set(pids)) == 2, pids  # all 16 on one worker: 1 in 32,768 if spread
        for session, pid in zip(sessions, pids):  # each connection stays with its worker
            assert session.get(url + "/healthz", timeout=30).json()["pid"] == pid


def test_a_worker_that_dies_is_replaced_and_the_port_keeps_answering(workdir):
    import os
    import signal
    with ph_server(workdir, "--workers", "2") as url:
        pids = wait_for_workers(url, 2)
        victim = pids.pop()
        os.kill(victim, signal.SIGKILL)
        deadline, seen = time.time() + 60, set()
        while time.time() < deadline and not (seen - pids - {victim}):
            try:
                seen.add(requests.get(url + "/healthz", timeout=5).json()["pid"])
            except requests.RequestException:
                pass  # a connection the dead worker had accepted
            time.sleep(0.1)
        assert victim not in seen and seen - pids, (victim, pids, seen)


def test_serve_refuses_a_port_another_program_holds(workdir):
    import socket
    import subprocess
    from helpers.servers import BIN
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        out = subprocess.run([str(BIN / "ph"), "serve", "--port", str(port), "--workers", "2"],
                             cwd=workdir, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "cannot listen" in out.stderr and "--port" in out.stderr


def wait_for_workers(url: str, n: int, timeout: float = 120) -> set:
    """The pids of n workers, once each answers (a worker listens once it has started)."""
    pids, deadline = set(), time.time() + timeout
    while len(pids) < n and time.time() < deadline:
        pids.add(requests.get(url + "/healthz", timeout=30).json()["pid"])  # a new connection
        time.sleep(0.05)
    assert len(pids) == n, pids
    return pids
