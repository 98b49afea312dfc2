#!/usr/bin/env bash
# The whole GPU check in one call on a GPU machine (H100/H200, sm_90), from a
# bundle made elsewhere by benchmarks/make_gpu_bundle.sh:
#
#   env       nvidia-smi, the device, library resolution of every binary (ldd -r)
#   probe     tests: test_cuda_probe
#   runtime   tests: test_cuda_runtime
#   ops       tests: test_ops_device (every op, cpu_fp32 / cuda_fp32 / cuda_tf32 / cuda_bf16)
#   memcheck  compute-sanitizer --tool memcheck on a subset of the op tests (cuda_fp32, cuda_bf16)
#   gemm      bench_gemm_peak: cuBLAS bf16 GEMM 8192^3 (the ceiling for achieved TFLOP/s)
#   resnet50  ResNet-50 training step, 64x64, batch 256, 200 classes, bf16: s2h vs PyTorch eager
#             (benchmarks/compare_train_step.py; channels_last, cuDNN, bf16 autocast)
#   train     s2h train --device cuda --precision bf16 --model resnet56 --data cifar10-jpeg, 2 epochs
#
# Every stage runs even when an earlier one failed, under its own timeout and
# a total time budget, and the summary table is printed last. Results go to
# $OUT (the device tool's folder; ./build-gpu-check elsewhere), at most 8
# files, as the device tool brings back:
#   summary.txt, gpu_check.log (everything),
#   results/gpu_train_step_resnet50_bf16.{json,log}, results/gpu_gemm_peak.log,
#   results/gpu_train_resnet56_cifar10_bf16.json, run/{config.json,metrics.jsonl}
# (copy results/ into benchmarks/results/ and run/ into benchmarks/results/runs/<name>/).
#
#   bash benchmarks/gpu_check.sh [--bundle DIR] [--budget SECONDS] [--only a,b] [--skip a,b] [--dry-run]
#
#   --bundle DIR  default build-gpu-bundle
#   --budget S    total seconds for all stages (default 530: a device call allows 600)
#   --only/--skip stage names, comma-separated
#   --dry-run     here, without a GPU: check that the bundle is complete and
#                 its libraries resolve, then print what would run
#
# The device tool's call: command "bash benchmarks/gpu_check.sh", carry ["build-gpu-bundle"].
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
BUDGET=530
DRY=0
ONLY=""
SKIP=""
while [[ $# -gt 0 ]]; do
  case $1 in
    --bundle) BUNDLE=$(realpath -m "$2"); shift 2 ;;
    --budget) BUDGET=$2; shift 2 ;;
    --only) ONLY=$2; shift 2 ;;
    --skip) SKIP=$2; shift 2 ;;
    --dry-run) DRY=1; shift ;;
    -h|--help) sed -n '2,35p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "gpu_check: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

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
for t in s2h test_ops_device test_cuda_runtime test_cuda_probe bench_train_step bench_gemm_peak; do
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
ORDER=(env probe runtime ops memcheck gemm resnet50 train)
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
  X nvidia-smi || bad=1
  X nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,power.limit --format=csv
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
  return $bad
}
st_probe() { X run_bin "$B/test_cuda_probe" --gtest_color=no; }
st_runtime() { X run_bin "$B/test_cuda_runtime" --gtest_color=no; }
st_ops() { X run_bin "$B/test_ops_device" --gtest_color=no; }
# memcheck in two runs, so that slow instrumentation of the big cuBLAS/cuDNN
# modules cannot cost the result of the hand-written kernels: (1) every op
# with hand-written kernels, (2) the GEMM / convolution ops. cuda_fp32 and
# cuda_bf16 cover every kernel (cuda_tf32 runs the fp32 ones again).
MEMCHECK_OWN="Add Sub Mul Div ScalarOps MathFunctions Activations StridedInputs Sum Mean SumTo Argmax ShapeOps
Concat IndexSelect DtypeCast MaxPool2d AvgPool2d AdaptiveAvgPool2d BatchNormTrain BatchNormEval BatchNormModule
LayerNorm Softmax LogSoftmax CrossEntropy KlDiv Dropout SGD AdamW"
MEMCHECK_LIB="Matmul Bmm Linear Conv2d PrecisionPolicy"
gtest_filter_of() {  # names -> Backends/OpsDevice.NAME/cuda_fp32:...cuda_bf16
  local f="" n c
  for n in $1; do for c in cuda_fp32 cuda_bf16; do f+="${f:+:}Backends/OpsDevice.$n/$c"; done; done
  echo "$f"
}
st_memcheck() {
  local cs rc1 rc2
  cs=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
  local t1=$((STAGE_LIMIT * 55 / 100)) t2=$((STAGE_LIMIT * 45 / 100 - 5))
  echo "-- memcheck 1/2: ops with hand-written kernels (timeout ${t1}s)"
  X run_bin timeout "$t1" "$cs" --tool memcheck --error-exitcode 99 --print-limit 20 \
    "$B/test_ops_device" --gtest_color=no "--gtest_filter=$(gtest_filter_of "$MEMCHECK_OWN")"
  rc1=$?
  echo "-- memcheck 2/2: GEMM and convolution ops (cuBLAS, cuDNN) (timeout ${t2}s)"
  X run_bin timeout "$t2" "$cs" --tool memcheck --error-exitcode 99 --print-limit 20 \
    "$B/test_ops_device" --gtest_color=no "--gtest_filter=$(gtest_filter_of "$MEMCHECK_LIB")"
  rc2=$?
  echo "-- memcheck exit codes: $rc1 (own kernels), $rc2 (libraries)"
  echo "   (99: memory errors, 1: test failures, 124: timeout)"
  ((rc1 == 0 && rc2 == 0))
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
  # 2 rounds of 2 processes; each gets a quarter of the stage, so that the results are always written.
  local per=$(((STAGE_LIMIT - 10) / 4))
  X "$PY" "$REPO/benchmarks/compare_train_step.py" --device cuda --precision bf16 --model resnet50 --batch 256 \
    --image-size 64 --in-channels 3 --classes 200 --rounds 2 --steps 15 --warmup 5 --threads 16 \
    --bin "$B/bench_train_step" --ld-library-path "$LIBPATH" --gemm-peak "$OUTDIR/results/gpu_gemm_peak.log" \
    --results-dir "$OUTDIR/results" --timeout "$per"
}
st_train() {
  X mkdir -p "$WORK/data"
  X tar -C "$WORK/data" -xzf "$BUNDLE/cifar-10-jpeg.tar.gz"
  local flags=(train --device cuda --model resnet56 --data cifar10-jpeg --data-root "$WORK/data/cifar-10-jpeg"
               --epochs 2 --lr 0.1 --batch-size 128 --workers 8 --threads 8 --seed 0 --quiet --out "$WORK/run-resnet56")
  # --precision arrives with the CUDA backend; without it the run is fp32 (and says so).
  if [[ ${DRY_RUN:-0} == 1 ]] || run_bin "$B/s2h" train --help 2>/dev/null | grep -q -- '--precision'; then
    flags+=(--precision bf16)
  else
    echo "   NOTE: this s2h has no --precision flag: the run uses its default precision"
  fi
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

export B LIBPATH WORK OUTDIR REPO PY LOG BUNDLE DRY MEMCHECK_OWN MEMCHECK_LIB
export -f X run_bin st_env st_probe st_runtime st_ops gtest_filter_of st_memcheck st_gemm st_resnet50 st_train

stage env 45 st_env
stage probe 30 st_probe
stage runtime 60 st_runtime
stage ops 120 st_ops
stage memcheck 210 st_memcheck
stage gemm 45 st_gemm
stage resnet50 160 st_resnet50
stage train 200 st_train

# ------------------------------------------------------------------ summary
gtest_counts() {  # "P passed, F failed, S skipped" from a stage's part of the log
  awk -v s="== stage $1 " 'index($0, s) == 1 {on = 1; next} /^== stage / {on = 0} on' "$LOG" |
    awk '/^\[  PASSED  \]/ {p = $4} /^\[  SKIPPED \]/ && /tests?,/ {s = $4} /^\[  FAILED  \]/ && /tests?,/ {f = $4}
         END {printf "%d passed, %d failed, %d skipped", p, f, s}'
}
note_for() {
  case $1 in
    probe|runtime|ops) gtest_counts "$1" ;;
    memcheck) grep -o 'ERROR SUMMARY: [0-9]* errors\?' "$LOG" | tr '\n' ';' ;;
    gemm) "$PY" "$REPO/benchmarks/gpu_results.py" note gemm "$OUTDIR/results/gpu_gemm_peak.log" ;;
    resnet50) "$PY" "$REPO/benchmarks/gpu_results.py" note resnet50 "$OUTDIR/results/gpu_train_step_resnet50_bf16.json" ;;
    train) "$PY" "$REPO/benchmarks/gpu_results.py" note train "$OUTDIR/results/gpu_train_resnet56_cifar10_bf16.json" ;;
  esac
}
{
  echo ""
  gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)
  echo "== summary ($(elapsed)s of ${BUDGET}s; device: ${gpu:-none})"
  printf '%-9s %-12s %6s  %s\n' stage status secs result
  for s in "${ORDER[@]}"; do
    n=${NOTE[$s]:-}
    [[ ${STATUS[$s]:-} == SKIP || $DRY == 1 ]] || n=$(note_for "$s")
    printf '%-9s %-12s %6s  %s\n' "$s" "${STATUS[$s]:-?}" "${SECS[$s]:--}" "$n"
  done
} | tee "$OUTDIR/summary.txt" | tee -a "$LOG"
fail=0
for s in "${ORDER[@]}"; do
  case ${STATUS[$s]:-} in PASS|SKIP|DRY-OK) ;; *) fail=1 ;; esac
done
if [[ $DRY == 1 ]]; then
  ((fail == 0)) && echo "dry run: the bundle is complete and its libraries resolve here; the stages above would run." ||
    echo "dry run: problems above (the bundle or its libraries)."
fi
exit $fail
