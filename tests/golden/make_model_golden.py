#!/usr/bin/python3
"""Parameter counts, FLOPs and forward goldens of s2h's models, from PyTorch.

Run with Debian's python3 (python3-torch, PyTorch 1.13 CPU):

    /usr/bin/python3 tests/golden/make_model_golden.py            # writes tests/golden/model_counts.json
    /usr/bin/python3 tests/golden/make_model_golden.py --forward-out DIR   # forward goldens only

The models come from ref_cnn.py and, when it exists, ref_transformer.py: each
exports MODELS = {key: (builder(num_classes) -> nn.Module, input spec[, extras])}.
A key is a model name, or "name@variant" for the same model at another input.
Input specs: "CxHxW" (an image; s2h reads it NHWC) or "tokensN" (N token ids,
drawn from 1..vocab-1 where vocab is the first nn.Embedding's size). extras
(optional dict): "classes" (default 10) and ModelConfig fields that the C++
tests set ("imagenet_stem", "patch_size", "vocab_size", "max_len"), copied
into the JSON entry.

model_counts.json: {key: {"model", "input", "classes", "params", "flops", extras...}}
with FLOPs for ONE sample = 2 x MACs of every nn.Conv2d
(2 * (Cin/groups) * kh * kw * Cout * Hout * Wout) and nn.Linear (2 * in * out per
token), plus m.extra_flops(input, output) of any module defining it (attention
products), counted with forward hooks. Biases, norms, activations, pooling and
additions count 0.

--forward-out DIR writes DIR/<name>_forward.safetensors for resnet20,
mobilenetv3-small and vit-tiny (when ref_transformer defines it): seeded random
weights (BN affine parameters and running statistics random too), eval mode,
a fixed batch of 2: the state dict in s2h's layout under its s2h names (4-D conv
weights as [out][kh][kw][in]; a ref module may define s2h_state(name, model)
instead), "input" (NHWC images or i64 ids) and "output" (logits). With only
--forward-out, nothing is written into the source tree.
"""
import argparse
import importlib
import json
import os
import re
import sys

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

from make_golden import nhwc, save  # noqa: E402

FORWARD_MODELS = ["resnet20", "mobilenetv3-small", "vit-tiny"]
SEED = 20250101


def ref_modules():
    mods = [importlib.import_module("ref_cnn")]
    if os.path.exists(os.path.join(HERE, "ref_transformer.py")):
        mods.append(importlib.import_module("ref_transformer"))
    return mods


def all_models():
    """key -> (module, builder, input spec, extras)."""
    out = {}
    for mod in ref_modules():
        for key, entry in mod.MODELS.items():
            if key in out:
                raise SystemExit(f"model {key} is defined twice ({mod.__name__})")
            builder, spec = entry[0], entry[1]
            extras = dict(entry[2]) if len(entry) > 2 else {}
            out[key] = (mod, builder, spec, extras)
    return out


def make_input(model, spec, batch):
    m = re.fullmatch(r"(\d+)x(\d+)x(\d+)", spec)
    if m:
        return torch.randn(batch, *map(int, m.groups()))
    m = re.fullmatch(r"tokens(\d+)", spec)
    if m:
        emb = next((e for e in model.modules() if isinstance(e, nn.Embedding)), None)
        if emb is None:
            raise SystemExit(f"input spec {spec}: the model has no nn.Embedding")
        return torch.randint(1, emb.num_embeddings, (batch, int(m.group(1))))
    raise SystemExit(f"unknown input spec '{spec}' (expected CxHxW or tokensN)")


def count_flops(model, x):
    """FLOPs of one forward of x (batch 1) by forward hooks."""
    total = [0]

    def hook(m, inputs, out):
        if isinstance(m, nn.Conv2d):
            kh, kw = m.kernel_size
            total[0] += 2 * (m.in_channels // m.groups) * kh * kw * out.numel()
        elif isinstance(m, nn.Linear):
            total[0] += 2 * m.in_features * out.numel()
        if hasattr(m, "extra_flops"):
            total[0] += int(m.extra_flops(inputs[0], out))

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.Conv2d, nn.Linear)) or hasattr(m, "extra_flops")]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return total[0]


def counts(models):
    table = {}
    for key, (mod, builder, spec, extras) in models.items():
        extras = dict(extras)
        classes = extras.pop("classes", 10)
        torch.manual_seed(SEED)
        model = builder(classes).eval()
        params = sum(p.numel() for p in model.parameters())
        expected = getattr(mod, "TORCHVISION_PARAMS", {}).get(key)
        if expected is not None and params != expected:
            raise SystemExit(f"{key}: {params} parameters, torchvision's model has {expected}")
        flops = count_flops(model, make_input(model, spec, 1))
        table[key] = {"model": key.split("@")[0], "input": spec, "classes": classes, "params": params, "flops": flops,
                      **extras}
        print(f"{key:24s} {spec:>10s} {classes:5d} classes {params:>12,d} params {flops:>16,d} FLOPs")
    return table


def s2h_layout(model):
    return {k: (v.permute(0, 2, 3, 1) if v.dim() == 4 else v).contiguous().clone()
            for k, v in model.state_dict().items()}


def randomise(model):
    """Random BN affine parameters and running statistics (positive variances), so eval mode tests them."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            with torch.no_grad():
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)


def forward_goldens(models, out_dir):
    os.makedirs(out_dir, exist_ok=True)
    for name in FORWARD_MODELS:
        if name not in models:
            print(f"{name}: no reference definition, forward golden not made")
            continue
        mod, builder, spec, extras = models[name]
        classes = extras.get("classes", 10)
        torch.manual_seed(SEED)
        model = builder(classes)
        randomise(model)
        model.eval()
        x = make_input(model, spec, 2)
        with torch.no_grad():
            y = model(x)
        state = mod.s2h_state(name, model) if hasattr(mod, "s2h_state") else s2h_layout(model)
        for k in ("input", "output"):
            if k in state:
                raise SystemExit(f"{name}: a state entry is called '{k}'")
        state["input"] = nhwc(x) if x.dim() == 4 else x
        state["output"] = y
        path = os.path.join(out_dir, f"{name}_forward.safetensors")
        meta = {"generator": "tests/golden/make_model_golden.py", "torch": torch.__version__, "model": name,
                "input": spec, "classes": str(classes)}
        save(path, state, meta)
        print("wrote", path)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--counts", help="where to write the counts (default tests/golden/model_counts.json, "
                    "not written when only --forward-out is given)")
    ap.add_argument("--forward-out", help="folder for the forward goldens")
    a = ap.parse_args()
    torch.set_num_threads(1)
    models = all_models()
    if a.forward_out:
        forward_goldens(models, a.forward_out)
    counts_path = a.counts or (None if a.forward_out else os.path.join(HERE, "model_counts.json"))
    if counts_path:
        table = counts(models)
        tmp = counts_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(table, f, indent=1, sort_keys=True)
            f.write("\n")
        os.replace(tmp, counts_path)
        print("wrote", counts_path)


if __name__ == "__main__":
    main()
