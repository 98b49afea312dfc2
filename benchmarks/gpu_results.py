#!/usr/bin/env python3
"""Result files and summary lines of benchmarks/gpu_check.sh.

  gpu_results.py train-result METRICS_JSONL OUT_JSON WALL_SECONDS EXIT_CODE
      Writes the result of the `s2h train` ResNet-56 CIFAR-10 run (device,
      date, workload, precision, per-epoch test accuracy and images/s) from the
      run's metrics.jsonl, also when the run was cut short (then with the
      epochs it finished).
  gpu_results.py note gemm|resnet50|train FILE
      Prints the one-line result of a stage for the summary table.
"""
import datetime
import json
import subprocess
import sys

TRAIN_COMMAND = ("s2h train --device cuda --precision bf16 --model resnet56 --data cifar10-jpeg --epochs 2 --lr 0.1 "
                 "--batch-size 128 --workers 8 --threads 8 --seed 0")


def gpu_name():
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=20).stdout.strip().splitlines()
        return out[0] if out else "unknown GPU"
    except (OSError, subprocess.SubprocessError):
        return "unknown GPU"


def train_result(metrics, out, secs, rc):
    try:
        with open(metrics) as f:
            epochs = [r for r in map(json.loads, f) if r.get("kind") == "epoch"]
    except (OSError, ValueError):
        epochs = []
    res = {"device": gpu_name(), "date": datetime.date.today().isoformat(),
           "workload": "gpu_train_resnet56_cifar10_bf16", "precision": "bf16", "command": TRAIN_COMMAND,
           "exit_code": int(rc), "wall_seconds": int(secs), "unit": "test accuracy; training images/s",
           "epochs": [{k: e.get(k) for k in ("epoch", "test_acc", "train_acc", "train_loss", "images_per_s",
                                             "train_seconds", "eval_seconds")} for e in epochs]}
    if epochs:
        res["test_acc"] = epochs[-1].get("test_acc")
        res["images_per_s"] = epochs[-1].get("images_per_s")
    with open(out, "w") as f:
        json.dump(res, f, indent=2)
        f.write("\n")
    print(json.dumps(res, indent=2))


def note(stage, path):
    try:
        if stage == "gemm":
            with open(path) as f:
                recs = [json.loads(l) for l in f if l.startswith("{")]
            return ", ".join(f"{r['precision']} {r['tflops']} TFLOP/s" for r in recs)
        with open(path) as f:
            r = json.load(f)
        if stage == "resnet50":
            return (f"s2h {r.get('s2h_images_per_s')} img/s, torch {r.get('baseline_images_per_s')} img/s, "
                    f"speedup {r.get('speedup')}; s2h {r.get('s2h_tflops')} TFLOP/s "
                    f"({r.get('s2h_fraction_of_gemm_peak')} of GEMM peak), torch {r.get('baseline_tflops')}")
        if stage == "train":
            ips = r.get("images_per_s")
            return (f"test acc {r.get('test_acc')} after {len(r.get('epochs', []))} epochs, "
                    f"{round(ips) if ips else None} img/s, {r.get('wall_seconds')} s")
    except (OSError, ValueError, KeyError):
        return ""
    return ""


def main():
    if len(sys.argv) == 6 and sys.argv[1] == "train-result":
        train_result(*sys.argv[2:])
    elif len(sys.argv) == 4 and sys.argv[1] == "note":
        print(note(sys.argv[2], sys.argv[3]))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
