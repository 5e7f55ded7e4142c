#!/usr/bin/env bash
# run-on-gpu.sh [RESULTS_DIR] [--fatbin] [--nvrtc-checks] — LoraKernels' GPU checks and measurements from the
# GPU bundle (./build.sh gpu-bundle), on a Linux x86-64 machine with an NVIDIA GPU and driver, in one short
# run (under 8 minutes on an H100/H200). No .NET SDK is needed: the bundle's one self-contained program,
# LoraKernels.Tests, runs the tests and the comparison. Every step has its own time limit; a missing piece
# is reported as a failed (or, where optional, skipped) step, never waited on.
#
#   0. a GPU must be visible (nvidia-smi, then the program's own CUDA probe): otherwise it says so and
#      exits 1 at once;
#   1. parity: every test of category Cuda (each kernel on CUDA against the CPU kernels and the references),
#      with LORAKERNELS_SYNC_LAUNCHES=1 so a faulting kernel is named (limit 300 s);
#   2. compute-sanitizer memcheck over a few tensor-core parity cases, when the tool is on PATH (limit 120 s);
#   3. the lean comparison: LoRA forward and backward at M = 1, 16, 512, 8192 for 4096 x 4096 and 4096 x 14336,
#      r = 16, bf16, LoraKernels against cuBLAS, and the 4-bit decode against cuBLAS's bf16 GEMV; every output
#      checked against the CPU before its time counts (limit 180 s);
#   4. the same shapes in PyTorch + PEFT (and bitsandbytes 4-bit where installed) by peft_compare.py (limit 180 s);
#   5. one comparison table (RESULTS_DIR/compare/comparison.{md,json}) and the summary (RESULTS_DIR/summary.txt).
# Options: --fatbin builds the AOT fatbins with nvcc first (minutes; the kernels otherwise come from NVRTC);
# --nvrtc-checks adds the NVRTC compile-and-spills tests with this machine's NVRTC (minutes).
# Exit status: 0 when every step that ran passed; 1 otherwise. Native libraries needed on the machine:
# libcuda.so.1, NVRTC (toolkit, nvidia-cuda-nvrtc pip package or distro; LORAKERNELS_CUDA_LIB_DIR if elsewhere),
# cuBLAS, libgomp.so.1; python3 with torch and peft for step 4.
set -uo pipefail

RESULTS_ARG=results
FATBIN=0
NVRTC_CHECKS=0
for arg in "$@"; do
    case "$arg" in
        --fatbin) FATBIN=1 ;;
        --nvrtc-checks) NVRTC_CHECKS=1 ;;
        -*) echo "usage: $0 [RESULTS_DIR] [--fatbin] [--nvrtc-checks]" >&2; exit 2 ;;
        *) RESULTS_ARG=$arg ;;
    esac
done
BUNDLE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
mkdir -p "$RESULTS_ARG" || exit 2
RESULTS=$(cd "$RESULTS_ARG" && pwd)
mkdir -p "$RESULTS/tests" "$RESULTS/compare"
SUMMARY="$RESULTS/summary.txt"
: >"$SUMMARY"
export LORAKERNELS_CACHE_DIR="$RESULTS/kernel-cache"
PROGRAM="$BUNDLE/LoraKernels.Tests"
status=0
started=$(date +%s)

say() { printf '==> %s\n' "$*"; }
note() { printf '%s\n' "$*" | tee -a "$SUMMARY"; }
elapsed() { echo "$(( $(date +%s) - started )) s"; }

cd "$BUNDLE"
[ -x "$PROGRAM" ] || { note "FAILED: $PROGRAM is missing: rebuild the bundle (./build.sh gpu-bundle)"; exit 1; }

# ---- 0. is there a GPU? -------------------------------------------------------------------------------
say "0. GPU"
if ! command -v nvidia-smi >/dev/null; then
    note "no GPU: nvidia-smi is not on PATH (no NVIDIA driver on this machine); nothing to run"
    exit 1
fi
gpus=$(timeout 30 nvidia-smi -L 2>&1)
if [ $? -ne 0 ] || ! grep -q '^GPU ' <<<"$gpus"; then
    note "no GPU: nvidia-smi -L lists none ($gpus); nothing to run"
    exit 1
fi
probe=$(timeout 60 "$PROGRAM" gpu-compare --probe 2>&1)
if [ $? -ne 0 ]; then
    note "no usable GPU for LoraKernels: $probe"
    exit 1
fi
{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "host: $(uname -a)"
    nvidia-smi --query-gpu=name,driver_version,compute_cap,memory.total --format=csv 2>&1
    if command -v nvcc >/dev/null; then nvcc --version | tail -n 2; else echo "nvcc: not found"; fi
    echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-) ($(nproc) cores)"
    echo "$probe"
    for lib in libloraknl_cpu.so libloraknl_simt.so; do
        missing=$(ldd "$BUNDLE/$lib" 2>&1 | grep 'not found' || true)
        echo "$lib: ${missing:-all dependencies found}"
    done
} >"$RESULTS/environment.txt" 2>&1
cat "$RESULTS/environment.txt"

# ---- optional: AOT fatbins -------------------------------------------------------------------------------
if [ $FATBIN -eq 1 ]; then
    say "fatbins (nvcc)"
    if ! command -v nvcc >/dev/null; then
        note "fatbin: FAILED, nvcc not on PATH"
        status=1
    else
        for src in "$BUNDLE"/kernels/*.cu; do
            family=$(basename "$src" .cu)
            if timeout 600 nvcc -fatbin -O3 -std=c++17 -I"$BUNDLE/kernels" \
                    -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90 \
                    -gencode arch=compute_90,code=compute_90 \
                    -o "$BUNDLE/kernels/$family.fatbin" "$src" >"$RESULTS/nvcc-$family.log" 2>&1; then
                note "fatbin: $family.fatbin built"
            else
                note "fatbin: $family FAILED (nvcc-$family.log)"
                rm -f "$BUNDLE/kernels/$family.fatbin"
                status=1
            fi
        done
    fi
fi

# ---- 1. parity (and optional NVRTC checks) ---------------------------------------------------------------
run_tests() {  # name, limit in seconds, NUnit filter, then environment assignments
    local name=$1 limit=$2 filter=$3
    shift 3
    say "tests: $name (limit ${limit} s)"
    env "$@" timeout --kill-after=10 "$limit" "$PROGRAM" --filter "$filter" --no-ansi --progress off \
        --results-directory "$RESULTS/tests" --report-trx --report-trx-filename "$name.trx" >"$RESULTS/tests/$name.log" 2>&1
    local rc=$?
    local passed failed skipped
    passed=$(sed -nE 's/^ *succeeded: ([0-9]+).*/\1/p' "$RESULTS/tests/$name.log" | tail -n 1)
    failed=$(sed -nE 's/^ *failed: ([0-9]+).*/\1/p' "$RESULTS/tests/$name.log" | tail -n 1)
    skipped=$(sed -nE 's/^ *skipped: ([0-9]+).*/\1/p' "$RESULTS/tests/$name.log" | tail -n 1)
    local counts="${passed:-0} passed, ${failed:-?} failed, ${skipped:-0} skipped"
    if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
        note "$name: FAILED, over its ${limit} s limit ($counts so far; tests/$name.log)"
        status=1
    elif [ $rc -ne 0 ]; then
        note "$name: FAILED ($counts; tests/$name.log)"
        grep -E '^failed ' "$RESULTS/tests/$name.log" | head -n 20 | tee -a "$SUMMARY"
        status=1
    elif [ "${skipped:-0}" -ne 0 ]; then
        # On a GPU machine no CUDA test may be skipped: a skip means the GPU was not usable.
        note "$name: FAILED, $counts (a CUDA test skipped: see the reasons in tests/$name.log)"
        status=1
    else
        note "$name: $counts ($(elapsed))"
    fi
}
run_tests parity 300 'TestCategory=Cuda' LORAKERNELS_SYNC_LAUNCHES=1
if [ $NVRTC_CHECKS -eq 1 ]; then
    run_tests nvrtc-checks 600 'FullyQualifiedName~NvrtcTests|FullyQualifiedName~TensorCorePtxTests|FullyQualifiedName~NvrtcTargetTests'
fi

# ---- 2. compute-sanitizer (optional) ---------------------------------------------------------------------
if command -v compute-sanitizer >/dev/null; then
    say "compute-sanitizer memcheck (limit 120 s)"
    timeout --kill-after=10 120 compute-sanitizer --tool memcheck --error-exitcode 9 --log-file "$RESULTS/tests/memcheck.txt" \
        "$PROGRAM" --filter 'FullyQualifiedName~Cuda_GpuForward_BF16_M17_|FullyQualifiedName~Cuda_GpuBackward_BF16_M17_' \
        --no-ansi --progress off >"$RESULTS/tests/memcheck.log" 2>&1
    rc=$?
    case $rc in
        0) note "compute-sanitizer memcheck: clean ($(elapsed))" ;;
        124|137) note "compute-sanitizer memcheck: FAILED, over its 120 s limit (tests/memcheck.log)"; status=1 ;;
        *) note "compute-sanitizer memcheck: FAILED (exit $rc; tests/memcheck.txt)"; status=1 ;;
    esac
else
    note "compute-sanitizer: not on PATH, memcheck pass skipped"
fi

# ---- 3. LoraKernels against cuBLAS -------------------------------------------------------------------------
say "comparison: LoraKernels vs cuBLAS (limit 180 s)"
timeout --kill-after=10 180 "$PROGRAM" gpu-compare --out "$RESULTS/compare" 2>&1 | tee "$RESULTS/compare/lorakernels.log"
rc=${PIPESTATUS[0]}
case $rc in
    0) note "comparison (LoraKernels, cuBLAS): every case checked against the CPU ($(elapsed))" ;;
    124|137) note "comparison (LoraKernels, cuBLAS): FAILED, over its 180 s limit"; status=1 ;;
    *) note "comparison (LoraKernels, cuBLAS): FAILED (exit $rc; compare/lorakernels.log)"; status=1 ;;
esac

# ---- 4. PyTorch + PEFT ---------------------------------------------------------------------------------------
if ! command -v python3 >/dev/null; then
    note "PyTorch + PEFT: FAILED, python3 is not on PATH"
    status=1
else
    say "comparison: PyTorch + PEFT (limit 180 s)"
    timeout --kill-after=10 180 python3 "$BUNDLE/peft_compare.py" --out "$RESULTS/compare" 2>&1 | tee "$RESULTS/compare/peft.log"
    rc=${PIPESTATUS[0]}
    case $rc in
        0) note "PyTorch + PEFT: done ($(elapsed))" ;;
        3) note "PyTorch + PEFT: FAILED, a module is missing ($(tail -n 1 "$RESULTS/compare/peft.log"))"; status=1 ;;
        124|137) note "PyTorch + PEFT: FAILED, over its 180 s limit"; status=1 ;;
        *) note "PyTorch + PEFT: FAILED (exit $rc; compare/peft.log)"; status=1 ;;
    esac
fi

# ---- 5. the table and the summary ------------------------------------------------------------------------
say "summary ($SUMMARY)"
if [ -f "$RESULTS/compare/lorakernels.json" ] && command -v python3 >/dev/null; then
    timeout 30 python3 "$BUNDLE/peft_compare.py" --merge "$RESULTS/compare" >/dev/null 2>"$RESULTS/compare/merge.log" \
        || { note "comparison table: FAILED (compare/merge.log)"; status=1; }
fi
for table in "$RESULTS/compare/comparison.md" "$RESULTS/compare/lorakernels.md"; do
    if [ -f "$table" ]; then
        cat "$table" >>"$SUMMARY"
        break
    fi
done
cat "$SUMMARY"
if [ $status -eq 0 ]; then say "all steps passed ($(elapsed))"; else say "some steps FAILED ($(elapsed))"; fi
exit $status
