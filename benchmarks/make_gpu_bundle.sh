#!/usr/bin/env bash
# Builds (here, on a machine without a GPU) everything benchmarks/gpu_check.sh
# runs on a GPU machine, and packs it into one folder that travels with the
# working tree: the binaries (sm_90: s2h, the CUDA tests test_cuda_probe,
# test_cuda_runtime, test_ops_device and test_fused_ops, the benchmarks
# bench_train_step, bench_gemm_peak and kernel_bench), the shared libraries
# they need that a bare Ubuntu + CUDA image may lack, and the CIFAR-10 JPEG
# tarball.
#
#   bash benchmarks/make_gpu_bundle.sh [--build DIR] [--out DIR] [--no-build] [--jobs N]
#                                      [--data FILE] [--max-mib 60]
#
#   --build DIR   CMake build folder (default build-gpu); configured here with
#                 CMAKE_CUDA_ARCHITECTURES=90 if it does not exist yet. An
#                 existing folder must have been configured for sm_90.
#   --out DIR     the bundle (default build-gpu-bundle: ignored by git through
#                 /build*/ in .gitignore, so it travels only when carried)
#   --no-build    take the binaries already in --build
#   --jobs N      parallel build jobs (default 1)
#   --data FILE   CIFAR-10 JPEG tarball (default ../shared/data/cifar-10-jpeg.tar.gz)
#   --max-mib N   fail when the bundle is larger (default 60; a device call carries 64 MiB with the tree)
#
# Layout of the bundle:
#   payload.tar.xz          bin/ (stripped binaries) and lib/ (shared libraries)
#   cifar-10-jpeg.tar.gz    the dataset for the ResNet-56 run
#   MANIFEST.txt            what is inside, sha256 sums, the build's source checksum
#
# Not carried (too large; the GPU image has them): libcuda (the driver),
# cuBLAS / cuBLASLt and cuDNN, found on the GPU machine in the pip packages
# nvidia-cublas and nvidia-cudnn-cu13 (or the CUDA toolkit), and glibc.
# Then, on the GPU machine (one call of the device tool, carry ["build-gpu-bundle"]):
#   bash benchmarks/gpu_check.sh
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD=$REPO/build-gpu
OUTDIR=$REPO/build-gpu-bundle
DO_BUILD=1
JOBS=1
DATA=$REPO/../shared/data/cifar-10-jpeg.tar.gz
MAX_MIB=60
while [[ $# -gt 0 ]]; do
  case $1 in
    --build) BUILD=$(realpath -m "$2"); shift 2 ;;
    --out) OUTDIR=$(realpath -m "$2"); shift 2 ;;
    --no-build) DO_BUILD=0; shift ;;
    --jobs) JOBS=$2; shift 2 ;;
    --data) DATA=$2; shift 2 ;;
    --max-mib) MAX_MIB=$2; shift 2 ;;
    -h|--help) sed -n '2,32p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "make_gpu_bundle: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

die() { echo "make_gpu_bundle: $*" >&2; exit 1; }

# The targets and where CMake puts them.
declare -A BIN_PATH=(
  [s2h]=apps/s2h
  [test_ops_device]=tests/test_ops_device
  [test_cuda_runtime]=tests/test_cuda_runtime
  [test_cuda_probe]=tests/test_cuda_probe
  [bench_train_step]=benchmarks/bench_train_step
  [bench_gemm_peak]=benchmarks/bench_gemm_peak
  [kernel_bench]=apps/kernel_bench
  [test_fused_ops]=tests/test_fused_ops
)
TARGETS=(s2h test_ops_device test_cuda_runtime test_cuda_probe bench_train_step bench_gemm_peak kernel_bench
         test_fused_ops)

# ------------------------------------------------------------------ build
if [[ $DO_BUILD == 1 ]]; then
  if [[ ! -f $BUILD/CMakeCache.txt ]]; then
    echo "== configuring $BUILD (sm_90, benchmarks on)"
    cmake -S "$REPO" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90 -DS2H_BUILD_BENCHMARKS=ON \
      -DS2H_BUILD_TESTS=ON
  fi
fi
[[ -f $BUILD/CMakeCache.txt ]] || die "$BUILD is not a CMake build folder"
arch=$(sed -n 's/^CMAKE_CUDA_ARCHITECTURES:[A-Z]*=//p' "$BUILD/CMakeCache.txt")
[[ -n $arch ]] || die "$BUILD was configured without CUDA (no CMAKE_CUDA_ARCHITECTURES): the GPU needs a CUDA build"
[[ ,$arch, == *,90,* || ,$arch, == *,90a,* || ,$arch, == *,90-real,* ]] ||
  die "$BUILD targets CUDA architectures '$arch', not 90 (H100/H200): configure with -DCMAKE_CUDA_ARCHITECTURES=90"
grep -q '^S2H_BUILD_BENCHMARKS:BOOL=ON' "$BUILD/CMakeCache.txt" ||
  die "$BUILD has S2H_BUILD_BENCHMARKS=OFF: reconfigure with -DS2H_BUILD_BENCHMARKS=ON"
if [[ $DO_BUILD == 1 ]]; then
  echo "== building ${TARGETS[*]} in $BUILD (-j$JOBS)"
  cmake --build "$BUILD" -j"$JOBS" --target "${TARGETS[@]}"
fi
for t in "${TARGETS[@]}"; do
  [[ -x $BUILD/${BIN_PATH[$t]} ]] || die "missing $BUILD/${BIN_PATH[$t]} (build target $t, or drop --no-build)"
done
[[ -f $DATA ]] || die "no CIFAR-10 tarball at $DATA (--data FILE)"

# ------------------------------------------------------------------ stage
STAGE=$(mktemp -d "${TMPDIR:-/tmp}/s2h-bundle.XXXXXX")
trap 'rm -rf "$STAGE"' EXIT
mkdir -p "$STAGE/bin" "$STAGE/lib"
for t in "${TARGETS[@]}"; do
  strip --strip-unneeded -o "$STAGE/bin/$t" "$BUILD/${BIN_PATH[$t]}"
done

# Shared libraries: everything ldd resolves except glibc, the driver, and the
# large CUDA libraries the GPU image brings (cuBLAS(Lt), cuDNN).
skip_lib() {
  case $1 in
    linux-vdso*|ld-linux*|libc.so*|libm.so*|libdl.so*|libpthread.so*|librt.so*|libresolv.so*|libutil.so*) return 0 ;;
    libcuda.so*|libnvidia-*|libcublas.so*|libcublasLt.so*|libcudnn*) return 0 ;;
  esac
  return 1
}
declare -A SEEN=()
missing=()
for t in "${TARGETS[@]}"; do
  while read -r line; do
    # "libfoo.so.1 => /path/libfoo.so.1 (0x...)" or "libfoo.so.1 => not found"
    name=${line%% *}
    [[ $line == *"=>"* ]] || continue
    path=$(sed -n 's/.*=> \([^ ]*\) (.*/\1/p' <<<"$line")
    if [[ $line == *"not found"* ]]; then
      skip_lib "$name" || missing+=("$t: $name")
      continue
    fi
    skip_lib "$name" && continue
    [[ -n ${SEEN[$name]:-} ]] && continue
    SEEN[$name]=$path
    cp -L "$path" "$STAGE/lib/$name"
    strip --strip-unneeded "$STAGE/lib/$name" 2>/dev/null || true
  done < <(ldd "$BUILD/${BIN_PATH[$t]}")
done
((${#missing[@]} == 0)) || die "libraries not found here: ${missing[*]}"

# ------------------------------------------------------------------ pack
rm -rf "$OUTDIR"
mkdir -p "$OUTDIR"
echo "== packing $(du -sh "$STAGE" | cut -f1) of binaries and libraries (xz)"
# A 128 MiB dictionary spans all binaries, which share most of their code (a third smaller than xz -6).
tar -C "$STAGE" -cf - bin lib | xz -T1 --lzma2=preset=6,dict=128MiB > "$OUTDIR/payload.tar.xz"
cp "$DATA" "$OUTDIR/cifar-10-jpeg.tar.gz"

# The sources the build was made from (checked by gpu_check.sh against the tree it runs in).
source_sum=$(bash "$REPO/benchmarks/gpu_check.sh" --source-checksum)
{
  echo "# s2h GPU bundle, made by benchmarks/make_gpu_bundle.sh"
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "host: $(uname -srm), $(. /etc/os-release && echo "$PRETTY_NAME"), $(ldd --version | head -1)"
  echo "build: $BUILD"
  echo "cuda_architectures: $arch"
  nvcc=$(sed -n 's/^CMAKE_CUDA_COMPILER:[A-Z]*=//p' "$BUILD/CMakeCache.txt")
  echo "nvcc: $nvcc"
  # The CUDA runtime the binaries need: gpu_check.sh fails on a driver that supports less.
  echo "cuda_runtime: $("$nvcc" --version | sed -n 's/.*release \([0-9][0-9.]*\),.*/\1/p')"
  echo "source_checksum: $source_sum"
  echo "# linked against (not carried): $(ldd "$BUILD/apps/s2h" | awk '/cublas|cudnn/ {print $1}' | sort -u | tr '\n' ' ')"
  echo "# files (sha256, path inside the payload or the bundle)"
  (cd "$STAGE" && find bin lib -type f | sort | xargs sha256sum)
  (cd "$OUTDIR" && sha256sum cifar-10-jpeg.tar.gz payload.tar.xz)
} > "$OUTDIR/MANIFEST.txt"

bytes=$(du -sb "$OUTDIR" | cut -f1)
mib=$((bytes / 1048576))
echo "== bundle $OUTDIR: $mib MiB ($bytes bytes)"
ls -la "$OUTDIR"
echo "   binaries: ${TARGETS[*]}"
echo "   libraries: $(ls "$STAGE/lib" | tr '\n' ' ')"
if ((bytes > MAX_MIB * 1048576)); then
  die "the bundle is $mib MiB, over the $MAX_MIB MiB limit (a device call carries 64 MiB with the working tree)"
fi
echo "== check it here: bash benchmarks/gpu_check.sh --dry-run"
echo "== run it there (device tool): command 'bash benchmarks/gpu_check.sh', carry [\"$(realpath --relative-to="$REPO" "$OUTDIR")\"]"
