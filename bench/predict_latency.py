"""Latency of one predict request for the default head, layer by layer.

bare forward (the model on a ready tensor) -> + text encoding -> Python API (ph.predict)
-> the Jaseci action in process (the function Jaseci calls, and a whole walker run)
-> HTTP to `ph serve` on 127.0.0.1 (a keep-alive client). p50/p99 and each layer's
overhead over the bare forward.
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch

from common import ROOT, emit, latency_ms, parser, setup, timed

TEXT = "I want to order a pizza"


def http_latency(heads_dir: Path, repeat: int) -> dict:
    import requests
    sys.path.insert(0, str(ROOT / "tests"))
    from helpers.servers import ph_server
    with ph_server(heads_dir.parent, "--heads-dir", str(heads_dir)) as url:
        session = requests.Session()
        results = {}
        for name, data in (("text", TEXT), ("vector", [0.01] * 768)):
            body = {"uuid": "bench", "data": data}
            times = timed(lambda: session.post(f"{url}/predict/", json=body).raise_for_status(),
                          repeat, torch.device("cpu"), warmup=20)
            results[name] = latency_ms(times)
        return results


def jaseci_latency(repeat: int) -> dict:
    from jaseci.jsorc.live_actions import live_actions, load_module_actions
    from jaseci.jsorc.jsorc import JsOrc
    load_module_actions("ph")
    action = live_actions["ph.predict"]
    direct = timed(lambda: action(uuid="bench", data=TEXT), repeat, torch.device("cpu"))
    master = JsOrc.master(h=JsOrc.super_master()._h)
    code = ("walker ask { has text; can ph.predict; root { report ph.predict(uuid='bench', data=text); } }")
    master.general_interface_to_api(api_name="sentinel_register", params={"code": code})
    run = lambda: master.general_interface_to_api(api_name="walker_run",
                                                  params={"name": "ask", "ctx": {"text": TEXT}})
    assert run()["success"]
    walker = timed(run, max(50, repeat // 10), torch.device("cpu"))
    return {"action_function": latency_ms(direct), "walker_run": latency_ms(walker)}


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--repeat", type=int, default=2000)
    p.add_argument("--skip-jaseci", action="store_true", help="no Jaseci here (GPU machine)")
    p.add_argument("--skip-http", action="store_true", help="no fastapi/uvicorn here (GPU machine)")
    args = p.parse_args()
    device = setup(args)
    import ph
    tmp = Path(tempfile.mkdtemp())
    registry = ph.setup(heads_dir=str(tmp / "heads"))
    ph.create_head(uuid="bench", config={"Inference": {"device": str(device)}})
    engine = registry.loaded("bench").engine
    model, encoder = engine.model, engine.preprocessor.encoder
    x = encoder.encode([TEXT]).unsqueeze(1).to(device)
    vector = encoder.encode([TEXT])[0].tolist()

    def bare():
        with torch.inference_mode():
            model(x).argmax(-1).tolist()

    def bare_encode():
        with torch.inference_mode():
            model(encoder.encode([TEXT]).unsqueeze(1).to(device)).argmax(-1).tolist()

    layers = {"bare_forward": latency_ms(timed(bare, args.repeat, device)),
              "bare_forward_with_encoding": latency_ms(timed(bare_encode, args.repeat, device)),
              "python_api_text": latency_ms(timed(lambda: ph.predict("bench", TEXT), args.repeat, device)),
              "python_api_vector": latency_ms(timed(lambda: ph.predict("bench", vector), args.repeat, device))}
    if not args.skip_jaseci:
        layers.update({f"jaseci_{k}": v for k, v in jaseci_latency(args.repeat).items()})
    if not args.skip_http:
        layers.update({f"http_{k}": v for k, v in http_latency(tmp / "heads", args.repeat).items()})
    bare_p50 = layers["bare_forward"]["p50_ms"]
    overhead = {name: {"p50_x_bare_forward": round(v["p50_ms"] / bare_p50, 3),
                       "p50_extra_ms": round(v["p50_ms"] - bare_p50, 4)}
                for name, v in layers.items() if name != "bare_forward"}
    checks = {"python_api_p50_vs_bare_forward_with_encoding":
              round(layers["python_api_text"]["p50_ms"] / layers["bare_forward_with_encoding"]["p50_ms"], 3),
              "python_api_vector_p50_vs_bare_forward":
              round(layers["python_api_vector"]["p50_ms"] / bare_p50, 3),
              "http_text_p50_ms": layers.get("http_text", {}).get("p50_ms")}
    emit("predict_latency", args, device, {
        "targets": {"python_api_p50": "<= 1.5x the bare forward", "http_p50": "<= 5 ms (CPU)"},
        "layers": layers, "overhead": overhead, "checks": checks})


if __name__ == "__main__":
    main()
