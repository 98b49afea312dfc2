#!/usr/bin/python3
"""Writes the PyTorch golden files that the C++ tests compare against.

Run with Debian's python3 (python3-torch, PyTorch 1.13 CPU):

    /usr/bin/python3 tests/golden/make_golden.py [--out tests/golden]

Every tensor is stored in s2h's layout: activations NHWC, conv weights
[out][kh][kw][in/groups], linear weights [out][in]. Files (safetensors, written
with json + raw bytes, no extra package needed):

  ops.safetensors          one case per op configuration: inputs, output, and
                           the gradient of sum(output * upstream) w.r.t. every
                           input; metadata "cases" lists them (JSON).
  compositions.safetensors (a) conv-bn-relu-maxpool-linear + cross-entropy,
                           (b) depthwise-separable block, (c) layernorm + GELU
                           + softmax: inputs, weights, outputs, all gradients.
  cnn_small_sgd.safetensors
                           cnn-small initial weights, one fixed batch, and the
                           losses of 20 SGD steps (momentum 0.9, Nesterov,
                           weight decay 5e-4, lr 0.05).
  adamw.safetensors        a linear model trained 10 AdamW steps: weights after
                           each step.
The generator is seeded, so the files are reproducible.
"""
import argparse
import json
import os
import struct

import torch
import torch.nn as nn
import torch.nn.functional as F

DT = {torch.float32: "F32", torch.float64: "F64", torch.int64: "I64", torch.uint8: "U8", torch.bfloat16: "BF16"}


def save(path, tensors, metadata=None):
    header, blobs, off = {}, [], 0
    if metadata:
        header["__metadata__"] = metadata
    for name, t in tensors.items():
        t = t.detach().contiguous().cpu()
        data = t.view(torch.uint8).numpy().tobytes() if t.dtype == torch.bfloat16 else t.numpy().tobytes()
        header[name] = {"dtype": DT[t.dtype], "shape": list(t.shape), "data_offsets": [off, off + len(data)]}
        blobs.append(data)
        off += len(data)
    h = json.dumps(header).encode()
    h += b" " * ((8 - (8 + len(h)) % 8) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)
    os.replace(tmp, path)


def nhwc(t):
    return t.permute(0, 2, 3, 1)


def ohwi(w):
    return w.permute(0, 2, 3, 1)


# ---------------------------------------------------------------- single ops
class Cases:
    def __init__(self):
        self.tensors, self.meta = {}, []

    def add(self, name, op, params, inputs, fn, store=None):
        """inputs: dict name -> (torch tensor in PyTorch layout, to_ours, requires_grad)."""
        leaves = {}
        for k, (t, _, rg) in inputs.items():
            leaves[k] = t.detach().clone().requires_grad_(rg)
        out = fn(**leaves)
        up = torch.randn(out.shape, dtype=out.dtype)
        (out * up).sum().backward()
        layout = {}
        for k, (t, conv, rg) in inputs.items():
            self.tensors[f"{name}/{k}"] = conv(leaves[k].detach())
            if rg:
                self.tensors[f"{name}/grad_{k}"] = conv(leaves[k].grad)
        self.tensors[f"{name}/out"] = out_conv(op)(out.detach())
        self.tensors[f"{name}/upstream"] = out_conv(op)(up)
        for k, v in (store or {}).items():
            self.tensors[f"{name}/{k}"] = v
        self.meta.append({"name": name, "op": op, "params": params,
                          "inputs": list(inputs.keys()), "grads": [k for k, (_, _, rg) in inputs.items() if rg]})


def same(t):
    return t


def out_conv(op):
    return nhwc if op in ("conv2d", "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d", "batch_norm_4d") else same


def op_cases():
    c = Cases()
    r = torch.randn
    for (name, n, cin, h, w, cout, k, s, p, d, g, bias) in [
        ("conv_3x3_s1_p1", 2, 3, 6, 5, 4, 3, 1, 1, 1, 1, True),
        ("conv_3x3_s2_p1", 2, 8, 9, 9, 16, 3, 2, 1, 1, 1, False),
        ("conv_1x1", 2, 16, 4, 4, 8, 1, 1, 0, 1, 1, True),
        ("conv_1x1_s2", 2, 6, 5, 5, 4, 1, 2, 0, 1, 1, False),
        ("conv_dilated", 1, 4, 9, 8, 5, 3, 1, 2, 2, 1, True),
        ("conv_groups", 2, 8, 6, 6, 12, 3, 1, 1, 1, 4, True),
        ("conv_depthwise", 2, 6, 7, 7, 6, 3, 1, 1, 1, 6, False),
        ("conv_depthwise_s2_mult2", 2, 4, 8, 8, 8, 3, 2, 1, 1, 4, True),
        ("conv_5x5", 1, 3, 8, 8, 4, 5, 1, 2, 1, 1, True),
    ]:
        inputs = {"x": (r(n, cin, h, w), nhwc, True), "w": (r(cout, cin // g, k, k) * 0.3, ohwi, True)}
        if bias:
            inputs["b"] = (r(cout), same, True)
        c.add(name, "conv2d", {"stride": s, "padding": p, "dilation": d, "groups": g}, inputs,
              lambda x, w, b=None, s=s, p=p, d=d, g=g: F.conv2d(x, w, b, s, p, d, g))
    for name, k, s, p in [("maxpool_2", 2, 2, 0), ("maxpool_3_s2_p1", 3, 2, 1)]:
        c.add(name, "max_pool2d", {"kernel": k, "stride": s, "padding": p}, {"x": (r(2, 3, 7, 6), nhwc, True)},
              lambda x, k=k, s=s, p=p: F.max_pool2d(x, k, s, p))
    for name, k, s, p, cip in [("avgpool_2", 2, 2, 0, True), ("avgpool_3_s2_p1", 3, 2, 1, True),
                               ("avgpool_3_s2_p1_nopad", 3, 2, 1, False)]:
        c.add(name, "avg_pool2d", {"kernel": k, "stride": s, "padding": p, "count_include_pad": cip},
              {"x": (r(2, 3, 7, 6), nhwc, True)}, lambda x, k=k, s=s, p=p, cip=cip: F.avg_pool2d(x, k, s, p, count_include_pad=cip))
    c.add("adaptive_avgpool_3x2", "adaptive_avg_pool2d", {"out_h": 3, "out_w": 2}, {"x": (r(2, 3, 7, 5), nhwc, True)},
          lambda x: F.adaptive_avg_pool2d(x, (3, 2)))
    # batch norm, training: also the running statistics afterwards
    for name, shape in [("batchnorm_train_4d", (4, 5, 3, 3)), ("batchnorm_train_2d", (8, 5))]:
        rm, rv = r(5) * 0.1, torch.rand(5) + 0.5
        rm2, rv2 = rm.clone(), rv.clone()
        x = r(*shape) * 2 + 1
        F.batch_norm(x, rm2, rv2, None, None, True, 0.1, 1e-5)
        op = "batch_norm_4d" if len(shape) == 4 else "batch_norm"
        c.add(name, op, {"training": True, "momentum": 0.1, "eps": 1e-5},
              {"x": (x, nhwc if len(shape) == 4 else same, True), "weight": (r(5), same, True), "bias": (r(5), same, True),
               "running_mean": (rm, same, False), "running_var": (rv, same, False)},
              lambda x, weight, bias, running_mean, running_var: F.batch_norm(
                  x, running_mean.clone(), running_var.clone(), weight, bias, True, 0.1, 1e-5),
              store={"running_mean_after": rm2, "running_var_after": rv2})
    c.add("batchnorm_eval_4d", "batch_norm_4d", {"training": False, "momentum": 0.1, "eps": 1e-5},
          {"x": (r(2, 5, 3, 3), nhwc, True), "weight": (r(5), same, True), "bias": (r(5), same, True),
           "running_mean": (r(5), same, False), "running_var": (torch.rand(5) + 0.5, same, False)},
          lambda x, weight, bias, running_mean, running_var: F.batch_norm(
              x, running_mean, running_var, weight, bias, False, 0.1, 1e-5))
    c.add("layernorm", "layer_norm", {"eps": 1e-5},
          {"x": (r(3, 4, 8) * 2, same, True), "weight": (r(8), same, True), "bias": (r(8), same, True)},
          lambda x, weight, bias: F.layer_norm(x, (8,), weight, bias, 1e-5))
    c.add("linear", "linear", {}, {"x": (r(2, 3, 6), same, True), "w": (r(4, 6), same, True), "b": (r(4), same, True)},
          lambda x, w, b: F.linear(x, w, b))
    c.add("matmul", "matmul", {}, {"a": (r(2, 3, 4), same, True), "b": (r(4, 5), same, True)}, lambda a, b: a @ b)
    c.add("bmm", "bmm", {}, {"a": (r(3, 2, 4), same, True), "b": (r(3, 4, 5), same, True)}, lambda a, b: torch.bmm(a, b))
    c.add("softmax", "softmax", {"axis": 1}, {"x": (r(2, 5, 3) * 3, same, True)}, lambda x: F.softmax(x, 1))
    c.add("log_softmax", "log_softmax", {"axis": -1}, {"x": (r(4, 7) * 3, same, True)}, lambda x: F.log_softmax(x, -1))
    for name, ls in [("cross_entropy", 0.0), ("cross_entropy_smooth", 0.1)]:
        c.add(name, "cross_entropy", {"label_smoothing": ls},
              {"x": (r(6, 5) * 2, same, True), "target": (torch.tensor([0, 4, 2, 2, 1, 3]), same, False)},
              lambda x, target, ls=ls: F.cross_entropy(x, target, label_smoothing=ls))
    c.add("kl_div", "kl_div", {"log_target": False},
          {"input": (F.log_softmax(r(4, 6), -1), same, True), "target": (F.softmax(r(4, 6), -1), same, True)},
          lambda input, target: F.kl_div(input, target, reduction="batchmean"))
    c.add("kl_div_log_target", "kl_div", {"log_target": True},
          {"input": (F.log_softmax(r(4, 6), -1), same, True), "target": (F.log_softmax(r(4, 6), -1), same, True)},
          lambda input, target: F.kl_div(input, target, reduction="batchmean", log_target=True))
    for act, fn in [("relu", F.relu), ("relu6", F.relu6), ("hardswish", F.hardswish), ("hardsigmoid", F.hardsigmoid),
                    ("gelu", F.gelu), ("gelu_tanh", lambda x: F.gelu(x, approximate="tanh")), ("sigmoid", torch.sigmoid),
                    ("tanh", torch.tanh)]:
        c.add(act, act, {}, {"x": (r(4, 9) * 4, same, True)}, lambda x, fn=fn: fn(x))
    c.add("add_broadcast", "add", {}, {"a": (r(2, 3, 4), same, True), "b": (r(3, 1), same, True)}, lambda a, b: a + b)
    c.add("mul_broadcast", "mul", {}, {"a": (r(2, 3, 4), same, True), "b": (r(4), same, True)}, lambda a, b: a * b)
    c.add("div_broadcast", "div", {}, {"a": (r(2, 3, 4), same, True), "b": (torch.rand(2, 1, 4) + 0.5, same, True)},
          lambda a, b: a / b)
    c.add("sum_axes", "sum", {"axes": [0, 2], "keepdim": False}, {"x": (r(3, 4, 5), same, True)},
          lambda x: x.sum((0, 2)))
    c.add("mean_axes_keepdim", "mean", {"axes": [1], "keepdim": True}, {"x": (r(3, 4, 5), same, True)},
          lambda x: x.mean(1, keepdim=True))
    c.add("index_select", "index_select", {"axis": 1},
          {"x": (r(2, 5, 3), same, True), "index": (torch.tensor([4, 0, 4, 2]), same, False)},
          lambda x, index: torch.index_select(x, 1, index))
    return c


# ---------------------------------------------------------------- compositions
def compositions():
    t = {}
    # (a) conv-bn-relu-maxpool-linear + cross-entropy
    x = torch.randn(4, 3, 8, 8, requires_grad=True)
    conv = nn.Conv2d(3, 6, 3, padding=1, bias=True)
    bn = nn.BatchNorm2d(6)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
    fc = nn.Linear(6 * 4 * 4, 5)
    y = torch.tensor([0, 3, 4, 1])
    h = F.max_pool2d(F.relu(bn(conv(x))), 2)
    logits = fc(h.permute(0, 2, 3, 1).flatten(1))
    loss = F.cross_entropy(logits, y)
    loss.backward()
    t.update({"a/x": nhwc(x.detach()), "a/y": y, "a/conv_w": ohwi(conv.weight.detach()), "a/conv_b": conv.bias.detach(),
              "a/bn_w": bn.weight.detach(), "a/bn_b": bn.bias.detach(), "a/fc_w": fc.weight.detach(),
              "a/fc_b": fc.bias.detach(), "a/logits": logits.detach(), "a/loss": loss.detach().reshape(1),
              "a/grad_x": nhwc(x.grad), "a/grad_conv_w": ohwi(conv.weight.grad), "a/grad_conv_b": conv.bias.grad,
              "a/grad_bn_w": bn.weight.grad, "a/grad_bn_b": bn.bias.grad, "a/grad_fc_w": fc.weight.grad,
              "a/grad_fc_b": fc.bias.grad, "a/bn_running_mean": bn.running_mean, "a/bn_running_var": bn.running_var})
    # (b) depthwise-separable block: dw3x3-BN-ReLU6 -> pw1x1-BN, plus a residual add, under a sum-of-squares loss
    x = torch.randn(2, 8, 6, 6, requires_grad=True)
    dw = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
    bn1 = nn.BatchNorm2d(8)
    pw = nn.Conv2d(8, 8, 1, bias=False)
    bn2 = nn.BatchNorm2d(8)
    out = bn2(pw(F.relu6(bn1(dw(x))))) + x
    loss = (out * out).mean()
    loss.backward()
    t.update({"b/x": nhwc(x.detach()), "b/dw_w": ohwi(dw.weight.detach()), "b/pw_w": ohwi(pw.weight.detach()),
              "b/out": nhwc(out.detach()), "b/loss": loss.detach().reshape(1), "b/grad_x": nhwc(x.grad),
              "b/grad_dw_w": ohwi(dw.weight.grad), "b/grad_pw_w": ohwi(pw.weight.grad),
              "b/grad_bn1_w": bn1.weight.grad, "b/grad_bn1_b": bn1.bias.grad, "b/grad_bn2_w": bn2.weight.grad,
              "b/grad_bn2_b": bn2.bias.grad})
    # (c) layernorm + GELU + softmax (a Transformer MLP fragment), loss = sum(softmax * upstream)
    x = torch.randn(2, 5, 16, requires_grad=True)
    ln = nn.LayerNorm(16)
    with torch.no_grad():
        ln.weight.uniform_(0.5, 1.5)
        ln.bias.uniform_(-0.5, 0.5)
    fc = nn.Linear(16, 12)
    p = F.softmax(F.gelu(fc(ln(x))), dim=-1)
    up = torch.randn(p.shape)
    loss = (p * up).sum()
    loss.backward()
    t.update({"c/x": x.detach(), "c/ln_w": ln.weight.detach(), "c/ln_b": ln.bias.detach(), "c/fc_w": fc.weight.detach(),
              "c/fc_b": fc.bias.detach(), "c/upstream": up, "c/out": p.detach(), "c/loss": loss.detach().reshape(1),
              "c/grad_x": x.grad, "c/grad_ln_w": ln.weight.grad, "c/grad_ln_b": ln.bias.grad,
              "c/grad_fc_w": fc.weight.grad, "c/grad_fc_b": fc.bias.grad})
    return t


# ---------------------------------------------------------------- cnn-small, 20 SGD steps
class CnnSmall(nn.Module):
    """The same network as models/cnn_small.cpp (PyTorch layout)."""

    def __init__(self, classes=10):
        super().__init__()

        def cbr(i, o):
            return [nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU()]
        self.features = nn.Sequential(*cbr(1, 32), nn.MaxPool2d(2), *cbr(32, 64), nn.MaxPool2d(2), *cbr(64, 64))
        self.fc = nn.Linear(64 * 7 * 7, classes)

    def forward(self, x):
        return self.fc(self.features(x).permute(0, 2, 3, 1).flatten(1))


# s2h parameter names of cnn-small (a Sequential) and the matching PyTorch module
# (s2h places an identity ChannelMask after each ReLU, which shifts the indices).
CNN_SMALL_NAMES = {"0": "features.0", "1": "features.1", "5": "features.4", "6": "features.5", "10": "features.8",
                   "11": "features.9", "15": "fc"}


def s2h_state(model):
    out = {}
    sd = model.state_dict()
    for ours, theirs in CNN_SMALL_NAMES.items():
        for key in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
            k = f"{theirs}.{key}"
            if k in sd:
                v = sd[k]
                out[f"{ours}.{key}"] = (ohwi(v) if v.dim() == 4 else v).clone()
    return out


def cnn_small_sgd():
    model = CnnSmall()
    init = {k: v.clone() for k, v in s2h_state(model).items()}  # state_dict() aliases the live weights
    x = torch.randn(16, 1, 28, 28)
    y = torch.randint(0, 10, (16,))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    losses = []
    for _ in range(20):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    t = {"init/" + k: v.clone() for k, v in init.items()}
    t.update({"final/" + k: v.clone() for k, v in s2h_state(model).items()})
    t.update({"x": nhwc(x), "y": y, "losses": torch.tensor(losses, dtype=torch.float64)})
    return t


def adamw():
    lin = nn.Linear(6, 3)
    x, y = torch.randn(8, 6), torch.randn(8, 3)
    t = {"x": x, "y": y, "w0": lin.weight.detach().clone(), "b0": lin.bias.detach().clone()}
    opt = torch.optim.AdamW(lin.parameters(), lr=0.01, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1)
    for i in range(10):
        loss = ((lin(x) - y) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        t[f"w{i + 1}"] = lin.weight.detach().clone()
        t[f"b{i + 1}"] = lin.bias.detach().clone()
    return t


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.dirname(os.path.abspath(__file__)))
    a = ap.parse_args()
    torch.manual_seed(20241121)
    torch.set_num_threads(1)
    meta = {"generator": "tests/golden/make_golden.py", "torch": torch.__version__}
    c = op_cases()
    save(os.path.join(a.out, "ops.safetensors"), c.tensors, {**meta, "cases": json.dumps(c.meta)})
    save(os.path.join(a.out, "compositions.safetensors"), compositions(), meta)
    save(os.path.join(a.out, "cnn_small_sgd.safetensors"), cnn_small_sgd(), meta)
    save(os.path.join(a.out, "adamw.safetensors"), adamw(), meta)
    print("golden files written to", a.out)


if __name__ == "__main__":
    main()
