"""`ph serve` over real HTTP on 127.0.0.1: protocol, status codes, auth, policy, workers."""
from __future__ import annotations

import base64
import os
import subprocess
import sys

import pytest
import requests
from starlette.requests import Request

from helpers.heads import small_config
from helpers.http import post
from helpers.servers import BIN, ph_server
from ph.server.app import _refusal

pytestmark = pytest.mark.slow  # ph serve processes

SMALL = small_config()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One server for the tests that only talk to it (each starts from its own head names)."""
    with ph_server(tmp_path_factory.mktemp("server")) as url:
        yield url


def test_spec_lists_every_action_with_its_parameters(server):
    spec = requests.get(server + "/jaseci_actions_spec/", timeout=10).json()
    assert spec["ph.predict"] == ["uuid", "data"]
    assert spec["ph.create_head"] == ["uuid", "config", "config_file", "replace", "parent",
                                      "addin"]
    assert spec["ph.train_heads"][0] == "uuids" and spec["ph.rebase_addins"] == ["parent",
                                                                                "background"]
    assert spec["ph.train_head"][:2] == ["uuid", "config"]
    assert {"ph.create_head_list", "ph.create_head", "ph.load_weights", "ph.get_config",
            "ph.check_head", "ph.list_heads", "ph.delete_head", "ph.train_status"} <= set(spec)


def test_create_and_predict_over_http(server):
    assert post(server, "create_head", uuid="http", config=SMALL).json() == "http"
    answer = post(server, "predict", uuid="http", data=["hello", "order a pizza"])
    assert answer.status_code == 200 and len(answer.json()) == 2
    assert "http" in post(server, "list_heads").json()


@pytest.mark.parametrize("action, args, status, kind, match", [
    ("predict", {"uuid": "nobody", "data": "x"}, 404, "not_found", "no head with uuid 'nobody'"),
    ("predict", {"uuid": "a", "dat": "x"}, 400, "bad_input", "unknown argument(s) dat"),
    ("predict", {"uuid": "a", "data": [1.0, 2.0]}, 400, "bad_input", "vectors of 64 numbers"),
    ("create_head", {"uuid": "../etc"}, 400, "bad_input", "is not valid"),
    ("create_head", {"uuid": "a", "config": {"Model": {"args": {"n_classes": 3}}}}, 409,
     "conflict", "already exists"),
    ("create_head", {"uuid": "b", "config": {"Model": {"type": "Nope"}}}, 400, "config",
     "unknown model 'Nope'"),
    ("train_head", {"uuid": "a"}, 403, "forbidden", "does not read or write files"),
    ("create_head_list", {"python": "import os"}, 403, "forbidden", "--allow-code"),
    ("load_weights", {"uuid": "a", "weights_file": "/etc/passwd"}, 403, "forbidden", "--allow-path"),
    ("train_status", {"job_id": "nope"}, 404, "not_found", "no training job"),
    ("create_head", {"uuid": "k", "parent": "nobody"}, 404, "not_found",
     "parent: no head with uuid 'nobody'"),
    ("create_head", {"uuid": "k", "parent": "a", "config": {"Model": {"args": {"n_classes": 3}}}},
     400, "config", "only Trainer may differ"),
])
def test_errors_map_to_status_codes_with_a_clear_json_message(server, action, args, status, kind, match):
    post(server, "create_head", uuid="a", config=SMALL)
    response = post(server, action, **args)
    body = response.json()
    assert response.status_code == status, body
    assert body["error"] == kind and match in body["message"]
    assert "Traceback" not in response.text
    assert post(server, "predict", uuid="a", data="still fine").status_code == 200


def test_children_of_a_shared_head_over_http(server):
    assert post(server, "create_head", uuid="shared", config=SMALL).json() == "shared"
    for kid in ("kid1", "kid2"):
        assert post(server, "create_head", uuid=kid, parent="shared").json() == kid
    texts = ["hello", "order a pizza", "play jazz"]
    shared = post(server, "predict", uuid="shared", data=texts).json()
    answers = post(server, "predict_many", requests=[["kid1", texts], ["kid2", texts]]).json()
    assert answers == [shared, shared]
    check = post(server, "check_head", uuid="kid1").json()
    assert check["follows_parent"] == "shared" and not check["trained"]
    refused = post(server, "delete_head", uuid="shared")
    assert refused.status_code == 409 and "2 untrained child head(s)" in refused.json()["message"]
    for uid in ("kid1", "kid2", "shared"):
        assert post(server, "delete_head", uuid=uid).json() is True


def test_an_unknown_action_is_a_404_naming_the_actions(server):
    response = requests.post(server + "/predikt/", json={}, timeout=10)
    assert response.status_code == 404 and response.json()["error"] == "not_found"
    assert "predict_many" in response.json()["message"]


def test_a_body_that_is_not_a_json_object_is_a_bad_request(server):
    response = requests.post(server + "/predict/", data="not json", timeout=10,
                             headers={"Content-Type": "application/json"})
    assert response.status_code == 400 and "JSON object" in response.json()["message"]


def test_health_answers_for_probes_without_telling_secrets(server):
    health = requests.get(server + "/healthz", timeout=10).json()
    assert health["status"] == "ok" and "heads_dir" not in health


def test_web_pages_cannot_drive_a_server_without_token(server):
    plain = requests.post(server + "/list_heads/", data="{}", timeout=10,
                          headers={"Content-Type": "text/plain"})
    assert plain.status_code == 415  # a no-cors browser POST
    from_page = requests.post(server + "/list_heads/", json={}, timeout=10,
                              headers={"Origin": "http://evil.example"})
    assert from_page.status_code == 401 and "Origin header" in from_page.json()["message"]
    rebound = requests.post(server + "/list_heads/", json={}, timeout=10,
                            headers={"Host": "evil.example"})
    assert rebound.status_code == 401 and "'evil.example'" in rebound.json()["message"]
    assert requests.post(server + "/list_heads/", json={}, timeout=10).status_code == 200


def test_token_is_required_as_bearer_or_basic_auth(workdir):
    with ph_server(workdir, "--token", "s3cret") as url:
        assert post(url, "list_heads").status_code == 401
        assert requests.post(url + "/list_heads/", json={}, timeout=10,
                             headers={"Authorization": "Bearer wrong"}).status_code == 401
        ok = requests.post(url + "/list_heads/", json={}, timeout=10,
                           headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200 and ok.json() == []
        # Jaseci sends http://user:TOKEN@host:port as HTTP basic auth
        basic = requests.post(url.replace("http://", "http://jaseci:s3cret@") + "/list_heads/",
                              json={}, timeout=10)
        assert basic.status_code == 200
        spec = requests.get(url + "/jaseci_actions_spec/", timeout=10)
        assert spec.status_code == 401
        assert requests.get(url + "/healthz", timeout=10).status_code == 200


def test_without_a_token_only_loopback_clients_are_served():
    def request_from(host):
        return Request({"type": "http", "method": "GET", "client": (host, 4000),
                        "headers": [(b"host", b"127.0.0.1:8000")], "path": "/x"})
    assert _refusal(request_from("127.0.0.1"), None) is None
    assert _refusal(request_from("::1"), None) is None
    refused = _refusal(request_from("10.1.2.3"), None)
    assert refused.status_code == 401 and b"PH_TOKEN" in refused.body
    auth = [(b"authorization", b"Basic " + base64.b64encode(b"u:tok"))]
    allowed = Request({"type": "http", "method": "GET", "client": ("10.1.2.3", 1), "headers": auth,
                       "path": "/x"})
    assert _refusal(allowed, "tok") is None


def test_serving_another_address_without_a_token_refuses_to_start(workdir):
    out = subprocess.run([str(BIN / "ph"), "serve", "--host", "0.0.0.0", "--port", "1"],
                         capture_output=True, text=True, timeout=60, cwd=workdir,
                         env={k: v for k, v in os.environ.items() if k != "PH_TOKEN"})
    assert out.returncode == 2 and "needs a token" in out.stderr


def test_allowed_paths_and_code_are_honoured(workdir, train_json):
    (workdir / "user.py").write_text("class Post:\n    def process(self, x):\n        return 'custom'\n")
    with ph_server(workdir, "--allow-path", str(workdir), "--allow-code") as url:
        config = {**small_config(), "Inference": {"postprocess": {
            "type": "CustomProcessor", "args": {"python_file": "user.py", "module_name": "Post"}}}}
        assert post(url, "create_head", uuid="c", config=config).status_code == 200
        assert post(url, "predict", uuid="c", data="hi").json() == "custom"
        summary = post(url, "train_head", uuid="c").json()
        assert summary["updated"] and summary["weights"].startswith(str(workdir))


def test_module_level_app_factory_runs_under_uvicorn_as_jsorc_starts_it(workdir):
    from helpers.servers import free_port, stop, wait_for
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "ph:serv_actions", "--factory",
                             "--host", "127.0.0.1", "--port", str(port)], cwd=workdir,
                            env={**os.environ, "PH_HEADS_DIR": str(workdir / "k8s-heads")},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for(url + "/healthz", proc)
        assert post(url, "create_head", uuid="k", config=SMALL).json() == "k"
        assert (workdir / "k8s-heads" / "k" / "head.json").is_file()
    finally:
        stop(proc)


def test_an_unexpected_failure_is_a_500_without_a_stack_trace(server, tmp_path_factory):
    health = requests.get(server + "/healthz", timeout=10).json()
    heads = _server_heads_dir(health["pid"])
    (heads / "_jobs" / "garbled.json").write_text("{not json")
    response = requests.post(server + "/train_status/", json={"job_id": "garbled"},
                             headers={"X-Request-ID": "bug-report-42"}, timeout=30)
    assert response.status_code == 500
    assert response.json() == {"error": "internal", "message": response.json()["message"],
                               "request_id": "bug-report-42"}  # to quote with the server log
    assert "JSONDecodeError" in response.json()["message"] and "Traceback" not in response.text


def _server_heads_dir(pid: int):
    """The heads folder of a `ph serve` process (its working folder holds it)."""
    from pathlib import Path
    return Path(os.readlink(f"/proc/{pid}/cwd")) / "heads"


def test_each_worker_leaves_one_core_to_its_event_loop():
    from ph.server.app import ServerSettings
    cores = len(os.sched_getaffinity(0))
    assert ServerSettings(workers=1).compute_threads() == max(1, cores - 1)
    assert ServerSettings(workers=cores).compute_threads() == 1
    assert ServerSettings(workers=2, torch_threads=3).compute_threads() == 3  # the operator's say


def test_serve_runs_torch_with_the_threads_it_chose(server, tmp_path):
    from ph.server.app import ServerSettings
    assert requests.get(server + "/healthz", timeout=10).json()["torch_threads"] == \
        ServerSettings().compute_threads()
    with ph_server(tmp_path, "--threads", "3") as url:
        assert requests.get(url + "/healthz", timeout=10).json()["torch_threads"] == 3


def test_examples_travel_in_the_body_without_any_allowed_path(server):
    post(server, "create_head", uuid="ex", config=SMALL)
    added = post(server, "add_examples", uuid="ex", examples={"greet": ["hi", "hello"]})
    assert added.status_code == 200 and added.json() == 2
    listed = post(server, "list_examples", uuid="ex").json()
    assert [(e["id"], e["text"], e["label"]) for e in listed] == [(1, "hi", "greet"),
                                                                 (2, "hello", "greet")]
    bad = post(server, "add_examples", uuid="ex", examples=[{"input_ids": [1.0], "label": "greet"}])
    assert bad.status_code == 400 and "examples record 0" in bad.json()["message"]
    assert post(server, "check_head", uuid="nobody").json() == {"uuid": "nobody", "exists": False}
    assert post(server, "delete_examples", uuid="ex").json()["deleted"] == 2


def test_training_on_stored_examples_needs_only_the_checkpoint_folder_and_big_bodies_get_413(tmp_path):
    saved = tmp_path / "saved"
    with ph_server(tmp_path, "--allow-path", str(saved), "--max-body-bytes", "20000") as url:
        post(url, "create_head", uuid="u", config=SMALL)
        assert post(url, "add_examples", uuid="u",
                    examples={"greet": ["hi", "hello"], "bye": ["bye", "see you"]}).json() == 4
        summary = post(url, "train_head", uuid="u").json()
        assert summary["updated"] and summary["examples"] == {"stored": 4}, summary
        big = [{"text": "x" * 100, "label": "greet"}] * 300  # about 35 kB
        response = post(url, "add_examples", uuid="u", examples=big)
        body = response.json()
        assert response.status_code == 413 and body["error"] == "too_large"
        assert "limit of 20000 bytes" in body["message"] and "--max-body-bytes" in body["message"]
        assert post(url, "check_head", uuid="u").json()["examples"] == 4
    assert (saved / "models").is_dir()


def test_addin_users_train_together_and_answer_over_http(tmp_path):
    saved = tmp_path / "saved"
    users = ["ann", "ben", "cat"]
    texts = ["book a table for two", "play some jazz", "is it sunny"]
    with ph_server(tmp_path, "--allow-path", str(saved)) as url:
        post(url, "create_head", uuid="shared", config=SMALL)
        post(url, "add_examples", uuid="shared", examples={
            "music": ["play jazz", "put on some rock", "play a song"],
            "weather": ["is it sunny", "will it rain", "weather today"]})
        assert post(url, "train_head", uuid="shared").json()["revision"] == 1
        bad = post(url, "create_head", uuid="bad", parent="shared",
                   addin={"type": "lora", "args": {"rank": 0, "target": ["fc"]}})
        assert bad.status_code == 400 and "addin.args.rank" in bad.json()["message"] \
            and "addin.args.target: unknown argument (did you mean 'targets'?)" in bad.json()["message"]
        for i, uid in enumerate(users):
            assert post(url, "create_head", uuid=uid, parent="shared", addin="lora").json() == uid
            post(url, "add_examples", uuid=uid,
                 examples={"restaurant": [f"book a table for {i + k}" for k in range(3)]})
        trained = post(url, "train_heads", uuids=users).json()["heads"]
        assert all(trained[u]["updated"] and trained[u]["trained_with"] == 3 for u in users)
        together = post(url, "predict_many", requests=[[u, texts] for u in users]).json()
        assert together == [post(url, "predict", uuid=u, data=texts).json() for u in users]
        assert post(url, "check_head", uuid="ann").json()["addin"]["parent_revision"] == 1
        outside = post(url, "export_weights", uuid="ann", weights_file=str(tmp_path / "x.pt"))
        assert outside.status_code == 403 and "outside the folders" in outside.json()["message"]
        exported = post(url, "export_weights", uuid="ann", weights_file=str(saved / "ann.pt"))
        assert exported.status_code == 200 and (saved / "ann.pt").is_file()
