#!/usr/bin/env bash
# The GPU check in one short call on a GPU machine (H100/H200, sm_90), from a
# bundle made elsewhere by benchmarks/make_gpu_bundle.sh. A GPU window is 15
# minutes of device time in all, start-up included, so the default call takes
# at most 7 minutes (a fix and a rerun fit), essentials first; the rest is a
# second, optional call.
#
# quick (the default; stage limits add up to 400 s of the 405 s budget):
#   env        nvidia-smi, the driver and the CUDA runtime of the bundle, libraries (ldd -r), and one kernel
#              run (test_cuda_probe). FAILS without a usable GPU or with a driver older than the runtime.
#   ops        test_ops_device, every op in cuda_fp32 and cuda_bf16 against the f64 CPU reference
#   fused      test_fused_ops: the fused kernels against the library path and the f64 reference
#   memcheck   compute-sanitizer memcheck on a quick subset (ops with hand-written kernels in bf16, and
#              the fused tests that reach every fused kernel)
#   torchattn  benchmarks/torch_attention.py: PyTorch SDPA flash, the attention baseline of kbench
#   resnet50   the dense ResNet-50 training step (64x64, batch 256, bf16): s2h vs PyTorch eager
#   s2hstep    the S2HPruner step (same network) with the fused kernels vs library kernels only
#   kbench     kernel_bench rows for masked, hard and dual conv and attention, then gpu_results.py
#              writes results/{masked_conv_resnet50_3x3,masked_conv_resnet50_1x1,hard_conv_resnet50,
#              dual_conv_resnet50,attention_hd64,attention_hd128}.json
# extra (--suite extra, a second call of at most 10 minutes; stage limits 570 s of a 580 s budget):
#   env, probe, runtime (test_cuda_runtime), opstf32 (test_ops_device in cuda_tf32), memlib (memcheck on
#   the GEMM/conv ops and the other fused tests), fracecheck (racecheck on small fused cases), gemm
#   (bench_gemm_peak: cuBLAS bf16 and tf32 8192^3), train (s2h train --device cuda --precision bf16,
#   ResNet-56 on CIFAR-10 for 2 epochs)
# --suite all runs quick then extra (two calls' worth: the budget skips what does not fit).
#
# Every stage runs even when an earlier one failed, under its own limit and
# the total budget, and the summary table is printed last. Results go to
# $OUT (the device tool's folder; ./build-gpu-check elsewhere): summary.txt,
# gpu_check.log (everything) and results/ (+ run/ for the train stage). The
# device tool brings back at most 8 files: when there are more, results/ and
# run/ are packed into results.tar.gz beside summary.txt and gpu_check.log.
# Copy results/ into benchmarks/results/ (run/ into benchmarks/results/runs/<name>/).
#
#   bash benchmarks/gpu_check.sh [--suite quick|extra|all] [--bundle DIR] [--budget SECONDS]
#                                [--only a,b] [--skip a,b] [--dry-run]
#
#   --suite S     quick (default), extra, or all; --only overrides it
#   --bundle DIR  default build-gpu-bundle
#   --budget S    total seconds for all stages (default 405 for quick, 580 otherwise)
#   --only/--skip stage names, comma-separated
#   --dry-run     here, without a GPU: check that the bundle is complete and
#                 its libraries resolve, then print what would run and the planned budgets
# Environment: S2H_FMEMCHECK_QUICK, S2H_RACECHECK_FILTER (gtest filters of the sanitizer stages),
# KBENCH_ALL=1 (kernel_bench's full plan in the kbench stage instead of the quick rows).
#
# The device tool's call: command "bash benchmarks/gpu_check.sh", carry ["build-gpu-bundle"], timeout 420.
set -uo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# The checksum of the sources a bundle is built from (used by make_gpu_bundle.sh and the staleness check).
source_checksum() {
  (cd "$REPO" && {
    echo CMakeLists.txt
    find apps data engine kernels models pruning tests benchmarks -type f \
      \( -name '*.cpp' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh' -o -name CMakeLists.txt \) 2>/dev/null
  } | LC_ALL=C sort | xargs sha256sum | sha256sum | cut -c1-16)
}
if [[ ${1:-} == --source-checksum ]]; then
  source_checksum
  exit 0
fi

BUNDLE=$REPO/build-gpu-bundle
BUDGET=""
DRY=0
ONLY=""
ONLY_GIVEN=""
SKIP=""
SUITE=quick
while [[ $# -gt 0 ]]; do
  case $1 in
    --suite) SUITE=$2; shift 2 ;;
    --bundle) BUNDLE=$(realpath -m "$2"); shift 2 ;;
    --budget) BUDGET=$2; shift 2 ;;
    --only) ONLY=$2; ONLY_GIVEN=1; shift 2 ;;
    --skip) SKIP=$2; shift 2 ;;
    --dry-run) DRY=1; shift ;;
    -h|--help) sed -n '2,46p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "gpu_check: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
SUITE_QUICK="env,ops,fused,memcheck,torchattn,resnet50,s2hstep,kbench"
SUITE_EXTRA="env,probe,runtime,opstf32,memlib,fracecheck,gemm,train"
case $SUITE in
  quick) SUITE_STAGES=$SUITE_QUICK ;;
  extra) SUITE_STAGES=$SUITE_EXTRA ;;
  all) SUITE_STAGES="$SUITE_QUICK,$SUITE_EXTRA" ;;
  *) echo "gpu_check: --suite $SUITE: expected quick, extra or all" >&2; exit 2 ;;
esac
[[ -n $ONLY ]] || ONLY=$SUITE_STAGES
[[ -n $BUDGET ]] || BUDGET=$([[ $SUITE == quick ]] && echo 405 || echo 580)

T_START=$(date +%s)
OUTDIR=${OUT:-$REPO/build-gpu-check}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/s2h-gpu-check.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$OUTDIR/results" "$OUTDIR/run"
LOG=$OUTDIR/gpu_check.log
: > "$LOG"
say() { echo "$*" | tee -a "$LOG"; }
elapsed() { echo $(($(date +%s) - T_START)); }

# ------------------------------------------------------------------ the bundle
say "== s2h gpu_check $(date -u +%Y-%m-%dT%H:%M:%SZ) on ${HOSTNAME:-$(uname -n)}, repo $REPO, bundle $BUNDLE"
[[ $DRY == 1 ]] && say "   DRY RUN: nothing is run on a GPU"
bundle_ok=1
for f in MANIFEST.txt payload.tar.xz cifar-10-jpeg.tar.gz; do
  [[ -f $BUNDLE/$f ]] || { say "MISSING: $BUNDLE/$f (make it with: bash benchmarks/make_gpu_bundle.sh)"; bundle_ok=0; }
done
if [[ $bundle_ok == 0 ]]; then
  say "gpu_check: the bundle is incomplete; nothing to run"
  exit 1
fi
# tar needs the xz program for .xz; python's tarfile (lzma) does without.
if ! { command -v xz > /dev/null && tar -C "$WORK" -xJf "$BUNDLE/payload.tar.xz"; }; then
  python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' \
    "$BUNDLE/payload.tar.xz" "$WORK" ||
    { say "gpu_check: cannot unpack $BUNDLE/payload.tar.xz"; exit 1; }
fi
B=$WORK/bin
# Every file listed in the manifest is there, with its checksum.
check_sums=$(grep -E '^[0-9a-f]{64}  (bin|lib)/' "$BUNDLE/MANIFEST.txt" | (cd "$WORK" && sha256sum -c --quiet 2>&1))
if [[ $? != 0 || -n $check_sums ]]; then
  say "gpu_check: the bundle does not match its MANIFEST: $check_sums"
  bundle_ok=0
fi
for t in s2h test_ops_device test_cuda_runtime test_cuda_probe bench_train_step bench_gemm_peak kernel_bench \
         test_fused_ops; do
  [[ -x $B/$t ]] || { say "MISSING binary: bin/$t"; bundle_ok=0; }
done
built_from=$(sed -n 's/^source_checksum: //p' "$BUNDLE/MANIFEST.txt")
now_sum=$(source_checksum)
if [[ $built_from != "$now_sum" ]]; then
  say "WARNING: the bundle was built from other sources (checksum $built_from, this tree $now_sum): rebuild it"
  say "         with bash benchmarks/make_gpu_bundle.sh if the code changed since"
fi
gzip -t "$BUNDLE/cifar-10-jpeg.tar.gz" || { say "gpu_check: $BUNDLE/cifar-10-jpeg.tar.gz is damaged"; bundle_ok=0; }
if [[ $bundle_ok == 0 ]]; then
  say "gpu_check: the bundle is incomplete or damaged; remake it with bash benchmarks/make_gpu_bundle.sh"
  exit 1
fi
n_bin=$(grep -c '^[0-9a-f]\{64\}  bin/' "$BUNDLE/MANIFEST.txt")
n_lib=$(grep -c '^[0-9a-f]\{64\}  lib/' "$BUNDLE/MANIFEST.txt")
say "   $(sed -n 's/^date: /bundle made /p' "$BUNDLE/MANIFEST.txt"), $n_bin binaries, $n_lib libraries"

# ------------------------------------------------------------------ libraries
# cuBLAS / cuDNN: from the pip packages (nvidia-cublas, nvidia-cudnn-cu13)
# beside PyTorch, else the CUDA toolkit. The bundle's own libraries are used
# as built against, except the compiler's runtime and zlib, where the
# system's (newer, backward compatible) win when it has them; LD_LIBRARY_PATH
# is set for our binaries only (and compute-sanitizer running them), never
# for python.
PY=$(command -v python3 || echo /usr/bin/python3)
NV_DIRS=$("$PY" - <<'EOF' 2>/dev/null
import glob, os, site
roots = list(site.getsitepackages()) + [site.getusersitepackages()]
try:
    import nvidia
    roots += [os.path.dirname(p) for p in nvidia.__path__]
except Exception:
    pass
dirs = []
for r in dict.fromkeys(roots):
    for d in sorted(glob.glob(os.path.join(r, "nvidia", "*", "lib"))):
        if any(glob.glob(os.path.join(d, n)) for n in ("libcublas.so.*", "libcublasLt.so.*", "libcudnn.so.*")):
            dirs.append(d)
print(":".join(dict.fromkeys(dirs)))
EOF
)
CUDA_DIRS=""
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib /usr/local/cuda/lib; do
  [[ -d $d ]] && CUDA_DIRS=${CUDA_DIRS:+$CUDA_DIRS:}$d
done
mkdir -p "$WORK/libextra"
SYS_LIBS=$(ldconfig -p 2>/dev/null || /sbin/ldconfig -p 2>/dev/null)
for f in "$WORK"/lib/*; do
  [[ -e $f ]] || continue
  soname=$(basename "$f")
  case $soname in
    libstdc++.so.*|libgcc_s.so.*|libgomp.so.*|libatomic.so.*|libquadmath.so.*|libgfortran.so.*|libz.so.*)
      grep -qF $'\t'"$soname (" <<<"$SYS_LIBS" && continue ;;
  esac
  ln -s "$f" "$WORK/libextra/$soname"
done
LIBPATH=$WORK/libextra${NV_DIRS:+:$NV_DIRS}${CUDA_DIRS:+:$CUDA_DIRS}
say "   LD_LIBRARY_PATH for s2h binaries: $LIBPATH"
say "   bundle libraries used: $(ls "$WORK/libextra" | tr '\n' ' ')"
run_bin() { LD_LIBRARY_PATH=$LIBPATH "$@"; }

# ------------------------------------------------------------------ stages
declare -A STATUS=() SECS=() NOTE=()
wanted() {
  [[ -n $ONLY && ,$ONLY, != *,$1,* ]] && return 1
  [[ -n $SKIP && ,$SKIP, == *,$1,* ]] && return 1
  return 0
}
# stage NAME MAX_SECONDS FUNCTION: runs FUNCTION in a child bash under
# `timeout` (which signals the whole process group), its output into the log;
# records PASS / FAIL(exit code) / TIMEOUT. In a dry run the function runs
# here with DRY_RUN=1: commands are printed (X), checks that need no GPU run.
stage() {
  local name=$1 max=$2 fn=$3
  if ! wanted "$name"; then STATUS[$name]=SKIP; NOTE[$name]="not selected"; return; fi
  local left=$((BUDGET - $(elapsed) - 15))
  if ((left < 20)); then
    STATUS[$name]=SKIP; NOTE[$name]="no time left in the ${BUDGET}s budget"; say "== $name: skipped (budget)"; return
  fi
  local limit=$((max < left ? max : left)) t0 rc
  say ""
  say "== stage $name (timeout ${limit}s, at $(elapsed)s)"
  t0=$(date +%s)
  export STAGE_LIMIT=$limit  # for inner timeouts that leave the stage time to write its results
  if [[ $DRY == 1 ]]; then
    DRY_RUN=1 "$fn" 2>&1 | tee -a "$LOG"
    rc=${PIPESTATUS[0]}
  else
    timeout -k 10 "$limit" bash -c "$fn" 2>&1 | tee -a "$LOG"
    rc=${PIPESTATUS[0]}
  fi
  SECS[$name]=$(($(date +%s) - t0))
  if ((rc == 0)); then STATUS[$name]=$([[ $DRY == 1 ]] && echo DRY-OK || echo PASS)
  elif ((rc == 124 || rc == 137)); then STATUS[$name]=TIMEOUT
  else STATUS[$name]="FAIL($rc)"
  fi
  say "== $name: ${STATUS[$name]} in ${SECS[$name]}s"
}
# Runs a command, or in a dry run prints it.
X() {
  if [[ ${DRY_RUN:-0} == 1 ]]; then printf '   would run:'; printf ' %q' "$@"; echo; return 0; fi
  "$@"
}

st_env() {
  local bad=0 t
  if ! X nvidia-smi; then
    echo "FAIL: nvidia-smi sees no GPU (a GPU check without a GPU is a failure, not a skip)"
    bad=1
  fi
  X nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,power.limit --format=csv
  # The driver must support the CUDA runtime the bundle was built with.
  local need have
  need=$(sed -n 's/^cuda_runtime: //p' "$BUNDLE/MANIFEST.txt")
  if [[ ${DRY_RUN:-0} == 1 ]]; then
    echo "   would check: the driver's CUDA version (nvidia-smi) >= ${need:-?} (the bundle's CUDA runtime)"
  else
    have=$(nvidia-smi 2>/dev/null | sed -n 's/.*CUDA Version: *\([0-9][0-9.]*\).*/\1/p' | head -1)
    if [[ -z $need ]]; then
      echo "   WARNING: the bundle's MANIFEST has no cuda_runtime line (an older bundle): version not checked"
    elif [[ -z $have ]]; then
      echo "FAIL: the driver's CUDA version is unknown (nvidia-smi printed none); the bundle needs CUDA $need"
      bad=1
    elif [[ $(printf '%s\n%s\n' "$need" "$have" | sort -V | head -1) != "$need" ]]; then
      echo "FAIL: the driver supports CUDA $have, older than the bundle's CUDA runtime $need"
      bad=1
    else
      echo "   driver CUDA $have >= bundle runtime $need"
    fi
  fi
  X "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn',
    torch.backends.cudnn.version(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'NO GPU')"
  for t in "$B"/*; do
    local out
    out=$(LD_LIBRARY_PATH=$LIBPATH ldd -r "$t" 2>&1)
    if grep -q "not found\|undefined symbol" <<<"$out"; then
      echo "   $(basename "$t"): UNRESOLVED"
      grep "not found\|undefined symbol" <<<"$out" | sort -u | head -20 | sed 's/^/     /'
      bad=1
    else
      local libs
      libs=$(grep -o 'lib\(cublas\|cublasLt\|cudnn\|cudart\)\.so[.0-9]* => [^ ]*' <<<"$out" | sed 's/ => /=/' | tr '\n' ' ')
      echo "   $(basename "$t"): libraries resolve ($libs)"
    fi
  done
  # One kernel must actually run: test_cuda_probe skips (passes) without a usable device, so a skip fails here.
  local probe
  if [[ ${DRY_RUN:-0} == 1 ]]; then
    X run_bin "$B/test_cuda_probe" --gtest_color=no
  else
    probe=$(run_bin "$B/test_cuda_probe" --gtest_color=no 2>&1)
    echo "$probe"
    if grep -q "SKIPPED\|FAILED" <<<"$probe" || ! grep -q "PASSED" <<<"$probe"; then
      echo "FAIL: no kernel ran on the GPU (test_cuda_probe skipped or failed)"
      bad=1
    fi
  fi
  return $bad
}
st_probe() { X run_bin "$B/test_cuda_probe" --gtest_color=no; }
st_runtime() { X run_bin "$B/test_cuda_runtime" --gtest_color=no; }
st_ops() { X run_bin "$B/test_ops_device" --gtest_color=no "--gtest_filter=*/cuda_fp32:*/cuda_bf16"; }
st_opstf32() { X run_bin "$B/test_ops_device" --gtest_color=no "--gtest_filter=*/cuda_tf32"; }
# Ops whose CUDA path runs hand-written kernels, and those that call cuBLAS / cuDNN.
MEMCHECK_OWN="Add Sub Mul Div ScalarOps MathFunctions Activations StridedInputs Sum Mean SumTo Argmax ShapeOps
Concat IndexSelect DtypeCast MaxPool2d AvgPool2d AdaptiveAvgPool2d BatchNormTrain BatchNormEval BatchNormModule
LayerNorm Softmax LogSoftmax CrossEntropy KlDiv Dropout SGD AdamW"
MEMCHECK_LIB="Matmul Bmm Linear Conv2d PrecisionPolicy"
# The quick memcheck: one op per hand-written kernel family, bf16 (the fp32 kernels are the same templates).
MEMCHECK_QUICK="Add Activations Sum Argmax Concat IndexSelect MaxPool2d AvgPool2d AdaptiveAvgPool2d BatchNormTrain
LayerNorm CrossEntropy KlDiv Dropout SGD AdamW"
gtest_filter_of() {  # "names" "cases" -> Backends/OpsDevice.NAME/CASE:...
  local f="" n c
  for n in $1; do for c in $2; do f+="${f:+:}Backends/OpsDevice.$n/$c"; done; done
  echo "$f"
}
sanitizer() { command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer; }
# memcheck BINARY FILTER SECONDS: compute-sanitizer memcheck (exit 99 on memory errors).
memcheck() {
  X run_bin timeout "$3" "$(sanitizer)" --tool memcheck --error-exitcode 99 --print-limit 20 \
    "$B/$1" --gtest_color=no "--gtest_filter=$2"
}
# The sanitizers slow the GPU work (the library path of each fused check runs cuDNN too), so the quick
# memcheck takes a subset that still reaches every hand-written kernel: the ops above in bf16, and the fused
# tests that run forward, dgrad and wgrad with scales on an odd stride-2 shape, a bf16 weight, the dual
# kernel's vector loaders, attention forward and backward with a head scale and a skipped head.
FMEMCHECK_QUICK=${S2H_FMEMCHECK_QUICK:-"FusedOpsCuda.MaskedConvOnlySomeGradients:FusedOpsCuda.MaskedConvSoftOutScaleOnlyBf16Weight:FusedOpsCuda.SkippedHeadIsExactlyZero:FusedOpsCuda.FallbacksMatchTheLibraryPath:FusedOpsCuda.Racecheck*"}
RACECHECK_FILTER=${S2H_RACECHECK_FILTER:-"FusedOpsCuda.Racecheck*:FusedOpsCuda.MaskedConvOnlySomeGradients:FusedOpsCuda.SkippedHeadIsExactlyZero"}
# memcheck_two WHAT1 BINARY1 FILTER1 PERCENT WHAT2 BINARY2 FILTER2: two memcheck runs sharing the stage,
# the first with PERCENT of it.
memcheck_two() {
  local t1=$((STAGE_LIMIT * $4 / 100)) t2=$((STAGE_LIMIT * (100 - $4) / 100 - 5)) rc1 rc2
  echo "-- memcheck 1/2: $1 (timeout ${t1}s)"
  memcheck "$2" "$3" "$t1"
  rc1=$?
  echo "-- memcheck 2/2: $5 (timeout ${t2}s)"
  memcheck "$6" "$7" "$t2"
  rc2=$?
  echo "-- memcheck exit codes: $rc1, $rc2 (99: memory errors, 1: test failures, 124: timeout)"
  ((rc1 == 0 && rc2 == 0))
}
st_memcheck() {
  memcheck_two "ops with hand-written kernels, cuda_bf16" test_ops_device \
    "$(gtest_filter_of "$MEMCHECK_QUICK" cuda_bf16)" 40 "fused kernels, quick subset" test_fused_ops "$FMEMCHECK_QUICK"
}
# The rest of memcheck (extra): every op in cuda_fp32 and cuda_bf16 (hand-written and cuBLAS / cuDNN), then
# the other fused tests.
st_memlib() {
  memcheck_two "every op, cuda_fp32 and cuda_bf16" test_ops_device \
    "$(gtest_filter_of "$MEMCHECK_OWN $MEMCHECK_LIB" "cuda_fp32 cuda_bf16")" 45 "the other fused tests" \
    test_fused_ops "FusedOpsCuda.*-$FMEMCHECK_QUICK"
}
st_fracecheck() {
  local rc
  echo "-- fused racecheck (shared-memory hazards): $RACECHECK_FILTER"
  X run_bin timeout $((STAGE_LIMIT - 5)) "$(sanitizer)" --tool racecheck --error-exitcode 99 --print-limit 20 \
    "$B/test_fused_ops" --gtest_color=no "--gtest_filter=$RACECHECK_FILTER"
  rc=$?
  echo "-- fused racecheck exit code: $rc (99: hazards, 1: test failures, 124: timeout)"
  return $rc
}
st_gemm() {
  local rc
  X run_bin "$B/bench_gemm_peak" --size 8192 --repeats 30 --warmup 5 --precisions bf16,tf32 \
    > "$OUTDIR/results/gpu_gemm_peak.log"
  rc=$?
  cat "$OUTDIR/results/gpu_gemm_peak.log"
  return $rc
}
st_resnet50() {
  # One round of the two processes (s2h, then PyTorch), each with half the stage (minus the writing).
  local per=$(((STAGE_LIMIT - 6) / 2)) peak=()
  [[ -s $OUTDIR/results/gpu_gemm_peak.log ]] && peak=(--gemm-peak "$OUTDIR/results/gpu_gemm_peak.log")
  X "$PY" "$REPO/benchmarks/compare_train_step.py" --device cuda --precision bf16 --model resnet50 --batch 256 \
    --image-size 64 --in-channels 3 --classes 200 --rounds 1 --steps 10 --warmup 3 --threads 16 \
    --bin "$B/bench_train_step" --ld-library-path "$LIBPATH" "${peak[@]}" \
    --results-dir "$OUTDIR/results" --timeout "$per"
}
st_train() {
  X mkdir -p "$WORK/data"
  X tar -C "$WORK/data" -xzf "$BUNDLE/cifar-10-jpeg.tar.gz"
  local flags=(train --device cuda --model resnet56 --data cifar10-jpeg --data-root "$WORK/data/cifar-10-jpeg"
               --epochs 2 --lr 0.1 --batch-size 128 --workers 8 --threads 8 --seed 0 --quiet --out "$WORK/run-resnet56"
               --precision bf16)
  local t0 rc
  t0=$(date +%s)
  # An inner timeout leaves time to summarise what the run wrote, also when it is cut short.
  X run_bin timeout $((STAGE_LIMIT - 15)) "$B/s2h" "${flags[@]}"
  rc=$?
  [[ ${DRY_RUN:-0} == 1 ]] && return 0
  local secs=$(($(date +%s) - t0))
  cp "$WORK/run-resnet56/config.json" "$WORK/run-resnet56/metrics.jsonl" "$OUTDIR/run/" 2>/dev/null
  "$PY" "$REPO/benchmarks/gpu_results.py" train-result "$WORK/run-resnet56/metrics.jsonl" \
    "$OUTDIR/results/gpu_train_resnet56_cifar10_bf16.json" "$secs" "$rc"
  return $rc
}
st_fused() { X run_bin "$B/test_fused_ops" --gtest_color=no "--gtest_filter=FusedOpsCuda.*"; }
st_torchattn() {
  export PYTHONUNBUFFERED=1
  [[ ${DRY_RUN:-0} == 1 ]] || rm -f "$OUTDIR/results/torch_attention.json"
  X "$PY" "$REPO/benchmarks/torch_attention.py" --require-gpu --json "$OUTDIR/results/torch_attention.json"
}
# kernel_bench in four processes (each measures the peak first), so that a
# crash or a timeout in one section costs only that section; each writes its
# JSON after every row. The quick rows: two 3x3 layers (one strided) and two
# 1x1 layers of ResNet-50, hard and dual at 35% of the FLOPs, attention at
# sequence lengths 512 and 2048, 10 timed repetitions (the median) after 2
# warm-up calls. KBENCH_ALL=1 runs kernel_bench's full default plan instead.
# Then gpu_results.py turns the rows into the results files.
KBENCH_SHAPES="--shapes l1.3x3,l3.3x3s2,l1.1x1in,l3.1x1red"
st_kbench() {
  local rc=0 r sec share t args
  local -a plan=("peak,masked:masked:38:$KBENCH_SHAPES" "peak,hard:hard:27:$KBENCH_SHAPES --fractions 0.35"
                 "peak,dual:dual:15:$KBENCH_SHAPES --fractions 0.35" "peak,attention:attention:20:--seqs 512,2048")
  local -a files=()
  for entry in "${plan[@]}"; do
    IFS=: read -r sec name share args <<<"$entry"
    [[ ${KBENCH_ALL:-0} == 1 ]] && args=""
    t=$(((STAGE_LIMIT - 6) * share / 100))
    files+=("$OUTDIR/results/kernel_bench_$name.json")
    [[ ${DRY_RUN:-0} == 1 ]] || rm -f "$OUTDIR/results/kernel_bench_$name.json"  # never a stale one
    echo "-- kernel_bench --sections $sec $args (timeout ${t}s)"
    # shellcheck disable=SC2086
    X run_bin timeout "$t" "$B/kernel_bench" --require-gpu --sections "$sec" --reps 10 --warmup 2 $args \
      --json "$OUTDIR/results/kernel_bench_$name.json"
    r=$?
    echo "-- kernel_bench $sec: exit code $r (1: a verification failure or an error, 124: timeout)"
    ((r == 0)) || rc=$r
  done
  if ! X "$PY" "$REPO/benchmarks/gpu_results.py" kernel-results "$OUTDIR/results" "${files[@]}" \
    --torch "$OUTDIR/results/torch_attention.json"; then
    ((rc != 0)) || rc=1
  fi
  return $rc
}
# The S2HPruner training step (soft + hard pass, one optimiser step) with the
# fused kernels and with library kernels only; one run each, half the stage each.
st_s2hstep() {
  local per=$(((STAGE_LIMIT - 6) / 2)) k r rc=0
  for k in fused library; do
    echo "-- bench_train_step --s2h --kernels $k (timeout ${per}s)"
    X run_bin timeout "$per" "$B/bench_train_step" --model resnet50 --device cuda --precision bf16 --batch 256 \
      --image-size 64 --in-channels 3 --classes 200 --steps 8 --warmup 2 --threads 16 --s2h --kernels "$k" \
      > "$OUTDIR/results/s2h_step_resnet50_$k.log"
    r=$?
    cat "$OUTDIR/results/s2h_step_resnet50_$k.log"
    echo "-- --kernels $k: exit code $r (124: timeout)"
    ((r == 0)) || rc=1
  done
  X "$PY" "$REPO/benchmarks/gpu_results.py" step-result "$OUTDIR/results/s2h_step_resnet50_fused.log" \
    "$OUTDIR/results/s2h_step_resnet50_library.log" "$OUTDIR/results/s2h_step_resnet50.json" || rc=1
  return $rc
}

export B LIBPATH WORK OUTDIR REPO PY LOG BUNDLE DRY MEMCHECK_OWN MEMCHECK_LIB MEMCHECK_QUICK FMEMCHECK_QUICK \
  RACECHECK_FILTER KBENCH_SHAPES
export -f X run_bin st_env st_probe st_runtime st_ops st_opstf32 gtest_filter_of sanitizer memcheck memcheck_two st_memcheck \
  st_memlib st_fracecheck st_gemm st_resnet50 st_train st_fused st_torchattn st_kbench st_s2hstep

# The stages and their limits (seconds). quick: 400 s in all, inside the 405 s budget of a 7-minute call.
# extra: 570 s of a 580 s budget (one call under the device's 10-minute limit).
STAGES=(
  "env 15 st_env" "ops 35 st_ops" "fused 70 st_fused" "memcheck 55 st_memcheck" "torchattn 25 st_torchattn"
  "resnet50 60 st_resnet50" "s2hstep 50 st_s2hstep" "kbench 90 st_kbench"
  "probe 20 st_probe" "runtime 40 st_runtime" "opstf32 45 st_opstf32" "memlib 150 st_memlib"
  "fracecheck 80 st_fracecheck" "gemm 40 st_gemm" "train 180 st_train"
)
planned=0
ORDER=()  # every stage's name, in the order they run (the summary's rows)
for entry in "${STAGES[@]}"; do
  read -r name max _ <<<"$entry"
  ORDER+=("$name")
  wanted "$name" && planned=$((planned + max))
done
say "   planned: stage limits add up to ${planned}s of the ${BUDGET}s budget (suite $SUITE)"
if [[ $SUITE == quick && -z $ONLY_GIVEN ]] && ((planned > BUDGET || BUDGET > 420)); then
  say "gpu_check: the quick suite must fit one 7-minute call (its stages plan ${planned}s, budget ${BUDGET}s)"
  exit 2
fi
for entry in "${STAGES[@]}"; do
  # shellcheck disable=SC2086
  stage $entry
done

# ------------------------------------------------------------------ summary
stage_log() {  # one stage's part of the log
  awk -v s="== stage $1 " 'index($0, s) == 1 {on = 1; next} /^== stage / {on = 0} on' "$LOG"
}
gtest_counts() {  # "P passed, F failed, S skipped" from a stage's part of the log
  stage_log "$1" |
    awk '/^\[  PASSED  \]/ {p = $4} /^\[  SKIPPED \]/ && /tests?,/ {s = $4} /^\[  FAILED  \]/ && /tests?,/ {f = $4}
         END {printf "%d passed, %d failed, %d skipped", p, f, s}'
}
note_for() {
  case $1 in
    probe|runtime|ops|opstf32|fused) gtest_counts "$1" ;;
    memcheck|memlib|fracecheck)
      stage_log "$1" | grep -o 'ERROR SUMMARY: [0-9]* errors\?\|RACECHECK SUMMARY: [0-9]* hazards\? displayed[^)]*)' |
        tr '\n' ';' ;;
    kbench) "$PY" "$REPO/benchmarks/gpu_results.py" note kbench "$OUTDIR/results/kernel_bench_*.json" ;;
    torchattn) "$PY" "$REPO/benchmarks/gpu_results.py" note torchattn "$OUTDIR/results/torch_attention.json" ;;
    s2hstep) "$PY" "$REPO/benchmarks/gpu_results.py" note s2hstep "$OUTDIR/results/s2h_step_resnet50.json" ;;
    gemm) "$PY" "$REPO/benchmarks/gpu_results.py" note gemm "$OUTDIR/results/gpu_gemm_peak.log" ;;
    resnet50) "$PY" "$REPO/benchmarks/gpu_results.py" note resnet50 "$OUTDIR/results/gpu_train_step_resnet50_bf16.json" ;;
    train) "$PY" "$REPO/benchmarks/gpu_results.py" note train "$OUTDIR/results/gpu_train_resnet56_cifar10_bf16.json" ;;
  esac
}
{
  echo ""
  gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)
  echo "== summary ($(elapsed)s of ${BUDGET}s; device: ${gpu:-none})"
  printf '%-10s %-12s %6s  %s\n' stage status secs result
  for s in "${ORDER[@]}"; do
    wanted "$s" || continue
    n=${NOTE[$s]:-}
    [[ ${STATUS[$s]:-} == SKIP || $DRY == 1 ]] || n=$(note_for "$s")
    printf '%-10s %-12s %6s  %s\n' "$s" "${STATUS[$s]:-?}" "${SECS[$s]:--}" "$n"
  done
} | tee "$OUTDIR/summary.txt" | tee -a "$LOG"
fail=0
for s in "${ORDER[@]}"; do
  case ${STATUS[$s]:-} in PASS|SKIP|DRY-OK) ;; *) fail=1 ;; esac
done
# The device tool brings back at most 8 files: pack results/ and run/ when there are more.
if [[ -n ${OUT:-} && $DRY == 0 ]] && (($(find "$OUTDIR" -type f | wc -l) > 8)); then
  if tar -C "$OUTDIR" -czf "$OUTDIR/results.tar.gz" results run; then
    rm -rf "$OUTDIR/results" "$OUTDIR/run"
    say "results/ and run/ packed into results.tar.gz (tar -xzf results.tar.gz): $(tar -tzf "$OUTDIR/results.tar.gz" | grep -vc '/$') files"
  fi
fi
if [[ $DRY == 1 ]]; then
  ((fail == 0)) && echo "dry run: the bundle is complete and its libraries resolve here; the stages above would run." ||
    echo "dry run: problems above (the bundle or its libraries)."
fi
exit $fail
