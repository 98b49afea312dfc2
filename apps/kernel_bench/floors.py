#!/usr/bin/env python3
"""The two floors of every kernel_bench item, as markdown tables for kernels/cuda/notes/*.md.

For each benchmark shape: FLOPs (2 x MACs; attention 4 b h s^2 d forward,
2.5x that backward), the least bytes the kernel must move (every input read
once, every output written once: bf16 activations, a bf16 weight read once;
the soft backward also reads x (dgrad, for the input-mask gradient) or W
(wgrad, for the output-mask gradient); attention forward q, k, v, out (+ lse),
backward q, k, v, out, dout, dq, dk, dv (+ lse, delta)); the FLOP floor =
FLOPs / peak and the byte floor = bytes / bandwidth (nominal H100 SXM: 989
TFLOP/s dense bf16, 3.35 TB/s HBM3 until measured), and which one binds (the
larger). The shapes and formulas are kernel_bench's (apps/kernel_bench/main.cpp:
resnet50_layers, hard_widths, conv_flops, conv_bytes, attn_bytes); with
--check BINARY this script also runs `BINARY --list` and fails if any number
differs from its own.

  python3 apps/kernel_bench/floors.py [--section masked|hard|dual|attention] [--peak 989] [--bw 3350]
                                      [--check build/apps/kernel_bench] [--tiles]
"""
import argparse
import math
import subprocess
import sys

LAYERS = [  # name, c, o, k, stride, input size as a divisor of the image size (64)
    ("l1.3x3", 64, 64, 3, 1, 1), ("l2.3x3", 128, 128, 3, 1, 2), ("l3.3x3", 256, 256, 3, 1, 4),
    ("l4.3x3", 512, 512, 3, 1, 8), ("l2.3x3s2", 128, 128, 3, 2, 1), ("l3.3x3s2", 256, 256, 3, 2, 2),
    ("l4.3x3s2", 512, 512, 3, 2, 4), ("l1.1x1in", 64, 64, 1, 1, 1), ("l1.1x1out", 64, 256, 1, 1, 1),
    ("l1.1x1red", 256, 64, 1, 1, 1), ("l3.1x1red", 1024, 256, 1, 1, 4), ("l2.down", 256, 512, 1, 2, 1),
]
N, IMAGE, FRACTIONS = 256, 64, (0.15, 0.35, 0.55)
TOKENS, MODEL_DIM, SEQS, HDS = 16384, 768, (256, 512, 1024, 2048, 4096), (64, 128)


def conv(c, o, k, st, h):
    pad = k // 2
    ho = (h + 2 * pad - k) // st + 1
    return {"c": c, "o": o, "k": k, "st": st, "h": h, "ho": ho}


def flops(s):
    return 2.0 * N * s["ho"] ** 2 * s["o"] * s["c"] * s["k"] ** 2


def nbytes(p, s, wbytes, scale_grads):
    x, y = 2.0 * N * s["h"] ** 2 * s["c"], 2.0 * N * s["ho"] ** 2 * s["o"]
    w = wbytes * s["o"] * s["k"] ** 2 * s["c"]
    return {"fwd": x + w + y, "dgrad": y + w + x + (x if scale_grads else 0),
            "wgrad": x + y + w + (w if scale_grads else 0)}[p]


def round8(v):
    return max(8, int(round(v / 8.0)) * 8)


def hard(c, o, f):
    r = math.sqrt(f)
    hc, ho = min(c, round8(c * r)), min(o, round8(o * r))
    return hc, ho, hc * ho / (c * o)


def items(section):
    """(kernel, pass, shape text, flops, bytes) of kernel_bench --list."""
    out = []
    for name, c, o, k, st, div in LAYERS:
        s = conv(c, o, k, st, IMAGE // div)
        text = f"n{N} {s['h']}x{s['h']} k{k}s{st} {c}->{o}"
        if section == "masked":
            for p in ("fwd", "dgrad", "wgrad"):
                out.append((name, "masked_conv_soft", p, text, flops(s), nbytes(p, s, 2, True)))
        for f in FRACTIONS:
            hc, ho, frac = hard(c, o, f)
            h = conv(hc, ho, k, st, IMAGE // div)
            htext = f"n{N} {s['h']}x{s['h']} k{k}s{st} {hc}/{c}->{ho}/{o}"
            if section == "hard":
                for p in ("fwd", "dgrad", "wgrad"):
                    out.append((name, f"hard_conv {100 * f:.0f}%", p, htext, flops(h), nbytes(p, h, 2, False)))
            if section == "dual":
                out.append((name, f"dual_conv {100 * f:.0f}%", "fwd", text + f" +{hc}->{ho}", flops(s) + flops(h),
                            nbytes("fwd", s, 2, False) + nbytes("fwd", h, 0, False)))
    if section == "attention":
        for d in HDS:
            for sq in SEQS:
                h, b = MODEL_DIM // d, max(1, TOKENS // sq)
                ff, t, rows = 4.0 * b * h * sq * sq * d, 2.0 * b * sq * h * d, 4.0 * b * h * sq
                text = f"b{b} s{sq} h{h} d{d}"
                out.append((f"s{sq}", f"attention_hd{d}", "fwd", text, ff, 4 * t + rows))
                out.append((f"s{sq}", f"attention_hd{d}", "bwd", text, 2.5 * ff, 8 * t + 2 * rows))
    return out


def floor_ms(fl, by, peak, bw):
    return max(fl / (peak * 1e12), by / (bw * 1e9)) * 1e3


def table(section, peak, bw):
    """One row per item; hard and dual add the ratio their goal is stated in, between floors: hard floor /
    (dense floor x kept FLOPs) (goal <= 1.3) and dual floor / (soft floor + hard floor) (goal <= 0.8)."""
    extra = {"hard": " kept FLOPs | floor ratio |", "dual": " floor ratio |"}.get(section, "")
    lines = [f"| layer | kernel | pass | shape | GFLOP | min MB | FLOP floor ms | byte floor ms | binds |{extra}",
             "|---|---|---|---|---:|---:|---:|---:|---|" + "---:|" * extra.count("|")]
    dense = {(n, p): (fl, by) for n, _, p, _, fl, by in items("masked")}
    for name, kern, p, text, fl, by in items(section):
        f, b = fl / (peak * 1e12) * 1e3, by / (bw * 1e9) * 1e3
        row = (f"| {name} | {kern} | {p} | {text} | {fl / 1e9:.2f} | {by / 1e6:.1f} | {f:.4f} | {b:.4f} | "
               f"{'FLOPs' if f >= b else 'bytes'} |")
        if section == "hard":
            dfl, _ = dense[(name, p)]
            lay = next(l for l in LAYERS if l[0] == name)
            s = conv(lay[1], lay[2], lay[3], lay[4], IMAGE // lay[5])
            dby = nbytes(p, s, 2, False)  # the dense baseline runs without mask gradients
            kept = fl / dfl
            row += f" {kept:.3f} | {max(f, b) / (floor_ms(dfl, dby, peak, bw) * kept):.2f} |"
        if section == "dual":
            lay = next(l for l in LAYERS if l[0] == name)
            s = conv(lay[1], lay[2], lay[3], lay[4], IMAGE // lay[5])
            hc, ho = (int(v) for v in text.split("+")[1].split("->"))
            h = conv(hc, ho, lay[3], lay[4], IMAGE // lay[5])
            sep = floor_ms(flops(s), nbytes("fwd", s, 2, False), peak, bw) + floor_ms(flops(h), nbytes("fwd", h, 2, False),
                                                                                   peak, bw)
            row += f" {max(f, b) / sep:.2f} |"
        lines.append(row)
    return "\n".join(lines)


def tiles(section):
    """kernel v1's tile model of hard conv (masked_conv.cu: 128 x 64 block tiles, K steps of 32; wgrad: M = k k c
    in 128s, N = o in 64s): the hard layer's tile work over the dense layer's, divided by the kept FLOPs: the
    ratio a hard layer would show at the dense layer's efficiency per tile."""
    cd = lambda a, b: -(-a // b)
    lines = ["| layer | target | kept c, o | kept FLOPs | fwd | dgrad | wgrad |", "|---|---:|---|---:|---:|---:|---:|"]
    for name, c, o, k, st, div in LAYERS:
        for f in FRACTIONS:
            hc, ho, frac = hard(c, o, f)
            fwd = cd(ho, 64) / cd(o, 64) * cd(k * k * hc, 32) / cd(k * k * c, 32)
            dgr = cd(hc, 64) / cd(c, 64) * cd(k * k * ho, 32) / cd(k * k * o, 32)
            wgr = cd(k * k * hc, 128) / cd(k * k * c, 128) * cd(ho, 64) / cd(o, 64)
            lines.append(f"| {name} | {f:.2f} | {hc}, {ho} | {frac:.3f} | {fwd / frac:.2f} | {dgr / frac:.2f} | "
                         f"{wgr / frac:.2f} |")
    return "\n".join(lines)


def check(binary, peak, bw):
    out = subprocess.run([binary, "--list", "--peak-tflops", str(peak), "--bandwidth-gbs", str(bw)],
                         capture_output=True, text=True, check=True).stdout.splitlines()
    theirs = []
    for line in out:
        parts = line.split()
        if parts and parts[0] in ("masked", "hard", "dual", "attention"):
            theirs.append((float(parts[-5]), float(parts[-4])))  # GFLOP, MB
    ours = [(round(fl / 1e9, 2), round(by / 1e6, 1)) for sec in ("masked", "hard", "dual", "attention")
            for _, _, _, _, fl, by in items(sec)]
    theirs_sorted, ours_sorted = sorted(theirs), sorted(ours)
    if len(theirs) != len(ours) or any(abs(a[0] - b[0]) > 0.011 or abs(a[1] - b[1]) > 0.11
                                       for a, b in zip(theirs_sorted, ours_sorted)):
        print(f"floors.py: {binary} --list disagrees ({len(theirs)} items there, {len(ours)} here)", file=sys.stderr)
        return 1
    print(f"floors.py: {binary} --list agrees on all {len(ours)} items (GFLOP and MB)")
    return 0


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--section", choices=("masked", "hard", "dual", "attention"), action="append")
    p.add_argument("--peak", type=float, default=989.0, help="TFLOP/s (default: nominal H100 SXM dense bf16)")
    p.add_argument("--bw", type=float, default=3350.0, help="GB/s (default: nominal H100 SXM HBM3)")
    p.add_argument("--check", metavar="KERNEL_BENCH", help="compare with KERNEL_BENCH --list")
    p.add_argument("--tiles", action="store_true", help="the v1 tile model of hard conv (see tiles())")
    a = p.parse_args()
    if a.check:
        return check(a.check, a.peak, a.bw)
    if a.tiles:
        print(tiles("hard"))
        return 0
    for sec in a.section or ("masked", "hard", "dual", "attention"):
        print(f"### {sec} (floors at {a.peak:g} TFLOP/s and {a.bw:g} GB/s)\n")
        print(table(sec, a.peak, a.bw))
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
