#!/usr/bin/env python3
"""PyTorch's fused attention on the GPU: the baseline of kernel_bench's attention rows.

torch.nn.functional.scaled_dot_product_attention with the flash backend forced
(torch.nn.attention.sdpa_kernel(SDPBackend.FLASH_ATTENTION): an error, not a
silent fallback, if flash cannot run), bf16 q, k, v of shape [b, h, s, d]
(contiguous), no mask, bidirectional, the default 1/sqrt(d) scale. The same
shapes as kernel_bench: b * s = --tokens (16384), s in --seqs, d in
--head-dims, h = --model-dim / d; the same input distributions (q, k uniform in
[-2, 2), v and dout in [-1, 1)).

Timing as kernel_bench: CUDA events around each call on the current stream,
--warmup untimed calls, the median of --reps, the L2 cache flushed by reading a
256 MB buffer before every repetition. Measured: forward (grad mode on, inputs
requiring grad, as in training), backward alone (torch.autograd.grad on a kept
graph), and forward + backward in one event pair. TFLOP/s count 4 b h s^2 d
for the forward and 2.5x that for the backward (the flash-attention convention).

Accuracy, as kernel_bench reports it (max |out - ref| / max |ref|): for two
whole heads (the first and the last (b, h)), flash's output and gradients
against an fp64 reference computed with plain matrix products from the same
bf16 inputs. kernel_bench's error is meant to be within 2x of this.

  python3 benchmarks/torch_attention.py [--json PATH] [--tokens 16384] [--seqs 256,512,1024,2048,4096]
                                        [--head-dims 64,128] [--model-dim 768] [--reps 20] [--warmup 3]
                                        [--flush-mb 256] [--no-check] [--require-gpu]
Without torch or a GPU: prints "no GPU: <reason>" and exits 0 (1 with --require-gpu).
"""
import argparse
import datetime
import json
import math
import sys


def int_list(text):
    try:
        vals = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")
    if not vals or any(v <= 0 for v in vals):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return vals


def positive_int(text):
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}")
    if v <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return v


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", help="write the rows to this JSON file")
    p.add_argument("--tokens", type=positive_int, default=16384, help="b * s (b = tokens / s, at least 1)")
    p.add_argument("--seqs", type=int_list, default=[256, 512, 1024, 2048, 4096], help="sequence lengths")
    p.add_argument("--head-dims", type=int_list, default=[64, 128], help="head dims")
    p.add_argument("--model-dim", type=positive_int, default=768, help="h * d (h = model-dim / d)")
    p.add_argument("--reps", type=positive_int, default=20, help="timed repetitions (median)")
    p.add_argument("--warmup", type=int, default=3, help="untimed calls first")
    p.add_argument("--flush-mb", type=int, default=256, help="MiB read before each repetition (0: none)")
    p.add_argument("--no-check", action="store_true", help="skip the fp64 accuracy check")
    p.add_argument("--require-gpu", action="store_true", help="exit 1 instead of 0 without torch or a GPU")
    a = p.parse_args(argv)
    for d in a.head_dims:
        if a.model_dim % d:
            p.error(f"--model-dim {a.model_dim} is not a multiple of head dim {d}")
    if a.warmup < 0 or a.flush_mb < 0:
        p.error("--warmup and --flush-mb must be >= 0")
    return a


def rel_err(got, ref):
    """max |got - ref| / max |ref| (inf when got has a non-finite value)."""
    import torch
    got = got.double()
    if not torch.isfinite(got).all():
        return math.inf
    den = ref.abs().max().item()
    diff = (got - ref).abs().max().item()
    return diff / den if den > 0 else diff


def main(argv):
    a = parse_args(argv)
    try:
        import torch
        import torch.nn.functional as F
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except Exception as e:  # no torch, or one older than 2.3
        print(f"no GPU: PyTorch with torch.nn.attention is not importable ({e})")
        return 1 if a.require_gpu else 0
    if not torch.cuda.is_available():
        print("no GPU: torch.cuda.is_available() is False")
        return 1 if a.require_gpu else 0

    dev = torch.device("cuda")
    stream = torch.cuda.current_stream()
    flush = torch.empty(max(a.flush_mb, 1) << 20, dtype=torch.uint8, device=dev) if a.flush_mb else None
    if flush is not None:
        flush.fill_(0x3C)

    def median_ms(fn):
        for _ in range(a.warmup):
            fn()
        torch.cuda.synchronize()
        # The host runs ahead of the GPU: a sleep on the GPU first keeps launch gaps out of the events.
        # _sleep counts GPU clock cycles, not ns: 2e7 cycles is ~10 ms at the H100's ~2 GHz, a lead that
        # covers Python's slower enqueueing (autograd.grad per repetition) of all --reps repetitions.
        torch.cuda._sleep(int(2e7))
        events = []
        for _ in range(a.reps):
            if flush is not None:
                flush.sum(dtype=torch.int64)  # a read of the whole buffer: L2 then holds only clean lines of it
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record(stream)
            fn()
            end.record(stream)
            events.append((start, end))
        torch.cuda.synchronize()
        ms = sorted(s.elapsed_time(e) for s, e in events)
        m = len(ms) // 2
        return ms[m] if len(ms) % 2 else 0.5 * (ms[m - 1] + ms[m])

    rows = []
    ok = True
    print(f"torch_attention: torch {torch.__version__}, {torch.cuda.get_device_name(0)}, flash backend, bf16")
    print(f"{'shape':<22} {'fwd ms':>9} {'bwd ms':>9} {'f+b ms':>9} {'fwd TF/s':>9} {'bwd TF/s':>9} {'f+b TF/s':>9}"
          f" {'err out':>9} {'err dq':>9} {'err dk':>9} {'err dv':>9}")
    for d in a.head_dims:
        for s in a.seqs:
            h = a.model_dim // d
            b = max(1, a.tokens // s)
            row = {"b": b, "h": h, "s": s, "d": d, "layout": "[b, h, s, d] contiguous", "backend": "flash"}
            try:
                gen = torch.Generator(device=dev).manual_seed(1000 * d + s)

                def uniform(lo, hi):
                    t = torch.rand((b, h, s, d), generator=gen, device=dev, dtype=torch.float32)
                    return (lo + (hi - lo) * t).to(torch.bfloat16)

                q, k, v = uniform(-2, 2), uniform(-2, 2), uniform(-1, 1)
                dout = uniform(-1, 1)
                for t in (q, k, v):
                    t.requires_grad_(True)
                with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                    def fwd():
                        return F.scaled_dot_product_attention(q, k, v)

                    def fwd_bwd():
                        out = F.scaled_dot_product_attention(q, k, v)
                        return torch.autograd.grad(out, (q, k, v), dout)

                    kept = fwd()

                    def bwd():
                        return torch.autograd.grad(kept, (q, k, v), dout, retain_graph=True)

                    if not a.no_check:
                        gq, gk, gv = bwd()
                        errs = {"err_out": 0.0, "err_dq": 0.0, "err_dk": 0.0, "err_dv": 0.0}
                        for bb, hh in ((0, 0), (b - 1, h - 1)):
                            qd, kd, vd = (t[bb, hh].detach().double().requires_grad_(True) for t in (q, k, v))
                            p = torch.softmax(qd @ kd.transpose(0, 1) / math.sqrt(d), dim=-1)
                            od = p @ vd
                            rq, rk, rv = torch.autograd.grad(od, (qd, kd, vd), dout[bb, hh].double())
                            for name, got, ref in (("err_out", kept[bb, hh], od), ("err_dq", gq[bb, hh], rq),
                                                   ("err_dk", gk[bb, hh], rk), ("err_dv", gv[bb, hh], rv)):
                                errs[name] = max(errs[name], rel_err(got.detach(), ref.detach()))
                        row.update({k2: (v2 if math.isfinite(v2) else None) for k2, v2 in errs.items()})
                    row["fwd_ms"] = median_ms(fwd)
                    row["bwd_ms"] = median_ms(bwd)
                    row["fwdbwd_ms"] = median_ms(fwd_bwd)
                    del kept
                flops = 4.0 * b * h * s * s * d
                row["fwd_flops"] = flops
                row["fwd_tflops"] = flops / (row["fwd_ms"] * 1e-3) / 1e12
                row["bwd_tflops"] = 2.5 * flops / (row["bwd_ms"] * 1e-3) / 1e12
                row["fwdbwd_tflops"] = 3.5 * flops / (row["fwdbwd_ms"] * 1e-3) / 1e12
            except Exception as e:  # e.g. flash cannot run this shape: say so, keep going
                row["error"] = f"{type(e).__name__}: {e}"
                ok = False
            rows.append(row)

            def f(key, spec):
                v2 = row.get(key)
                return format(v2, spec) if isinstance(v2, (int, float)) else "-"

            print(f"{f'b{b} s{s} h{h} d{d}':<22} {f('fwd_ms', '9.4f')} {f('bwd_ms', '9.4f')} {f('fwdbwd_ms', '9.4f')}"
                  f" {f('fwd_tflops', '9.1f')} {f('bwd_tflops', '9.1f')} {f('fwdbwd_tflops', '9.1f')}"
                  f" {f('err_out', '9.2e')} {f('err_dq', '9.2e')} {f('err_dk', '9.2e')} {f('err_dv', '9.2e')}",
                  flush=True)
            if "error" in row:
                print(f"    error: {row['error']}", flush=True)
            if a.json:
                write(a, torch, rows, complete=False)
    if a.json:
        write(a, torch, rows, complete=True)
        print(f"rows written to {a.json}")
    return 0 if ok else 1


def write(a, torch, rows, complete):
    doc = {"tool": "torch_attention", "device": torch.cuda.get_device_name(0),
           "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
           "torch": torch.__version__, "cuda": torch.version.cuda, "precision": "bf16",
           "what": "torch.nn.functional.scaled_dot_product_attention, SDPBackend.FLASH_ATTENTION forced",
           "config": {"tokens": a.tokens, "seqs": a.seqs, "head_dims": a.head_dims, "model_dim": a.model_dim,
                      "reps": a.reps, "warmup": a.warmup, "flush_mb": a.flush_mb},
           "complete": complete, "rows": rows}
    with open(a.json, "w") as fh:
        json.dump(doc, fh, indent=2)
        fh.write("\n")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
