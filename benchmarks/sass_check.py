#!/usr/bin/env python3
"""Static check of the fused kernels' machine code (issue 6, no GPU needed).

Disassembles the sm_90 SASS of kernels/cuda/masked_conv.cu and attention.cu
(the object files of a CMake build) with cuobjdump, and prints per kernel the
number of tensor-core instructions (HMMA), ldmatrix (LDSM), cp.async (LDGSTS)
and local-memory accesses (LDL/STL: spills or stack arrays). Fails (exit 1)
when a GEMM kernel has no HMMA or any kernel touches local memory.

  python3 benchmarks/sass_check.py [--build build] [--cuobjdump PATH]

cuobjdump and nvdisasm come with a full CUDA toolkit; where they are missing
(this project's CI image), the PyPI wheels nvidia-cuda-cuobjdump and
nvidia-cuda-nvdisasm carry them:
  pip download --no-deps -d /tmp/cuobj nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm
  (cd /tmp/cuobj && for w in *.whl; do unzip -qo "$w"; done)
  python3 benchmarks/sass_check.py --cuobjdump /tmp/cuobj/nvidia/cu13/bin/cuobjdump
"""
import argparse
import glob
import os
import re
import shutil
import subprocess
import sys

# Kernels that must use tensor cores (substring of the mangled name).
GEMM_KERNELS = ("fwd_kernel", "dgrad_kernel", "wgrad_kernel", "dual_kernel", "attn_fwd_kernel", "attn_bwd_dkdv", "attn_bwd_dq")


def find_tool(given):
    if given:
        return given
    for cand in (shutil.which("cuobjdump"), "/usr/local/cuda/bin/cuobjdump"):
        if cand and os.path.exists(cand):
            return cand
    return None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default="build", help="CMake build folder (default: build)")
    ap.add_argument("--cuobjdump", default="", help="path of cuobjdump (its nvdisasm must sit beside it or on PATH)")
    a = ap.parse_args()
    tool = find_tool(a.cuobjdump)
    if not tool:
        print("sass_check: cuobjdump not found (see --help for the PyPI wheels)", file=sys.stderr)
        return 2
    env = dict(os.environ)
    env["PATH"] = os.path.dirname(os.path.abspath(tool)) + os.pathsep + env.get("PATH", "")
    for wheel_dir in glob.glob(os.path.join(os.path.dirname(os.path.abspath(tool)), "..", "..", "*", "bin")):
        env["PATH"] += os.pathsep + os.path.abspath(wheel_dir)  # nvdisasm from its own wheel folder
    bad = 0
    print(f"{'kernel':70s} {'HMMA':>5s} {'LDSM':>5s} {'LDGSTS':>6s} {'LDL':>4s} {'STL':>4s}")
    for name in ("masked_conv", "attention"):
        objs = glob.glob(os.path.join(a.build, "kernels", "**", f"{name}.cu.o"), recursive=True)
        if not objs:
            print(f"sass_check: no {name}.cu.o under {a.build}/kernels (build s2h_kernels first)", file=sys.stderr)
            return 2
        out = subprocess.run([tool, "-sass", objs[0]], capture_output=True, text=True, env=env)
        if out.returncode != 0 or "Function :" not in out.stdout:
            print(f"sass_check: {tool} -sass {objs[0]} failed:\n{out.stdout[-400:]}{out.stderr[-400:]}", file=sys.stderr)
            return 2
        for block in out.stdout.split("Function : ")[1:]:
            fn = block.split("\n", 1)[0].strip()
            count = {op: len(re.findall(rf"\b{op}\b", block)) for op in ("HMMA", "LDSM", "LDGSTS", "LDL", "STL")}
            short = re.sub(r"_ZN3s2h4cuda\d+_GLOBAL__N__\w+?_\d+_", "", fn)[:70]
            flags = []
            if count["LDL"] or count["STL"]:
                flags.append("LOCAL MEMORY")
            if any(g in fn for g in GEMM_KERNELS) and count["HMMA"] == 0:
                flags.append("NO TENSOR CORES")
            bad += bool(flags)
            print(f"{short:70s} {count['HMMA']:5d} {count['LDSM']:5d} {count['LDGSTS']:6d} {count['LDL']:4d} "
                  f"{count['STL']:4d} {' '.join(flags)}")
    print("sass_check: " + ("FAILED" if bad else "ok: tensor-core instructions in every GEMM kernel, no local memory"))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
