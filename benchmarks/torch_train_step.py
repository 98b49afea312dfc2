#!/usr/bin/python3
"""The PyTorch twin of bench_train_step: one training step of the same model.

Models, defined here in plain torch to match s2h's exactly (same layers, same
order, same initialisation scheme, NHWC flatten order):
  cnn-small  conv3x3 32/64/64 with BN, ReLU, two max-pools, linear on the
             flattened NHWC features (28x28x1, 10 classes).
  resnet50   models/resnet.cpp's resnet50: torchvision's bottleneck ResNet-50
             (3-4-6-3, stride on the 3x3 conv, downsample = 1x1 conv + BN)
             with the CIFAR / Tiny-ImageNet stem (3x3/1 conv to 64 channels,
             BN, ReLU, no max-pool) unless --imagenet-stem (7x7/2 conv +
             3x3/2 max-pool); global average pool, fc. Convs Kaiming-normal
             (fan_out), BN weight 1 / bias 0, fc PyTorch's default.
  resnet18   the same with basic blocks 2-2-2-2.
Same step as s2h: forward, cross-entropy, backward, SGD (momentum 0.9,
Nesterov, wd 5e-4, lr 0.01); random f32 inputs and labels fixed for the run.

On CUDA: cuDNN with benchmark mode, channels_last, and the precision policy
as s2h's --precision: fp32 (TF32 off), tf32 (TF32 on), bf16 (autocast to
bfloat16; weights, optimiser and loss in fp32). Every step is timed from its
start to the end of its GPU work (synchronised), and the median is reported.
Forward FLOPs of convolutions and linear layers (2 x MACs) are counted with
hooks on the first step, as s2h counts them, and a step is 3 x forward.

Prints one JSON line per memory format.

  python3 torch_train_step.py [--model cnn-small] [--batch 128] [--steps 20] [--warmup 3] [--threads N]
                              [--device cpu|cuda] [--precision fp32|tf32|bf16]
                              [--image-size N] [--in-channels N] [--classes N] [--imagenet-stem]
                              [--formats contiguous,channels_last]
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


def conv(cin, cout, k, stride):
    """Bias-free conv with "same" padding, Kaiming-normal (fan_out), as s2h's models/resnet.cpp."""
    c = nn.Conv2d(cin, cout, k, stride=stride, padding=(k - 1) // 2, bias=False)
    nn.init.kaiming_normal_(c.weight, mode="fan_out", nonlinearity="relu")
    return c


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1, self.bn1 = conv(cin, cout, 3, stride), nn.BatchNorm2d(cout)
        self.conv2, self.bn2 = conv(cout, cout, 3, 1), nn.BatchNorm2d(cout)
        self.downsample = (nn.Sequential(conv(cin, cout, 1, stride), nn.BatchNorm2d(cout))
                           if stride != 1 or cin != cout else None)

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x)))
        h = self.bn2(self.conv2(h))
        return F.relu(h + (self.downsample(x) if self.downsample is not None else x))


class Bottleneck(nn.Module):
    def __init__(self, cin, planes, stride):
        super().__init__()
        cout = planes * 4
        self.conv1, self.bn1 = conv(cin, planes, 1, 1), nn.BatchNorm2d(planes)
        self.conv2, self.bn2 = conv(planes, planes, 3, stride), nn.BatchNorm2d(planes)
        self.conv3, self.bn3 = conv(planes, cout, 1, 1), nn.BatchNorm2d(cout)
        self.downsample = (nn.Sequential(conv(cin, cout, 1, stride), nn.BatchNorm2d(cout))
                           if stride != 1 or cin != cout else None)

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x)))
        h = F.relu(self.bn2(self.conv2(h)))
        h = self.bn3(self.conv3(h))
        return F.relu(h + (self.downsample(x) if self.downsample is not None else x))


class ResNet(nn.Module):
    ARCH = {"resnet18": (False, [2, 2, 2, 2]), "resnet50": (True, [3, 4, 6, 3])}

    def __init__(self, name, classes, cin, imagenet_stem=False):
        super().__init__()
        bottleneck, blocks = self.ARCH[name]
        self.conv1 = conv(cin, 64, 7, 2) if imagenet_stem else conv(cin, 64, 3, 1)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, 2, 1) if imagenet_stem else None
        layers, cin_ = [], 64
        for i, (n, width) in enumerate(zip(blocks, [64, 128, 256, 512])):
            cout = width * 4 if bottleneck else width
            seq = []
            for j in range(n):
                stride = 2 if (j == 0 and i > 0) else 1
                seq.append(Bottleneck(cin_, width, stride) if bottleneck else BasicBlock(cin_, width, stride))
                cin_ = cout
            layers.append(nn.Sequential(*seq))
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.fc = nn.Linear(cin_, classes)

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x)))
        if self.maxpool is not None:
            h = self.maxpool(h)
        h = self.layer4(self.layer3(self.layer2(self.layer1(h))))
        return self.fc(h.mean(dim=(2, 3)))  # global average pool


def make_model(name, classes, size, cin, imagenet_stem):
    if name == "cnn-small":
        return CnnSmall(classes, size, cin)
    if name in ResNet.ARCH:
        return ResNet(name, classes, cin, imagenet_stem)
    raise SystemExit(f"torch_train_step: unknown model {name!r} (cnn-small, resnet18, resnet50)")


def count_forward_flops(model, x):
    """2 x MACs of every Conv2d and Linear in one forward, as s2h's Module::flops."""
    total = [0]

    def conv_hook(m, inp, out):
        total[0] += 2 * out.numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]

    def linear_hook(m, inp, out):
        total[0] += 2 * out.numel() * m.in_features

    hooks = [m.register_forward_hook(conv_hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    hooks += [m.register_forward_hook(linear_hook) for m in model.modules() if isinstance(m, nn.Linear)]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return total[0]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="cnn-small")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "tf32", "bf16"])
    ap.add_argument("--image-size", type=int, default=28)
    ap.add_argument("--in-channels", type=int, default=1)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--imagenet-stem", action="store_true")
    ap.add_argument("--formats", default=None,
                    help="comma-separated memory formats (default: contiguous,channels_last on the CPU, "
                         "channels_last on CUDA)")
    a = ap.parse_args()
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = a.precision == "tf32"
        torch.backends.cudnn.allow_tf32 = a.precision == "tf32"
        dev_name = torch.cuda.get_device_name(device)
    else:
        dev_name = "cpu"
    formats = (a.formats or ("channels_last" if cuda else "contiguous,channels_last")).split(",")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    for fmt in formats:
        torch.manual_seed(0)
        mf = torch.channels_last if fmt == "channels_last" else torch.contiguous_format
        model = make_model(a.model, a.classes, a.image_size, a.in_channels, a.imagenet_stem)
        model = model.to(device).to(memory_format=mf)
        model.train()
        params = sum(p.numel() for p in model.parameters())
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
        x = torch.randn(a.batch, a.in_channels, a.image_size, a.image_size, device=device).to(memory_format=mf)
        y = torch.arange(a.batch, device=device) % a.classes
        fwd_flops = count_forward_flops(model, x)
        autocast = (torch.autocast(device_type="cuda", dtype=torch.bfloat16) if cuda and a.precision == "bf16"
                    else None)
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        times, last = [], float("nan")
        for s in range(a.warmup + a.steps):
            sync()
            t0 = time.perf_counter()
            if autocast is not None:
                with autocast:
                    logits = model(x)
                loss = F.cross_entropy(logits.float(), y)
            else:
                loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sync()
            t = (time.perf_counter() - t0) * 1000
            if s >= a.warmup:
                times.append(t)
            if s == a.warmup + a.steps - 1:
                last = loss.item()
        med = statistics.median(times)
        rec = {"impl": "pytorch-" + torch.__version__ + "-" + fmt, "model": a.model, "device": dev_name,
               "precision": a.precision, "batch": a.batch, "image_size": a.image_size, "classes": a.classes,
               "params": params, "threads": torch.get_num_threads(), "steps": a.steps,
               "median_ms": round(med, 3), "mean_ms": round(statistics.mean(times), 3),
               "min_ms": round(min(times), 3), "images_per_s": round(1000 * a.batch / med, 1),
               "forward_flops": fwd_flops, "step_flops": 3 * fwd_flops,
               "tflops": round(3 * fwd_flops / (med * 1e-3) / 1e12, 2), "last_loss": round(last, 5)}
        if cuda:
            rec["peak_mem_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20)
            rec["cudnn"] = torch.backends.cudnn.version()
        print(json.dumps(rec), flush=True)
        del model, opt, x, y
        if cuda:
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
