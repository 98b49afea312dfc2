#!/usr/bin/python3
"""The PyTorch twin of bench_train_step: one training step of cnn-small.

Same network (conv3x3 32/64/64 with BN, ReLU, two max-pools, linear on the
flattened NHWC features), same batch, same SGD (momentum 0.9, Nesterov,
wd 5e-4). Prints one JSON line per memory format.

  /usr/bin/python3 torch_train_step.py [--batch 128] [--steps 20] [--warmup 3] [--threads N]
"""
import argparse
import json
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class CnnSmall(nn.Module):
    def __init__(self, classes=10, size=28, cin=1):
        super().__init__()
        def cbr(i, o):
            return [nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU()]
        self.features = nn.Sequential(*cbr(cin, 32), nn.MaxPool2d(2), *cbr(32, 64), nn.MaxPool2d(2), *cbr(64, 64))
        self.fc = nn.Linear(64 * (size // 4) ** 2, classes)

    def forward(self, x):
        h = self.features(x)
        return self.fc(h.permute(0, 2, 3, 1).flatten(1))  # NHWC flatten order, as s2h


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0)
    a = ap.parse_args()
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    for fmt in ("contiguous", "channels_last"):
        torch.manual_seed(0)
        mf = torch.channels_last if fmt == "channels_last" else torch.contiguous_format
        model = CnnSmall().to(memory_format=mf)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
        x = torch.randn(a.batch, 1, 28, 28).to(memory_format=mf)
        y = torch.arange(a.batch) % 10
        times = []
        for s in range(a.warmup + a.steps):
            t0 = time.perf_counter()
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            last = loss.item()
            t = (time.perf_counter() - t0) * 1000
            if s >= a.warmup:
                times.append(t)
        med = statistics.median(times)
        print(json.dumps({"impl": "pytorch-" + torch.__version__ + "-" + fmt, "model": "cnn-small", "batch": a.batch,
                          "threads": torch.get_num_threads(), "steps": a.steps, "median_ms": round(med, 3),
                          "mean_ms": round(statistics.mean(times), 3), "min_ms": round(min(times), 3),
                          "images_per_s": round(1000 * a.batch / med, 1), "last_loss": round(last, 5)}), flush=True)


if __name__ == "__main__":
    main()
