#!/usr/bin/python3
"""One cnn-small training step (batch 128) in s2h and in PyTorch, side by side.

Runs build/benchmarks/bench_train_step and benchmarks/torch_train_step.py in
alternation (so that machine noise hits both), with the same thread count, and
reports each one's median step time and the ratio s2h / PyTorch (below 1 means
s2h is faster). PyTorch is measured in both memory formats; the ratio is taken
against the faster one. Writes benchmarks/results/cpu_train_step_cnn_small.json
(and .log) unless --no-write.

  /usr/bin/python3 benchmarks/compare_train_step.py [--build build] [--threads 2] [--rounds 3]
"""
import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def run_json_lines(cmd, env):
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    return [json.loads(l) for l in out.splitlines() if l.startswith("{")]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default=os.path.join(HERE, "..", "build"), help="CMake build folder")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--no-write", action="store_true")
    a = ap.parse_args()
    ours = os.path.join(a.build, "benchmarks", "bench_train_step")
    if not os.path.exists(ours):
        sys.exit(f"compare_train_step: {ours} not found; build the project first (cmake --build {a.build})")
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads))
    common = ["--batch", str(a.batch), "--steps", str(a.steps), "--threads", str(a.threads)]
    log, s2h_ms, torch_ms = [], [], {}
    for r in range(a.rounds):
        for rec in run_json_lines([ours] + common, env):
            s2h_ms.append(rec["median_ms"])
            log.append(rec)
        for rec in run_json_lines([sys.executable, os.path.join(HERE, "torch_train_step.py")] + common, env):
            torch_ms.setdefault(rec["impl"], []).append(rec["median_ms"])
            log.append(rec)
        print(f"round {r + 1}/{a.rounds}: s2h {s2h_ms[-1]:.1f} ms, " +
              ", ".join(f"{k} {v[-1]:.1f} ms" for k, v in torch_ms.items()), flush=True)
    s2h = statistics.median(s2h_ms)
    torch_med = {k: statistics.median(v) for k, v in torch_ms.items()}
    best_name = min(torch_med, key=torch_med.get)
    flops = 4.30e9 * a.batch / 128  # forward + backward FLOPs of cnn-small per step (2*MACs), see README
    result = {
        "device": cpu_name(), "threads": a.threads, "date": datetime.date.today().isoformat(),
        "workload": "cpu_train_step_cnn_small", "precision": "fp32", "batch": a.batch,
        "unit": "ms per step (median of per-run medians)",
        "s2h": round(s2h, 3), "baseline": round(torch_med[best_name], 3), "baseline_name": best_name,
        "speedup": round(torch_med[best_name] / s2h, 3),
        "ratio_s2h_over_baseline": round(s2h / torch_med[best_name], 3),
        "pytorch_all": {k: round(v, 3) for k, v in torch_med.items()},
        "s2h_gflops": round(flops / s2h / 1e6, 2),
        "rounds": a.rounds, "steps_per_run": a.steps,
    }
    print(json.dumps(result, indent=2))
    if not a.no_write:
        os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
        base = os.path.join(HERE, "results", "cpu_train_step_cnn_small")
        with open(base + ".json", "w") as f:
            json.dump(result, f, indent=2)
            f.write("\n")
        with open(base + ".log", "w") as f:
            for rec in log:
                f.write(json.dumps(rec) + "\n")
        print("written:", base + ".json")


if __name__ == "__main__":
    main()
