"""Tenants on a real `ph serve --tokens-file`: each token sees and touches only its
tenant's heads, examples and jobs; every action on another tenant's head is answered
exactly as for a head that does not exist; quotas answer 429 with Retry-After and say
which quota; the operator's actions and /metrics are refused to tenants; an admin token
sees all; a bad tokens file stops `ph serve` with one line."""
from __future__ import annotations

import subprocess
import time

import pytest
import requests
import yaml

from helpers.heads import small_config, write_json
from helpers.intent_data import make_split
from helpers.servers import BIN, ph_server

ADMIN, ACME, GLOBEX, SLOW = ("admin-token-0123456789", "acme-token-0123456789",
                             "globex-token-0123456789", "slow-token-0123456789")
TOKENS = {"admins": [ADMIN], "tenants": {
    "acme": {"token": ACME, "quotas": {"heads": 3, "examples": 6, "jobs": 1}},
    "globex": {"tokens": [GLOBEX]},
    "slow": {"token": SLOW, "quotas": {"rps": 2}}}}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tenants")
    (folder / "tokens.yaml").write_text(yaml.safe_dump(TOKENS))
    train, _ = make_split(seed=0, per_intent=4)
    for tenant in TOKENS["tenants"]:  # each tenant's files: <allowed folder>/<tenant>/
        (folder / tenant).mkdir()
        write_json(folder / tenant / "train.json", train)
    with ph_server(folder, "--tokens-file", "tokens.yaml", "--allow-path", str(folder)) as url:
        yield url, folder


def call(url: str, token: str, action: str, **args) -> requests.Response:
    return requests.post(f"{url}/{action}/", json=args, timeout=60,
                         headers={"Authorization": f"Bearer {token}"})


def body(response: requests.Response) -> dict | list:
    value = response.json()
    if isinstance(value, dict):
        value.pop("request_id", None)
    return value


def training(folder=None) -> dict:
    """Relative paths: they start in the tenant's own folder."""
    return {"Trainer": {"dataloader": {"args": {"train_json": "train.json"}},
                        "trainer": {"epochs": 1, "save_dir": "saved"}}}


def test_each_tenant_lists_and_names_only_its_own_heads(server):
    url, _ = server
    assert call(url, ACME, "create_head", uuid="same", config=small_config()).json() == "same"
    assert call(url, GLOBEX, "create_head", uuid="same", config=small_config()).json() == "same"
    made = call(url, GLOBEX, "create_head", config=small_config()).json()  # a new uuid4
    assert call(url, ACME, "list_heads").json() == ["same"]
    assert sorted(call(url, GLOBEX, "list_heads").json()) == sorted(["same", made])
    everything = call(url, ADMIN, "list_heads").json()
    assert {"acme.same", "globex.same", f"globex.{made}"} <= set(everything)
    assert call(url, ACME, "check_head", uuid="same").json()["uuid"] == "same"
    for token in (ACME, GLOBEX):
        assert call(url, token, "delete_head", uuid="same").json() is True
    call(url, GLOBEX, "delete_head", uuid=made)


def test_every_action_on_another_tenants_head_is_answered_as_for_a_missing_one(server):
    url, folder = server
    call(url, ACME, "create_head", uuid="mine", config=small_config()).raise_for_status()
    call(url, ACME, "add_examples", uuid="mine", examples={"greet": ["hi"]}).raise_for_status()
    job = call(url, ACME, "train_head", uuid="mine", background=True, config=training(folder)).json()
    uses = {  # every action that names a head (or a job), with the head's name filled in
        "predict": lambda h: {"uuid": h, "data": "hello"},
        "predict_many": lambda h: {"requests": [[h, "hello"]]},
        "train_head": lambda h: {"uuid": h, "config": training(folder)},
        "train_heads": lambda h: {"uuids": [h]},
        "rebase_addins": lambda h: {"parent": h},
        "load_weights": lambda h: {"uuid": h, "weights_file": str(folder / "w.pt")},
        "get_config": lambda h: {"uuid": h},
        "check_head": lambda h: {"uuid": h},
        "delete_head": lambda h: {"uuid": h},
        "add_examples": lambda h: {"uuid": h, "examples": {"greet": ["yo"]}},
        "list_examples": lambda h: {"uuid": h},
        "delete_examples": lambda h: {"uuid": h},
        "export_weights": lambda h: {"uuid": h, "weights_file": str(folder / "out.pt")},
        "list_revisions": lambda h: {"uuid": h},
        "rollback_head": lambda h: {"uuid": h, "revision": 1},
        "create_head": lambda h: {"uuid": "kid", "parent": h},
    }
    for action, args in uses.items():
        other = call(url, GLOBEX, action, **args("mine"))
        missing = call(url, GLOBEX, action, **args("nobody"))
        assert other.status_code == missing.status_code, action
        assert body(other) == _named(body(missing), "nobody", "mine"), action
    for action in ("train_status", "stop_training"):
        other = call(url, GLOBEX, action, job_id=job["job_id"])
        missing = call(url, GLOBEX, action, job_id="00000000-0000-4000-8000-000000000001")
        assert other.status_code == missing.status_code == 404
        assert body(other) == _named(body(missing), "00000000-0000-4000-8000-000000000001",
                                     job["job_id"])
    status = _wait(lambda: call(url, ACME, "train_status", job_id=job["job_id"]).json(),
                   lambda s: s["state"] not in ("queued", "running"))
    assert status["state"] == "succeeded" and status["uuid"] == "mine"  # its own, unprefixed
    assert call(url, ACME, "check_head", uuid="mine").json()["revision"] == 1  # untouched
    call(url, ACME, "delete_head", uuid="mine").raise_for_status()


def test_over_a_quota_the_answer_is_429_with_retry_after_and_which_quota(server):
    url, folder = server
    for i in range(3):
        call(url, ACME, "create_head", uuid=f"q{i}", config=small_config()).raise_for_status()
    over = call(url, ACME, "create_head", uuid="q3", config=small_config())
    assert over.status_code == 429 and int(over.headers["Retry-After"]) > 0
    assert over.json()["error"] == "quota" and "quota heads" in over.json()["message"]
    assert "operator" in over.json()["message"]
    assert call(url, GLOBEX, "create_head", uuid="q3", config=small_config()).ok  # its own
    call(url, ACME, "add_examples", uuid="q0", examples={"greet": ["a", "b", "c", "d"]}).raise_for_status()
    over = call(url, ACME, "add_examples", uuid="q1", examples={"greet": ["e", "f", "g"]})
    assert over.status_code == 429 and "quota examples" in over.json()["message"]
    assert call(url, ACME, "check_head", uuid="q1").json()["examples"] == 0  # nothing stored
    slow_job = {"Trainer": {**training(folder)["Trainer"], "trainer": {
        "epochs": 1000, "early_stop": 0, "save_dir": "saved"}}}
    job = call(url, ACME, "train_head", uuid="q0", background=True, config=slow_job).json()
    over = call(url, ACME, "train_head", uuid="q1", background=True, config=training(folder))
    assert over.status_code == 429 and "quota jobs" in over.json()["message"]
    call(url, ACME, "stop_training", job_id=job["job_id"]).raise_for_status()
    _wait(lambda: call(url, ACME, "train_status", job_id=job["job_id"]).json(),
          lambda s: s["state"] not in ("queued", "running"))
    answers = [call(url, SLOW, "list_heads").status_code for _ in range(8)]
    assert answers[0] == 200 and 429 in answers  # 2 requests per second
    time.sleep(1.1)
    assert call(url, SLOW, "list_heads").status_code == 200
    for i in range(3):
        call(url, ACME, "delete_head", uuid=f"q{i}")
    call(url, GLOBEX, "delete_head", uuid="q3")


def test_a_tenant_uses_only_files_in_its_own_folder(server):
    url, folder = server
    call(url, ACME, "create_head", uuid="files", config=small_config()).raise_for_status()
    trained = call(url, ACME, "train_head", uuid="files", config=training()).json()
    best = folder / "acme" / "saved" / "models" / "PersonalizedHeadTrainer" / "acme.files" / "best_model.pt"
    assert trained["weights"] == str(best) and best.is_file()
    call(url, GLOBEX, "create_head", uuid="thief", config=small_config()).raise_for_status()
    for path in (str(best), "../acme/saved", str(folder / "acme" / "train.json")):
        stolen = call(url, GLOBEX, "train_head", uuid="thief", config={"Trainer": {
            "dataloader": {"args": {"train_json": "train.json"}},
            "trainer": {"epochs": 1, "save_dir": "saved", "resume": path}}})
        assert stolen.status_code == 403 and "outside the folders" in stolen.json()["message"]
    assert call(url, GLOBEX, "load_weights", uuid="thief", weights_file=str(best)).status_code == 403
    call(url, ACME, "delete_head", uuid="files")
    call(url, GLOBEX, "delete_head", uuid="thief")


def test_predict_many_in_either_form_names_only_the_tenants_heads(server):
    url, _ = server
    call(url, ACME, "create_head", uuid="p", config=small_config()).raise_for_status()
    for request in ({"uuid": "p", "data": "hi"}, ["p", "hi"]):
        own = call(url, ACME, "predict_many", requests=[request]).json()[0]
        assert isinstance(own, int)
        other = call(url, GLOBEX, "predict_many", requests=[request]).json()[0]
        assert other["error"] == "not_found" and "'p'" in other["message"]
    for request in ({"uuid": "acme.p", "data": "hi"}, ["acme.p", "hi"]):  # the stored name
        assert call(url, GLOBEX, "predict_many", requests=[request]).json()[0]["error"] == "not_found"
    call(url, ACME, "delete_head", uuid="p")


def test_a_tenants_own_data_comes_back_as_it_was_sent(server):
    url, _ = server
    call(url, ACME, "create_head", uuid="d", config=small_config()).raise_for_status()
    call(url, ACME, "add_examples", uuid="d",
         examples=[{"text": "visit acme.com or 'acme.x'", "label": "acme.greet"}]).raise_for_status()
    row = call(url, ACME, "list_examples", uuid="d").json()[0]
    assert (row["text"], row["label"]) == ("visit acme.com or 'acme.x'", "acme.greet")
    call(url, ACME, "delete_head", uuid="d")


def test_the_operators_actions_and_metrics_are_refused_to_tenants(server):
    url, _ = server
    for action in ("create_head_list", "head_stats"):
        refused = call(url, ACME, action)
        assert refused.status_code == 403 and "operator" in refused.json()["message"]
    assert call(url, ADMIN, "head_stats").ok
    assert requests.get(url + "/metrics", headers={"Authorization": f"Bearer {ACME}"},
                        timeout=10).status_code == 403
    assert requests.get(url + "/metrics", headers={"Authorization": f"Bearer {ADMIN}"},
                        timeout=10).ok
    assert call(url, "not-a-token-0123456789", "list_heads").status_code == 401


@pytest.mark.parametrize("tokens, match", [
    ({"tenants": {"Bad Name": {"token": ACME}}}, "tenant name"),
    ({"tenants": {"a": {"token": "short"}}}, "at least 16"),
    ({"tenants": {"a": {"token": ACME}, "b": {"token": ACME}}}, "already given"),
    ({"tenants": {"a": {"token": ACME, "quotas": {"head": 3}}}}, "unknown head"),
    ({"tenants": {"a": {"token": ACME, "quotas": {"jobs": 0}}}}, "must be a number > 0"),
])
def test_a_bad_tokens_file_stops_ph_serve_with_one_line(tmp_path, tokens, match):
    (tmp_path / "tokens.yaml").write_text(yaml.safe_dump(tokens))
    done = subprocess.run([str(BIN / "ph"), "serve", "--tokens-file", "tokens.yaml"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and match in done.stderr and "Traceback" not in done.stderr
    assert ACME not in done.stderr  # never a token


def _named(value, old: str, new: str):
    """`value` with the name `old` written as `new` (in uuids and messages)."""
    if isinstance(value, str):
        return value.replace(old, new)
    if isinstance(value, list):
        return [_named(v, old, new) for v in value]
    if isinstance(value, dict):
        return {_named(k, old, new): _named(v, old, new) for k, v in value.items()}
    return value


def _wait(get, ok, timeout: float = 120):
    deadline = time.time() + timeout
    while True:
        value = get()
        if ok(value) or time.time() > deadline:
            return value
        time.sleep(0.3)
