#!/usr/bin/env bash
# run-on-gpu.sh RESULTS_DIR — runs LoraKernels' GPU checks from the GPU bundle (./build.sh gpu-bundle)
# on a Linux x86-64 machine with an NVIDIA GPU and driver; no .NET SDK is needed: the bundle's one
# self-contained program, LoraKernels.Tests, runs the tests and (first argument "benchmarks") the
# benchmarks.
#
#   1. if nvcc is on PATH, builds the AOT fatbins from the bundle's kernels/*.cu into kernels/
#      (same flags as the top-level CMakeLists.txt: sm_80/86/89/90 + compute_90 PTX), where the
#      library looks for them first;
#   2. runs the tests of category Cuda and the NVRTC compile checks (results: tests/*.trx and *.log),
#      once with the kernels as loaded by default (fatbin if built, else NVRTC) and, when fatbins
#      were built, once more with LORAKERNELS_FORCE_NVRTC=1 so both paths are checked;
#   3. runs the GPU benchmarks (BenchmarkDotNet; reports under benchmarks/);
#   4. writes everything to RESULTS_DIR and prints a summary (also RESULTS_DIR/summary.txt).
#
# Exit status: 0 when every step that ran passed, 1 otherwise. Native libraries the program needs on
# the machine: libcuda.so.1 (the driver), NVRTC (toolkit, nvidia-cuda-nvrtc pip package or distro;
# set LORAKERNELS_CUDA_LIB_DIR if elsewhere), cuBLAS for the benchmarks' baseline, libgomp.so.1
# (OpenMP, for the CPU kernels the tests compare against) and, optionally, libopenblas.so.0
# (the CPU benchmarks' baseline; without it those are skipped).
set -uo pipefail

if [ $# -ne 1 ]; then
    echo "usage: $0 RESULTS_DIR" >&2
    exit 2
fi
BUNDLE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
mkdir -p "$1" || exit 2
RESULTS=$(cd "$1" && pwd)
mkdir -p "$RESULTS/tests" "$RESULTS/benchmarks"
SUMMARY="$RESULTS/summary.txt"
: >"$SUMMARY"
status=0

say() { printf '==> %s\n' "$*"; }
note() { printf '%s\n' "$*" | tee -a "$SUMMARY"; }

cd "$BUNDLE"
say "environment (environment.txt)"
{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "host: $(uname -a)"
    echo "bundle: $BUNDLE"
    if command -v nvidia-smi >/dev/null; then
        nvidia-smi --query-gpu=name,driver_version,compute_cap,memory.total --format=csv 2>&1
    else
        echo "nvidia-smi: not found"
    fi
    if command -v nvcc >/dev/null; then nvcc --version | tail -n 2; else echo "nvcc: not found"; fi
    echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-) ($(nproc) cores)"
    for lib in libloraknl_cpu.so libloraknl_simt.so; do
        missing=$(ldd "$BUNDLE/$lib" 2>&1 | grep 'not found' || true)
        echo "$lib: ${missing:-all dependencies found}"
    done
} >"$RESULTS/environment.txt" 2>&1
cat "$RESULTS/environment.txt"

# ---- 1. AOT fatbins -------------------------------------------------------------------------
fatbins=0
if command -v nvcc >/dev/null; then
    say "1. nvcc: AOT fatbins into kernels/"
    fatbins=1
    for src in "$BUNDLE"/kernels/*.cu; do
        family=$(basename "$src" .cu)
        if nvcc -fatbin -O3 -std=c++17 -I"$BUNDLE/kernels" \
                -gencode arch=compute_80,code=sm_80 -gencode arch=compute_86,code=sm_86 \
                -gencode arch=compute_89,code=sm_89 -gencode arch=compute_90,code=sm_90 \
                -gencode arch=compute_90,code=compute_90 \
                -o "$BUNDLE/kernels/$family.fatbin" "$src" >"$RESULTS/nvcc-$family.log" 2>&1; then
            note "fatbin: $family.fatbin built"
        else
            note "fatbin: $family FAILED (nvcc-$family.log)"
            rm -f "$BUNDLE/kernels/$family.fatbin"
            fatbins=0
            status=1
        fi
    done
else
    note "fatbin: nvcc not on PATH; kernels are compiled by NVRTC at run time"
fi

# ---- 2. tests -------------------------------------------------------------------------------
# NUnit filter: the GPU tests, plus the NVRTC compile-and-resources checks with this machine's NVRTC.
FILTER='TestCategory=Cuda|FullyQualifiedName~NvrtcTests'
run_tests() {  # name, then environment assignments
    local name=$1
    shift
    say "2. tests ($name)"
    env "$@" LORAKERNELS_CACHE_DIR="$RESULTS/tests/kernel-cache-$name" \
        "$BUNDLE/LoraKernels.Tests" --filter "$FILTER" --no-ansi --progress off \
        --results-directory "$RESULTS/tests" --report-trx --report-trx-filename "$name.trx" \
        >"$RESULTS/tests/$name.log" 2>&1
    local rc=$?
    tail -n 8 "$RESULTS/tests/$name.log"
    local counts skipped
    counts=$(grep -E '^\s*(total|failed|succeeded|skipped):' "$RESULTS/tests/$name.log" | tr -s ' ' | tr '\n' ' ')
    skipped=$(grep -E '^\s*skipped:' "$RESULTS/tests/$name.log" | tail -n 1 | tr -dc '0-9')
    if [ $rc -ne 0 ]; then
        note "tests ($name): FAILED (exit $rc);$counts; see tests/$name.log"
        status=1
    elif [ "${skipped:-0}" -ne 0 ]; then
        # On a GPU machine no CUDA test may be skipped: a skip means the GPU was not usable.
        note "tests ($name): FAILED, $skipped skipped (no usable CUDA device? see the reasons in tests/$name.log);$counts"
        status=1
    else
        note "tests ($name): passed;$counts"
    fi
}
run_tests default
if [ $fatbins -eq 1 ]; then
    run_tests nvrtc LORAKERNELS_FORCE_NVRTC=1
fi

# ---- 3. benchmarks --------------------------------------------------------------------------
say "3. GPU benchmarks"
"$BUNDLE/LoraKernels.Tests" benchmarks --filter '*GpuLoraBenchmarks*' --artifacts "$RESULTS/benchmarks" \
    2>&1 | tee "$RESULTS/benchmarks/benchmarks.log"
bench_rc=${PIPESTATUS[0]}
table=$(find "$RESULTS/benchmarks" -name 'LoraKernels-summary.md' | head -n 1)
if [ "$bench_rc" -ne 0 ]; then
    note "benchmarks: FAILED (exit $bench_rc; benchmarks/benchmarks.log)"
    status=1
elif [ -z "$table" ] || ! grep -q '| cuda ' "$table"; then
    note "benchmarks: FAILED, no GPU result (no usable CUDA device? benchmarks/benchmarks.log)"
    status=1
else
    note "benchmarks: finished (benchmarks/results/)"
fi

# ---- 4. summary -----------------------------------------------------------------------------
say "summary ($SUMMARY)"
if [ -n "$table" ]; then
    cat "$table" >>"$SUMMARY"
fi
cat "$SUMMARY"
if [ $status -eq 0 ]; then say "all steps passed"; else say "some steps FAILED"; fi
exit $status
