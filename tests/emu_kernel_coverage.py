#!/usr/bin/env python3
r"""Checks that the emulated test suites launched every handwritten CUDA kernel.

Every `__global__` function defined in kernels/cuda/*.cu must have been
launched at least once by the emulated suites of one ctest run. The suites'
processes write what they launched to a folder (S2H_EMU_KERNELS, see
kernels/cuda/emu/emu.cpp); addr2line turns the kernels' addresses into their
names. The table printed lists, per kernel, its template instantiations run,
its launches and the suites that launched it.

A run that did not include every emulated test (ctest -R ...) cannot show
coverage: then the script says so and passes.

  emu_kernel_coverage.py --reports DIR --sources kernels/cuda [--instantiations] \
      --suite BINARY FILTER [--suite BINARY FILTER ...]
"""
import argparse
import collections
import glob
import os
import re
import subprocess
import sys


def kernels_in_sources(src_dir):
    """{kernel name: file} for every __global__ function defined in src_dir/*.cu."""
    found = {}
    pattern = re.compile(r"__global__\s+void\s+(?:__launch_bounds__\s*\([^)]*\)\s*)?(\w+)\s*\(", re.S)
    for path in sorted(glob.glob(os.path.join(src_dir, "*.cu"))):
        text = open(path, encoding="utf-8").read()
        for m in pattern.finditer(text):
            found.setdefault(m.group(1), os.path.basename(path))
    return found


def base_name(demangled):
    """'void s2h::cuda::(anonymous namespace)::fwd_kernel<float, true>(...)' -> 'fwd_kernel'."""
    s, out, depth = instantiation(demangled), "", 0
    for ch in s:  # drop template arguments
        if ch == "<":
            depth += 1
        elif ch == ">":
            depth -= 1
        elif depth == 0:
            out += ch
    return out.split("::")[-1].split()[-1]


def instantiation(demangled):
    """The demangled name without its parameter list: one per template instantiation."""
    s, depth = demangled.replace("(anonymous namespace)", "anon"), 0
    for i, ch in enumerate(s):  # the parameter list opens at the first '(' outside the template arguments
        if ch == "<":
            depth += 1
        elif ch == ">":
            depth -= 1
        elif ch == "(" and depth == 0:
            return s[:i]
    return s


def listed_tests(binary, gfilter):
    """The test names `binary --gtest_list_tests --gtest_filter=gfilter` lists."""
    out = subprocess.run([binary, "--gtest_list_tests", "--gtest_filter=" + gfilter], capture_output=True,
                         text=True, check=True).stdout
    names, suite = set(), ""
    for line in out.splitlines():
        if not line.strip() or line.startswith("Running main"):
            continue
        if not line.startswith(" "):
            suite = line.split()[0]
        else:
            names.add(suite + line.split()[0])
    return names


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reports", required=True, help="the S2H_EMU_KERNELS folder of the run")
    ap.add_argument("--sources", required=True, help="kernels/cuda")
    ap.add_argument("--suite", nargs=2, action="append", default=[], metavar=("BINARY", "FILTER"),
                    help="an emulated test binary and the gtest filter its tests are registered with")
    ap.add_argument("--instantiations", action="store_true", help="also list each kernel's template instantiations")
    args = ap.parse_args()

    sources = kernels_in_sources(args.sources)
    if not sources:
        sys.exit(f"emu_kernel_coverage: no __global__ kernel found in {args.sources}/*.cu")

    # What ran: per report, the test (from --gtest_filter on its command line) and the kernels.
    ran_tests = collections.defaultdict(set)  # binary -> test names
    uses = []  # (binary, module, offset, launches, launch name)
    for path in sorted(glob.glob(os.path.join(args.reports, "*.tsv"))):
        lines = open(path, encoding="utf-8").read().splitlines()
        if not lines or not lines[0].startswith("# cmdline"):
            continue
        argv = lines[0].split("\t")[1:]
        binary = os.path.realpath(argv[0]) if argv else "?"
        for a in argv[1:]:
            if a.startswith("--gtest_filter="):
                ran_tests[binary].add(a[len("--gtest_filter="):])
        for line in lines[1:]:
            launches, name, module, offset = line.split("\t")
            uses.append((binary, module, offset, int(launches), name))

    # Was every registered emulated test run?
    missing_tests = 0
    total = 0
    for binary, gfilter in args.suite:
        expected = listed_tests(binary, gfilter)
        total += len(expected)
        missing_tests += len(expected - ran_tests.get(os.path.realpath(binary), set()))
    if missing_tests:
        print(f"emu_kernel_coverage: {missing_tests} of the {total} emulated tests did not run in this ctest run "
              "(a partial run): kernel coverage is not checked. Run them all: ctest -L emu")
        return 0

    # Names of the launched kernels.
    names = {}
    by_module = collections.defaultdict(set)
    for _, module, offset, _, _ in uses:
        by_module[module].add(offset)
    for module, offsets in by_module.items():
        offsets = sorted(offsets)
        out = subprocess.run(["addr2line", "-C", "-f", "-e", module] + offsets, capture_output=True, text=True,
                             check=True).stdout.splitlines()
        for i, off in enumerate(offsets):
            names[(module, off)] = out[2 * i] if 2 * i < len(out) else "??"

    table = collections.defaultdict(lambda: {"inst": set(), "launches": 0, "suites": set()})
    for binary, module, offset, launches, _ in uses:
        full = names[(module, offset)]
        k = base_name(full)
        table[k]["inst"].add(instantiation(full))
        table[k]["launches"] += launches
        table[k]["suites"].add(os.path.basename(binary))

    print(f"{'kernel':34} {'file':16} {'inst.':>5} {'launches':>9}  suites")
    missing = []
    for k in sorted(sources, key=lambda n: (sources[n], n)):
        if k in table:
            t = table[k]
            print(f"{k:34} {sources[k]:16} {len(t['inst']):5d} {t['launches']:9d}  {' '.join(sorted(t['suites']))}")
            if args.instantiations:
                for inst in sorted(t["inst"]):
                    print("    " + inst.replace("s2h::cuda::anon::", ""))
        else:
            print(f"{k:34} {sources[k]:16} {0:5d} {0:9d}  NEVER LAUNCHED")
            missing.append(k)
    print(f"{len(sources) - len(missing)} of {len(sources)} kernels launched in {total} emulated tests")
    if missing:
        print("emu_kernel_coverage: never launched under the emulator: " + ", ".join(missing))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
