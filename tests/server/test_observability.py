"""What an operator watches, on real `ph serve` processes: /metrics in the Prometheus
text format under real traffic (parsed with prometheus-client's parser, summed over
`--workers 2` and a background job's own process), guarded by the token unless opened;
/livez and /readyz, which fails while Redis is stopped and recovers when it is back;
request ids in headers, error bodies, log lines (text or JSON, with timestamps) and the
job a request started."""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from helpers.heads import small_config, write_json

from helpers.servers import BIN, RedisServer, distributed_url, free_port, stop, wait_for
from helpers.intent_data import make_split
from helpers.stores import TEST_BUCKET

TOKEN = "metrics-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@contextlib.contextmanager
def serve(cwd: Path, *args: str, env: dict | None = None) -> Iterator[tuple[str, Path]]:
    """`ph serve` with its log in a file; yields (url, log file)."""
    port, log = free_port(), cwd / f"serve-{time.monotonic_ns()}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(BIN / "ph"), "serve", "--port", str(port), *args], cwd=cwd,
                                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(url + "/livez", proc)
        yield url, log
    finally:
        stop(proc)


def call(url: str, action: str, headers: dict | None = None, **args) -> requests.Response:
    return requests.post(f"{url}/{action}/", json=args, headers={**AUTH, **(headers or {})},
                         timeout=60)


def scrape(url: str, headers: dict | None = AUTH) -> dict[tuple, float]:
    """{(sample name, sorted labels): value} from GET /metrics."""
    response = requests.get(url + "/metrics", headers=headers, timeout=30)
    response.raise_for_status()
    assert response.headers["content-type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(response.text) for s in family.samples}


def total(samples: dict, name: str, **labels) -> float:
    return sum(v for (n, ls), v in samples.items()
               if n == name and all(dict(ls).get(k) == str(w) for k, w in labels.items()))


def wait_job(url: str, job_id: str, timeout: float = 120) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        status = call(url, "train_status", job_id=job_id).json()
        if status["state"] not in ("queued", "running"):
            return status
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} still running")


def test_metrics_count_real_traffic_over_two_workers_and_a_job(tmp_path):
    train, _ = make_split(seed=0, per_intent=8)
    write_json(tmp_path / "train.json", train)
    with serve(tmp_path, "--workers", "2", "--token", TOKEN, "--allow-path", str(tmp_path)) as (url, _):
        for i in range(4):
            assert call(url, "create_head", uuid=f"m{i}", config=small_config()).status_code == 200
        seen: list[float] = []
        scraper = threading.Thread(target=lambda: [  # during the traffic: parses, only grows
            seen.append(total(scrape(url), "ph_requests_total", action="predict")) for _ in range(5)])
        scraper.start()
        for i in range(60):  # new connections: the kernel spreads them over both workers
            assert call(url, "predict", uuid=f"m{i % 4}", data="hello there").status_code == 200
        scraper.join()
        assert len(seen) == 5 and seen == sorted(seen)
        assert call(url, "predict", uuid="nobody", data="x").status_code == 404
        assert call(url, "no_such_action").status_code == 404
        job = call(url, "train_head", uuid="m0", background=True, config={"Trainer": {
            "dataloader": {"args": {"train_json": str(tmp_path / "train.json"),
                                    "validation_split": 0}},
            "trainer": {"epochs": 3, "save_dir": str(tmp_path / "saved")}}}).json()
        assert wait_job(url, job["job_id"])["state"] == "succeeded"
        assert requests.get(url + "/metrics", timeout=10).status_code == 401  # token guards it
        samples = scrape(url)

    assert total(samples, "ph_requests_total", action="predict", status=200) == 60
    assert total(samples, "ph_requests_total", action="predict", status=404) == 1
    assert total(samples, "ph_requests_total", action="other", status=404) == 1
    assert total(samples, "ph_request_seconds_count", action="predict") == 61
    assert total(samples, "ph_predict_batch_size_sum") == 61  # every predict in some pass
    assert 1 <= total(samples, "ph_predict_pass_seconds_count") <= 61
    assert 1 <= total(samples, "ph_heads_loaded") <= 8  # each worker holds what it served
    assert total(samples, "ph_head_bytes") > 0
    assert total(samples, "ph_head_cold_loads_total") >= 4
    # the job ran in a process of its own, which wrote to the same metrics folder
    assert total(samples, "ph_jobs_total", state="running") == 1
    assert total(samples, "ph_jobs_total", state="succeeded") == 1
    assert total(samples, "ph_training_epochs_total") == 3
    assert total(samples, "ph_training_samples_total") == 3 * len(train)


def test_metrics_can_be_opened_to_a_scraper_or_turned_off(tmp_path):
    with serve(tmp_path, "--token", TOKEN, "--metrics-open") as (url, _):
        assert "ph_heads_loaded" in requests.get(url + "/metrics", timeout=10).text
        assert requests.post(url + "/list_heads/", json={}, timeout=10).status_code == 401
    with serve(tmp_path, env={"PH_METRICS": "0"}) as (url, _):
        assert requests.get(url + "/metrics", timeout=10).status_code == 404


def test_readyz_fails_while_redis_is_stopped_and_recovers(tmp_path, s3_server, monkeypatch):
    for name, value in s3_server.env.items():
        monkeypatch.setenv(name, value)
    with RedisServer(tmp_path / "redis") as redis:
        store = distributed_url(redis.url, s3_server.endpoint, TEST_BUCKET, "ready", "ready")
        with serve(tmp_path, "--store", store, "--heads-dir", str(tmp_path / "cache")) as (url, _):
            assert requests.get(url + "/readyz", timeout=10).json() == {"status": "ready"}
            redis.stop()
            answer = _eventually(lambda: requests.get(url + "/readyz", timeout=10),
                                 lambda r: r.status_code == 503)
            assert "Redis" in answer.json()["message"]
            assert requests.get(url + "/livez", timeout=10).status_code == 200  # alive all along
            redis.start()
            _eventually(lambda: requests.get(url + "/readyz", timeout=10),
                        lambda r: r.status_code == 200)


def test_request_ids_reach_headers_error_bodies_logs_and_jobs(tmp_path):
    train, _ = make_split(seed=0, per_intent=4)
    write_json(tmp_path / "train.json", train)
    with serve(tmp_path, "--log-format", "json", "--log-level", "info", "--access-log",
               "--allow-path", str(tmp_path)) as (url, log):
        given = requests.post(url + "/list_heads/", json={}, timeout=10,
                              headers={"X-Request-ID": "trace-7f3a"})
        assert given.headers["x-request-id"] == "trace-7f3a"
        made = requests.post(url + "/list_heads/", json={}, timeout=10)
        assert len(made.headers["x-request-id"]) == 32
        unsafe = requests.post(url + "/list_heads/", json={}, timeout=10,
                               headers={"X-Request-ID": "x\" injected=1"})
        assert unsafe.headers["x-request-id"] != "x\" injected=1"  # never echoed into logs
        missing = requests.post(url + "/predict/", json={"uuid": "nobody", "data": "x"},
                                headers={"X-Request-ID": "trace-404"}, timeout=10)
        assert missing.json()["request_id"] == "trace-404" and missing.status_code == 404
        requests.post(url + "/create_head/", json={"uuid": "h", "config": small_config()},
                      timeout=30).raise_for_status()
        job = requests.post(url + "/train_head/", headers={"X-Request-ID": "trace-job"}, json={
            "uuid": "h", "background": True, "config": {"Trainer": {
                "dataloader": {"args": {"train_json": str(tmp_path / "train.json")}},
                "trainer": {"epochs": 1, "save_dir": str(tmp_path / "saved")}}}},
            timeout=30).json()
        status = _eventually(lambda: requests.post(url + "/train_status/",
                                                   json={"job_id": job["job_id"]}, timeout=10).json(),
                             lambda s: s["state"] not in ("queued", "running"))
        assert status["request_id"] == "trace-job"
        assert status["log"] and all("[trace-job]" in line for line in status["log"])
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    assert lines and all({"time", "level", "logger", "message", "request_id"} <= set(line)
                         for line in lines)
    assert all(line["time"].endswith("Z") for line in lines)
    assert any(line["request_id"] == "trace-7f3a" for line in lines)  # the access log line


def test_a_bad_log_format_is_one_line_and_status_2(tmp_path):
    done = subprocess.run([str(BIN / "ph"), "serve", "--log-format", "xml"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "--log-format" in done.stderr and "text, json" in done.stderr


def _eventually(get, ok, timeout: float = 30):
    deadline = time.time() + timeout
    while True:
        value = get()
        if ok(value) or time.time() > deadline:
            assert ok(value), value
            return value
        time.sleep(0.3)


def test_openapi_describes_every_action_from_its_signature_and_is_guarded(tmp_path):
    import inspect

    from openapi_spec_validator import validate  # with moto[server], in the test extra
    from ph import api
    with serve(tmp_path, "--token", TOKEN) as (url, _):
        assert requests.get(url + "/openapi.json", timeout=10).status_code == 401
        document = requests.get(url + "/openapi.json", headers=AUTH, timeout=10).json()
        page = requests.get(url + "/docs", headers=AUTH, timeout=10)
    validate(document)  # a valid OpenAPI 3.0 document
    assert page.status_code == 200 and "/openapi.json" in page.text
    assert set(document["paths"]) == {f"/{fn.__name__}/" for fn in api.ACTIONS}
    for fn in api.ACTIONS:
        operation = document["paths"][f"/{fn.__name__}/"]["post"]
        body = operation["requestBody"]["content"]["application/json"]["schema"]
        params = inspect.signature(fn).parameters
        assert list(body["properties"]) == list(params)
        assert body.get("required", []) == [n for n, p in params.items()
                                            if p.default is inspect.Parameter.empty]
        assert operation["description"] == inspect.getdoc(fn) or not inspect.getdoc(fn)
    status = document["paths"]["/train_status/"]["post"]["requestBody"]["content"][
        "application/json"]["schema"]["properties"]
    assert status == {"job_id": {"type": "string"}, "log_lines": {"type": "integer", "default": 20}}
    with serve(tmp_path, env={"PH_API_DOCS": "0"}) as (url, _):
        assert requests.get(url + "/openapi.json", timeout=10).status_code == 404
