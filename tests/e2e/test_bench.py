"""The benchmarks run (small sizes) and their built-in correctness checks hold.
Speed targets are not asserted here: they live in the benchmark output (BENCHMARKS.md)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from helpers.paths import ROOT

pytestmark = pytest.mark.slow  # runs every benchmark, small


def test_benchmarks_run_and_check_their_answers(tmp_path):
    results = tmp_path / "results"
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "run_all.py"), "--quick",
                          "--results", str(results), "--only",
                          "train_throughput,predict_latency,many_users,many_heads,incremental,"
                          "children,encoders,addins"],
                         capture_output=True, text=True, timeout=600, cwd=tmp_path,
                         env={**os.environ, "PH_CACHE_DIR": str(tmp_path / "cache")})
    assert out.returncode == 0, out.stderr[-3000:]
    assert "| measure" in out.stdout and "heads, one request each" in out.stdout
    users = json.loads((results / "many_users.json").read_text())["results"][0]
    assert users["max_abs_diff"] <= 1e-5 and users["same_predictions_end_to_end"]
    heads = json.loads((results / "many_heads.json").read_text())
    assert heads["budget_float32"]["within_budget"] and heads["budget_float32"]["stats"]["evictions"] > 0
    assert heads["per_head"]["parameters"] == 3160842
    half = heads["half_precision"]
    assert half["bfloat16"]["same_class_as_float32"] >= 0.95
    assert half["bfloat16"]["bytes_per_head"] * 2 == half["float32"]["bytes_per_head"]
    assert heads["budget_bfloat16"]["within_budget"]
    latency = json.loads((results / "predict_latency.json").read_text())
    assert {"bare_forward", "python_api_text", "jaseci_walker_run", "http_text"} <= set(latency["layers"])
    children = json.loads((results / "children.json").read_text())
    assert children["sharing"]["children_resolve_to_parents_head"]
    assert children["sharing"]["bank_slots_after"] == children["sharing"]["bank_slots_before"]
    assert children["sharing"]["stacked_passes"] == children["sharing"]["batches"]
    assert children["answers"]["same_class_as_parent"]
    assert children["answers"]["max_abs_diff_scores"] <= 1e-5
    training = json.loads((results / "train_throughput.json").read_text())
    assert set(training["results"]) == {"batch_32", "batch_256"}
    incremental = json.loads((results / "incremental.json").read_text())["results"][0]
    assert incremental["incremental"]["samples"] < incremental["full"]["samples"]
    assert incremental["naive"]["samples"] < incremental["incremental"]["samples"]
    child = json.loads((results / "incremental.json").read_text())["children"]["runs"][0]
    assert set(child["new_label"]) == {"incremental", "full", "naive"}
    assert all(0 <= m["old_accuracy"] <= 1 for m in child["correction"].values())
    assert "a user's child learning a new label" in out.stdout
    encoders = json.loads((results / "encoders.json").read_text())
    assert encoders["minilm_encoders_loaded_in_this_process"] == 2  # torch and onnx
    assert encoders["agreement"]["minilm_onnx"]["min_cosine"] >= 0.99
    assert [r["shared_encoder_objects"] for r in encoders["stacked"]["minilm"]] == [1]
    for runs in encoders["accuracy"].values():
        assert all(0 <= a <= 1 for run in runs for a in run["accuracy"])
    assert "hashing / MiniLM" in out.stdout
    addins = json.loads((results / "addins.json").read_text())
    assert addins["rows"]["bias"]["bytes_per_user"] < addins["rows"]["lora_r4"]["bytes_per_user"] \
        < addins["rows"]["full"]["bytes_per_user"] / 10
    assert addins["together"]["max_abs_weight_diff"] <= 1e-3
    assert addins["together"]["together"]["trained_with"] == [addins["together"]["users"]]
    assert "default add-in (lora r4)" in out.stdout


def run_quick(tmp_path, only: str) -> str:
    """`run_all.py --quick --only ONLY` with results in tmp_path; its standard output."""
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "run_all.py"), "--quick",
                          "--results", str(tmp_path), "--only", only],
                         capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_serve_load_drives_ph_and_the_hand_written_server(tmp_path):
    out = run_quick(tmp_path, "serve_load")
    assert "HTTP, 4 heads, 4 connections" in out
    serve = json.loads((tmp_path / "serve_load.json").read_text())
    for name in ("ph_1_worker", "anchor", "anchor_constant"):
        for point in serve["points"][name]:
            assert point["requests"] > 0 and point["non_2xx"] == 0, (name, point)
    ph = {p["connections"]: p for p in serve["points"]["ph_1_worker"]}
    assert ph[4]["requests_per_pass"] > 1  # concurrent calls shared stacked passes
    assert 0 < ph[4]["pass_cpu_ms_per_request"] <= ph[4]["server_cpu_ms_per_request"]


def test_distributed_benchmark_runs_on_real_redis_and_s3(tmp_path):
    assert "distributed store, 3,000 head records" in run_quick(tmp_path, "distributed")
    d = json.loads((tmp_path / "distributed.json").read_text())
    assert d["records"]["heads"] == 3000 and d["records"]["redis_bytes_per_head"] > 0
    assert d["predict"]["distributed"]["predict_per_s_median"] > 0
    assert d["cold"]["distributed"]["n"] == d["cold"]["local"]["n"] == 3
    assert d["notify"]["seen_after_write"]["n"] == 20
