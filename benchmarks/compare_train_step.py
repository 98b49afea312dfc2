#!/usr/bin/python3
"""One training step in s2h and in PyTorch, side by side, on the CPU or a GPU.

Runs bench_train_step and benchmarks/torch_train_step.py in alternation (so
that machine noise hits both), with the same model, batch, device and
precision, and reports each one's median step time, images/s and the speedup
(PyTorch time / s2h time: above 1 when s2h is faster). On the CPU PyTorch is
measured in both memory formats and the faster one is the baseline; on CUDA
the baseline is channels_last (cuDNN, benchmark mode, bf16 autocast under
--precision bf16).

Achieved TFLOP/s count a step as 3 x the forward FLOPs of convolutions and
linear layers (2 x MACs, s2h's Module::flops over a ModuleTracer; PyTorch's
count from forward hooks is recorded beside it as a check that the models
match). With --gemm-peak (the JSON line of bench_gemm_peak), the fraction of
the measured bf16 GEMM peak is reported too.

Writes <results-dir>/<workload>.json (device, date, workload, precision, s2h,
baseline, baseline_name, unit, speedup, ...) and <workload>.log (every raw
record) unless --no-write.

  CPU (the default workload, cpu_train_step_cnn_small):
    /usr/bin/python3 benchmarks/compare_train_step.py [--build build] [--threads 2] [--rounds 3]
  GPU (ResNet-50, 64x64, batch 256, 200 classes, bf16: gpu_train_step_resnet50_bf16):
    python3 benchmarks/compare_train_step.py --device cuda --precision bf16 --model resnet50 --batch 256 \\
        --image-size 64 --in-channels 3 --classes 200 --rounds 2 --bin BUNDLE/bin/bench_train_step \\
        --ld-library-path BUNDLE/lib:... --gemm-peak gemm_peak.json --results-dir OUT/results
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


def run_json_lines(cmd, env, log, timeout):
    """Runs cmd; returns its JSON lines. On failure logs the error and returns []."""
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        msg = f"timed out after {timeout} s: {' '.join(cmd)}"
        print("compare_train_step:", msg, file=sys.stderr, flush=True)
        log.append({"error": msg})
        return []
    if p.returncode != 0:
        msg = f"exit {p.returncode}: {' '.join(cmd)}: {p.stderr.strip()[-2000:]}"
        print("compare_train_step:", msg, file=sys.stderr, flush=True)
        log.append({"error": msg})
        return []
    recs = [json.loads(l) for l in p.stdout.splitlines() if l.startswith("{")]
    log.extend(recs)
    return recs


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default=os.path.join(HERE, "..", "build"), help="CMake build folder")
    ap.add_argument("--bin", default=None, help="bench_train_step binary (default: BUILD/benchmarks/bench_train_step)")
    ap.add_argument("--ld-library-path", default=None, help="LD_LIBRARY_PATH for the s2h binary only")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--model", default="cnn-small")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "tf32", "bf16"])
    ap.add_argument("--image-size", type=int, default=28)
    ap.add_argument("--in-channels", type=int, default=1)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--imagenet-stem", action="store_true")
    ap.add_argument("--gemm-peak", default=None, help="file with bench_gemm_peak's JSON line (bf16 TFLOP/s)")
    ap.add_argument("--workload", default=None,
                    help="result name (default cpu_train_step_<model> / gpu_train_step_<model>_<precision>)")
    ap.add_argument("--results-dir", default=os.path.join(HERE, "results"))
    ap.add_argument("--timeout", type=int, default=600, help="seconds per benchmark process")
    ap.add_argument("--no-write", action="store_true")
    a = ap.parse_args()
    cuda = a.device.startswith("cuda")
    ours = a.bin or os.path.join(a.build, "benchmarks", "bench_train_step")
    if not os.path.exists(ours):
        sys.exit(f"compare_train_step: {ours} not found; build the project first (cmake --build {a.build})")
    workload = a.workload or (f"gpu_train_step_{a.model}_{a.precision}" if cuda else f"cpu_train_step_{a.model}")
    workload = workload.replace("-", "_")
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads))
    s2h_env = dict(env)
    if a.ld_library_path:
        s2h_env["LD_LIBRARY_PATH"] = a.ld_library_path
    common = ["--batch", str(a.batch), "--steps", str(a.steps), "--warmup", str(a.warmup), "--threads", str(a.threads),
              "--model", a.model, "--device", a.device, "--precision", a.precision, "--image-size",
              str(a.image_size), "--in-channels", str(a.in_channels), "--classes", str(a.classes)]
    if a.imagenet_stem:
        common.append("--imagenet-stem")
    log, s2h_recs, torch_recs = [], [], {}
    for r in range(a.rounds):
        for rec in run_json_lines([ours] + common, s2h_env, log, a.timeout):
            s2h_recs.append(rec)
        for rec in run_json_lines([sys.executable, os.path.join(HERE, "torch_train_step.py")] + common, env, log,
                                  a.timeout):
            torch_recs.setdefault(rec["impl"], []).append(rec)
        print(f"round {r + 1}/{a.rounds}: s2h " + (f"{s2h_recs[-1]['median_ms']:.1f} ms" if s2h_recs else "failed") +
              ", " + (", ".join(f"{k} {v[-1]['median_ms']:.1f} ms" for k, v in torch_recs.items()) or "pytorch failed"),
              flush=True)

    s2h = statistics.median(r["median_ms"] for r in s2h_recs) if s2h_recs else None
    torch_med = {k: statistics.median(r["median_ms"] for r in v) for k, v in torch_recs.items()}
    best_name = min(torch_med, key=torch_med.get) if torch_med else None
    base = torch_med[best_name] if best_name else None
    first = (s2h_recs or [{}])[0]
    tfirst = torch_recs[best_name][0] if best_name else {}
    device = first.get("device") or tfirst.get("device") or ("unknown GPU" if cuda else cpu_name())
    if device == "cpu":
        device = cpu_name()
    result = {
        "device": device, "date": datetime.date.today().isoformat(), "workload": workload,
        "precision": a.precision, "model": a.model, "batch": a.batch, "image_size": a.image_size,
        "classes": a.classes, "threads": a.threads,
        "unit": "ms per step (median of per-run medians)",
        "s2h": round(s2h, 3) if s2h else None, "baseline": round(base, 3) if base else None,
        "baseline_name": best_name,
        "speedup": round(base / s2h, 3) if s2h and base else None,
        "ratio_s2h_over_baseline": round(s2h / base, 3) if s2h and base else None,
        "s2h_images_per_s": round(1000 * a.batch / s2h, 1) if s2h else None,
        "baseline_images_per_s": round(1000 * a.batch / base, 1) if base else None,
        "pytorch_all": {k: round(v, 3) for k, v in torch_med.items()},
        "rounds": a.rounds, "steps_per_run": a.steps,
    }
    flops = first.get("forward_flops") or tfirst.get("forward_flops")
    if flops:
        step = 3 * float(flops)
        result["flops_per_step"] = step
        result["flops_note"] = ("3 x forward FLOPs of conv + linear layers (2 x MACs), "
                                "s2h Module::flops via ModuleTracer")
        if tfirst.get("forward_flops") and first.get("forward_flops"):
            result["forward_flops_s2h"] = first["forward_flops"]
            result["forward_flops_pytorch"] = tfirst["forward_flops"]
        result["s2h_tflops"] = round(step / (s2h * 1e-3) / 1e12, 2) if s2h else None
        result["baseline_tflops"] = round(step / (base * 1e-3) / 1e12, 2) if base else None
    if first.get("params") and tfirst.get("params"):
        result["params_s2h"], result["params_pytorch"] = first["params"], tfirst["params"]
        if first["params"] != tfirst["params"]:
            print(f"compare_train_step: WARNING: the models differ: {first['params']} parameters in s2h, "
                  f"{tfirst['params']} in PyTorch", file=sys.stderr)
    if first.get("peak_mem_mb") is not None and cuda:
        result["s2h_peak_mem_mb"] = first.get("peak_mem_mb")
        result["baseline_peak_mem_mb"] = tfirst.get("peak_mem_mb")
    if a.gemm_peak:
        try:
            with open(a.gemm_peak) as f:
                peak = next(json.loads(l) for l in f if l.startswith("{") and '"bf16"' in l)
            result["gemm_peak_tflops"] = peak["tflops"]
            result["gemm_peak_note"] = peak.get("what", "cuBLAS bf16 GEMM")
            if result.get("s2h_tflops"):
                result["s2h_fraction_of_gemm_peak"] = round(result["s2h_tflops"] / peak["tflops"], 3)
            if result.get("baseline_tflops"):
                result["baseline_fraction_of_gemm_peak"] = round(result["baseline_tflops"] / peak["tflops"], 3)
        except (OSError, StopIteration, KeyError, ValueError) as e:
            print(f"compare_train_step: no GEMM peak from {a.gemm_peak}: {e}", file=sys.stderr)
    if cuda:
        result["note"] = ("ResNet-50 with the CIFAR/Tiny-ImageNet stem (3x3/1 conv, no max-pool) as models/resnet.cpp; "
                          "random inputs; SGD momentum 0.9 Nesterov wd 5e-4; device synchronised after every step")
    errors = [e["error"] for e in log if "error" in e]
    if errors:
        result["errors"] = errors
    print(json.dumps(result, indent=2))
    if not a.no_write:
        os.makedirs(a.results_dir, exist_ok=True)
        base_path = os.path.join(a.results_dir, workload)
        with open(base_path + ".json", "w") as f:
            json.dump(result, f, indent=2)
            f.write("\n")
        with open(base_path + ".log", "w") as f:
            for rec in log:
                f.write(json.dumps(rec) + "\n")
        print("written:", base_path + ".json")
    if s2h is None or base is None:
        sys.exit(1)


if __name__ == "__main__":
    main()
