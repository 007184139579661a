"""`ph serve` under concurrent load, beside a hand-written FastAPI server, in one run.

Requests are `POST /predict/ {"uuid": "u<random 0..N-1>", "data": ...}` on keep-alive
connections (loadgen.py: wrk where installed). Points:
- 100 heads (all warm) at 1, 8, 32 and 128 connections: `ph serve` with 1 and 2 workers,
  the hand-written anchor (one forward per request), and the anchor answering a
  constant (the HTTP ceiling);
- where a request's server time goes: CPU per request in the stacked pass vs the rest
  (HTTP, JSON, event loop), from the server's own counters (`/healthz`);
- 1,000 heads through a 2 GB memory budget (most heads cold);
- serving while a background training job runs;
- the Jaseci path: a walker calling `ph.predict` through `actions load remote`;
- metrics: the same point with metrics on (the default) and off (PH_METRICS=0);
- `minilm` (not in the default parts): 100 all-MiniLM-L6-v2 heads, the torch backend
  against ONNX Runtime int8, new texts and half repeated, and batch windows.
"""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import requests

import loadgen
from common import emit, latency_ms, parser  # (common puts tests/ on the path)
from helpers.servers import distributed_store, free_port, stop, wait_for


@contextlib.contextmanager
def server(cmd: list[str], cwd: Path, env: dict | None = None) -> Iterator[tuple[str, subprocess.Popen]]:
    port = free_port()
    proc = subprocess.Popen([*cmd, "--port", str(port)], cwd=cwd, env={**os.environ, **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(url + "/healthz", proc, timeout=120)
        yield url, proc
    finally:
        stop(proc)


def ph_serve(heads_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "ph", "serve", "--heads-dir", str(heads_dir), "--log-level",
            "warning", *extra]


def make_heads(heads_dir: Path, n: int, store: str | None = None) -> None:
    from ph.heads.service import HeadRegistry
    registry = HeadRegistry(heads_dir, store=store)
    for i in range(n):
        registry.create_head(f"u{i}", {"Inference": {"device": "cpu"}})


def warm(url: str, n: int, seconds: float = 4, generator: str = "auto") -> None:
    """Load every head, then run unrecorded load on many connections, so that every worker
    has loaded every head and derived its banks' fused weights (after 8 passes) before the
    measured points: they measure the steady state, not start-up."""
    session = requests.Session()
    for i in range(n):
        session.post(f"{url}/predict/", json={"uuid": f"u{i}", "data": "warm up"}).raise_for_status()
    if seconds > 0:
        loadgen.run(url, n, 32, seconds, generator=generator)


def process_cpu_seconds(pid: int) -> float:
    """CPU seconds of a process and its live children (uvicorn's workers)."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError):
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(entry.name) == pid or int(fields[1]) == pid:
                total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def point(url: str, proc: subprocess.Popen | None, heads: int, connections: int, seconds: float,
          kind: str = "text", generator: str = "auto") -> dict:
    """One load point, with the server's CPU per request and, for ph, where it went."""
    health = requests.get(f"{url}/healthz").json()
    cpu = process_cpu_seconds(proc.pid) if proc else 0.0
    result = loadgen.run(url, heads, connections, seconds, kind, generator)
    if proc is not None:
        served = max(1, result["requests"])
        result["server_cpu_ms_per_request"] = round((process_cpu_seconds(proc.pid) - cpu) / served * 1e3, 4)
        after = requests.get(f"{url}/healthz").json()
        if "predict_pass_cpu_s" in after:
            batches = after["predict_batches"] - health["predict_batches"]
            reqs = after["predict_requests"] - health["predict_requests"]
            pass_cpu = after["predict_pass_cpu_s"] - health["predict_pass_cpu_s"]
            result.update(requests_per_pass=round(reqs / max(1, batches), 2),
                          pass_cpu_ms_per_request=round(pass_cpu / max(1, reqs) * 1e3, 4))
    return result


def sweep(url: str, proc, heads: int, connections: list[int], seconds: float, generator: str) -> list:
    return [point(url, proc, heads, c, seconds, generator=generator) for c in connections]


def distributed_vs_local(heads_dir: Path, work: Path, heads: int, connections: int,
                         seconds: float, generator: str, warmup: float, rounds: int = 3) -> dict:
    """Cached heads over HTTP: `ph serve --store` on Redis + S3 (started here) against
    `ph serve` on the heads folder. Both servers stay up and the measured points
    alternate, so drift in the machine's load hits both alike."""
    with distributed_store(work, "ph-bench", "serve") as (url, _):
        make_heads(work / "maker-cache", heads, store=url)
        with server(ph_serve(heads_dir), work) as local, \
                server(ph_serve(work / "cache", "--store", url), work) as dist:
            return side_by_side({"distributed": dist, "local": local}, heads, connections,
                                seconds, generator, warmup, rounds)


def metrics_cost(heads_dir: Path, work: Path, heads: int, connections: int, seconds: float,
                 generator: str, warmup: float, rounds: int = 5) -> dict:
    """`ph serve` with metrics (the default) against PH_METRICS=0, both up, points
    alternating so drift hits both alike. Request ids are on in both (they are not a
    setting); their cost is in both figures."""
    with server(ph_serve(heads_dir), work) as on, \
            server(ph_serve(heads_dir), work, {"PH_METRICS": "0"}) as off:
        return side_by_side({"metrics_on": on, "metrics_off": off}, heads, connections,
                            seconds, generator, warmup, rounds)


def side_by_side(servers: dict, heads: int, connections: int, seconds: float, generator: str,
                 warmup: float, rounds: int) -> dict:
    """Two running servers ({name: (url, proc)}), warmed, then measured point for point
    in turn; the median of the first's requests/s over the second's, per round."""
    for url, _ in servers.values():
        warm(url, heads, warmup, generator)
    rps: dict = {name: [] for name in servers}
    for _ in range(rounds):
        for name, (url, proc) in servers.items():
            rps[name].append(point(url, proc, heads, connections, seconds,
                                   generator=generator)["rps"])
    first, second = servers
    ratios = sorted(a / b for a, b in zip(rps[first], rps[second]))
    return {"connections": connections, "rps": rps,
            f"{first}_over_{second}": round(ratios[len(ratios) // 2], 3)}


def jaseci_walker(url: str, repeat: int) -> dict:
    """p50/p99 of a walker calling ph.predict through `actions load remote`."""
    from jaseci.jsorc.jsorc import JsOrc
    from jaseci.jsorc.live_actions import load_remote_actions
    if not load_remote_actions(url):  # what `actions load remote URL` does
        raise RuntimeError(f"actions load remote {url} failed")
    master = JsOrc.master(h=JsOrc.super_master()._h)
    code = "walker ask { has text; can ph.predict; root { report ph.predict(uuid='u1', data=text); } }"
    master.general_interface_to_api(api_name="sentinel_register", params={"code": code})
    run = lambda: master.general_interface_to_api(api_name="walker_run",
                                                  params={"name": "ask", "ctx": {"text": loadgen.TEXT}})
    first = run()
    if not first["success"] or not isinstance(first["report"][0], int):
        raise RuntimeError(f"walker failed: {first}")
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return latency_ms(times)


def with_training(url: str, proc, work: Path, heads: int, connections: int, seconds: float,
                  generator: str) -> dict:
    """Throughput while a background training job runs, against the same point without it."""
    from helpers.intent_data import make_split
    train, _ = make_split(seed=0, per_intent=60)
    (work / "train.json").write_text(json.dumps(train))
    quiet = point(url, proc, heads, connections, seconds, generator=generator)
    job = requests.post(f"{url}/train_head/", json={
        "uuid": "u0", "background": True, "config": {"Trainer": {
            "dataloader": {"args": {"train_json": str(work / "train.json")}},
            "trainer": {"epochs": 1000, "early_stop": 0, "save_dir": str(work / "saved"),
                        "save_period": 1000, "tensorboard": False}}}}).json()
    deadline = time.time() + 60
    while requests.post(f"{url}/train_status/", json={"job_id": job["job_id"]}).json()["state"] != "running":
        if time.time() > deadline:
            raise RuntimeError("the training job did not start")
        time.sleep(0.2)
    time.sleep(1)
    busy = point(url, proc, heads, connections, seconds, generator=generator)
    status = requests.post(f"{url}/stop_training/", json={"job_id": job["job_id"]}).json()
    return {"without_training": quiet, "with_training": busy, "job_epoch_when_measured": status["epoch"],
            "ratio": round(busy["rps"] / quiet["rps"], 3)}


MINILM = {"torch": {"model": "all-MiniLM-L6-v2"},
          "onnx_int8": {"model": "all-MiniLM-L6-v2", "backend": "onnx", "quantize": "int8"}}


def minilm_serving(work: Path, heads: int, connections: int, seconds: float, generator: str,
                   warmup: float, windows: list[float], workers: int = 1) -> dict:
    """`ph serve` with `heads` all-MiniLM-L6-v2 heads, one server per encoder backend, a
    random head per request: requests/s and p99 with a new text every request (the
    encoder's cost) and with half the texts repeated (the embedding cache's gain); then
    the fast backend under each batch window."""
    out: dict = {"heads": heads, "connections": connections, "workers": workers, "backends": {}}
    for backend, args in MINILM.items():
        heads_dir = work / f"minilm-{backend}-{workers}"
        config = {"Inference": {"device": "cpu", "preprocess": {"args": {
            "encoder": "sentence_transformers", "encoder_args": args}}}}
        from ph.heads.service import HeadRegistry
        registry = HeadRegistry(heads_dir)
        for i in range(heads):
            registry.create_head(f"u{i}", config)
        points = {}
        last = backend == list(MINILM)[-1]
        for window in (windows if last else windows[:1]):
            extra = ("--batch-window-ms", str(window), "--workers", str(workers))
            with server(ph_serve(heads_dir, *extra), work) as (url, proc):
                warm(url, heads, warmup, generator)
                for kind in ("unique", "repeat50") if window == windows[0] else ("unique",):
                    points[f"{kind}_window_{window:g}ms"] = point(url, proc, heads, connections,
                                                                 seconds, kind, generator)
                if window == windows[0]:
                    points["head_stats_encoders"] = requests.post(
                        f"{url}/head_stats/", json={}).json().get("encoders")
        out["backends"][backend] = points
    first = f"unique_window_{windows[0]:g}ms"
    torch_rps, fast = out["backends"]["torch"][first]["rps"], out["backends"]["onnx_int8"]
    out["onnx_int8_over_torch"] = round(fast[first]["rps"] / torch_rps, 2)
    out["cache_gain"] = {b: round(p[f"repeat50_window_{windows[0]:g}ms"]["rps"] / p[first]["rps"], 2)
                         for b, p in out["backends"].items()}
    return out


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--heads", type=int, default=100)
    p.add_argument("--connections", default="1,8,32,128")
    p.add_argument("--seconds", type=float, default=6)
    p.add_argument("--generator", default="auto", choices=("auto", "wrk", "python"))
    p.add_argument("--parts",
                   default="sweep,workers,anchor,vector,budget,training,jaseci,distributed,metrics")
    p.add_argument("--budget-heads", type=int, default=1000)
    p.add_argument("--budget", default="2GB")
    p.add_argument("--jaseci-repeat", type=int, default=300)
    p.add_argument("--warmup", type=float, default=4, help="seconds of unrecorded load first")
    p.add_argument("--windows", default="0,2,5,10",
                   help="part minilm: batch windows (ms) tried with the fast backend")
    p.add_argument("--minilm-workers", default="1,2", help="part minilm: ph serve --workers")
    args = p.parse_args()
    parts = set(args.parts.split(","))
    conns = [int(c) for c in args.connections.split(",")]
    at = 32 if 32 in conns else conns[-1]
    work = Path(tempfile.mkdtemp(prefix="ph-serve-load-"))
    heads_dir = work / "heads"
    if "minilm" in parts:  # not in the default parts: its own servers and heads
        out_minilm = [minilm_serving(work, args.heads, at, args.seconds, args.generator,
                                     args.warmup, [float(w) for w in args.windows.split(",")],
                                     int(workers))
                      for workers in args.minilm_workers.split(",")]
        if parts == {"minilm"}:
            emit("serve_load", args, __import__("torch").device("cpu"), {"minilm": out_minilm})
            return
    make_heads(heads_dir, max(args.heads, args.budget_heads if "budget" in parts else 0))
    out: dict = {"heads": args.heads, "seconds_per_point": args.seconds, "points": {}}
    if "minilm" in parts:
        out["minilm"] = out_minilm
    anchor_cmd = [sys.executable, str(Path(__file__).parent / "anchor_server.py"), "--heads", str(args.heads)]
    if "anchor" in parts:
        with server(anchor_cmd, work) as (url, proc):
            out["points"]["anchor"] = sweep(url, proc, args.heads, conns, args.seconds, args.generator)
        with server([*anchor_cmd, "--constant"], work) as (url, proc):
            out["points"]["anchor_constant"] = sweep(url, proc, args.heads, [conns[0], at],
                                                     args.seconds, args.generator)
    with server(ph_serve(heads_dir, "--allow-path", str(work)), work) as (url, proc):
        warm(url, args.heads, args.warmup, args.generator)
        if "sweep" in parts:
            out["points"]["ph_1_worker"] = sweep(url, proc, args.heads, conns, args.seconds, args.generator)
        if "vector" in parts:
            out["points"]["ph_1_worker_vector"] = [point(url, proc, args.heads, at, args.seconds,
                                                         "vector", args.generator)]
        if "training" in parts:
            out["training"] = with_training(url, proc, work, args.heads, at, args.seconds, args.generator)
        if "jaseci" in parts:
            out["jaseci_walker_remote"] = jaseci_walker(url, args.jaseci_repeat)
    if "workers" in parts:
        with server(ph_serve(heads_dir, "--workers", "2"), work) as (url, proc):
            warm(url, args.heads, 2 * args.warmup, args.generator)  # each worker loads its own copy
            out["points"]["ph_2_workers"] = sweep(url, proc, args.heads, conns, args.seconds, args.generator)
    if "budget" in parts:
        with server(ph_serve(heads_dir, "--memory-budget", args.budget), work) as (url, proc):
            warm(url, args.heads, 0)  # most of its heads are meant to be cold
            budget = point(url, proc, args.budget_heads, at, max(args.seconds, 10), generator=args.generator)
            stats = requests.post(f"{url}/head_stats/", json={}).json()
            out["budget"] = {"heads": args.budget_heads, "budget": args.budget, **budget,
                             "head_stats": stats}
    if "metrics" in parts:
        out["metrics_cost"] = metrics_cost(heads_dir, work, args.heads, at, args.seconds,
                                           args.generator, args.warmup)
    if "distributed" in parts:
        out["distributed"] = distributed_vs_local(heads_dir, work, args.heads, at, args.seconds,
                                                  args.generator, args.warmup)
    out["summary"] = summarize(out, at)
    emit("serve_load", args, __import__("torch").device("cpu"), out)


def summarize(out: dict, at: int) -> dict:
    points = out["points"]
    pick = lambda name: {r["connections"]: r for r in points.get(name, [])}
    ph1, ph2, anchor = pick("ph_1_worker"), pick("ph_2_workers"), pick("anchor")
    summary = {}
    if at in ph1 and at in anchor:
        summary[f"ph_vs_anchor_at_{at}"] = round(ph1[at]["rps"] / anchor[at]["rps"], 2)
    if ph1:
        rates = [ph1[c]["rps"] for c in sorted(ph1)]
        summary["ph_rps_by_connections"] = rates
        summary["ph_never_falls"] = all(b >= 0.95 * a for a, b in zip(rates, rates[1:]))
    if ph1 and ph2:
        summary["two_workers_vs_one"] = [round(ph2[c]["rps"] / ph1[c]["rps"], 2) for c in sorted(ph1) if c in ph2]
    return summary


if __name__ == "__main__":
    main()
