#!/usr/bin/env bash
# LoraKernels: the one entry point for building, testing, running the demo and benchmarking.
#
#   ./build.sh              build everything in Release (native libraries, C# library, tests, demo, benchmarks)
#   ./build.sh test         run every test a machine without a GPU can run (CTest + ASan emulator tests + NUnit)
#   ./build.sh run [ARGS]   run the demo (LoRA learns a hidden low-rank change); ARGS go to the demo (--device cpu|simt|cuda)
#   ./build.sh bench [ARGS] run the BenchmarkDotNet benchmarks; ARGS go to BenchmarkDotNet
#   ./build.sh pack [DIR]   the NuGet package LoraKernels.<version>.nupkg (default out/packages), native libraries included
#   ./build.sh lora [ARGS]  the lora command (variants, inspect, merge, quantize, demo, bench); ARGS go to it
#   ./build.sh gpu-bundle [DIR]  self-contained folder to copy to a Linux GPU machine without .NET (default out/gpu-bundle, < 80 MB)
#   ./build.sh clean        remove build outputs
#
# System packages it needs, installed when run as root and missing (Debian 12 "bookworm"):
#   cmake, g++, libgtest-dev   - native build and tests
#   liblapack-dev              - LAPACK, the CPU SVD behind PiSSA and LoftQ
#   libnvrtc11.2               - NVRTC (CUDA 11.8) from Debian's non-free component, enabled here if needed
#   libopenblas0-pthread       - OpenBLAS, the baseline the benchmarks compare against
#   the .NET 10 SDK must already be on PATH (it is not a Debian package).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
NATIVE_BUILD="$ROOT/build/native"
PACKAGES="$ROOT/out/packages"
SAMPLE="$ROOT/samples/LoraKernels.Sample"
ASAN_BUILD="$ROOT/build/native-asan"
JOBS=$(nproc 2>/dev/null || echo 2)
export DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1 DOTNET_SKIP_FIRST_TIME_EXPERIENCE=1

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }
die() { printf 'build.sh: %s\n' "$*" >&2; exit 1; }

have_library() { ldconfig -p 2>/dev/null | grep -q "$1"; }

apt_updated=0
apt_install() {
    if [ "$(id -u)" -ne 0 ]; then
        die "missing system package(s): $*; install them (sudo apt-get install $*) or run this script as root"
    fi
    if [ $apt_updated -eq 0 ]; then
        apt-get update -qq
        apt_updated=1
    fi
    say "installing system package(s): $*"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# NVRTC lives in Debian's non-free component; enable it for bookworm when no source offers it.
enable_non_free() {
    [ "$(id -u)" -eq 0 ] || return 0
    if [ $apt_updated -eq 0 ]; then apt-get update -qq; apt_updated=1; fi
    if apt-cache policy libnvrtc11.2 2>/dev/null | grep -q 'Candidate: [0-9]'; then return 0; fi
    local codename
    codename=$(. /etc/os-release 2>/dev/null && echo "${VERSION_CODENAME:-}")
    [ "$codename" = "bookworm" ] || die "libnvrtc11.2 not found and this is not Debian bookworm ($codename): install NVRTC (CUDA 11.2 or newer) yourself"
    say "enabling Debian's non-free component for NVRTC (/etc/apt/sources.list.d/lorakernels-non-free.sources)"
    cat >/etc/apt/sources.list.d/lorakernels-non-free.sources <<'EOF'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: non-free
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    apt-get update -qq
}

ensure_dependencies() {
    local missing=()
    command -v cmake >/dev/null || missing+=(cmake)
    command -v g++ >/dev/null || missing+=(g++)
    [ -f /usr/include/gtest/gtest.h ] || missing+=(libgtest-dev)
    have_library 'liblapack.so ' || missing+=(liblapack-dev)
    have_library libopenblas.so.0 || missing+=(libopenblas0-pthread)
    [ ${#missing[@]} -eq 0 ] || apt_install "${missing[@]}"
    if ! have_library libnvrtc.so; then
        enable_non_free
        apt_install libnvrtc11.2
    fi
    command -v dotnet >/dev/null || die "the .NET 10 SDK is required (dotnet not found on PATH)"
    local major
    major=$(dotnet --version | cut -d. -f1)
    [ "$major" -ge 10 ] || die "the .NET 10 SDK is required (found $(dotnet --version))"
}

build_native() {
    say "native: CPU kernels, SIMT emulator, native tests (build/native)"
    cmake -S "$ROOT" -B "$NATIVE_BUILD" -DCMAKE_BUILD_TYPE=Release >/dev/null
    cmake --build "$NATIVE_BUILD" -j "$JOBS"
}

build_dotnet() {
    say "C#: library, tests, demo, benchmarks (Release)"
    dotnet build "$ROOT/LoraKernels.sln" -c Release -nologo -v quiet -clp:ErrorsOnly
}

# The NuGet package into $1: the library, its XML docs, the README and the native libraries under
# runtimes/linux-x64/native/ (checked in the package's zip directory, which stores names uncompressed).
pack_package() {
    local dest=$1 version nupkg lib
    version=$(sed -n 's:.*<Version>\(.*\)</Version>.*:\1:p' "$ROOT/bindings/LoraKernels/LoraKernels.csproj" | head -n1)
    say "NuGet package LoraKernels.$version.nupkg ($dest)"
    mkdir -p "$dest"
    dotnet pack "$ROOT/bindings/LoraKernels/LoraKernels.csproj" -c Release -o "$dest" -nologo -v quiet -clp:ErrorsOnly
    nupkg="$dest/LoraKernels.$version.nupkg"
    [ -f "$nupkg" ] || die "dotnet pack did not write $nupkg"
    for lib in runtimes/linux-x64/native/libloraknl_cpu.so runtimes/linux-x64/native/libloraknl_simt.so lib/net10.0/LoraKernels.xml README.md; do
        grep -aq "$lib" "$nupkg" || die "$nupkg lacks $lib"
    done
    echo "$nupkg: $(( $(stat -c %s "$nupkg") / 1024 )) KiB"
}

# Builds samples/LoraKernels.Sample against the package just packed (its own packages folder, so no
# cached copy of the same version is used) and runs it from a folder outside the repository, so the
# native libraries can only come from the package.
run_sample() {
    rm -rf "$SAMPLE/.packages" "$SAMPLE/bin" "$SAMPLE/obj"
    dotnet build "$SAMPLE/LoraKernels.Sample.csproj" -c Release -nologo -v quiet -clp:ErrorsOnly
    local run_dir
    run_dir=$(mktemp -d)
    cp -r "$SAMPLE/bin/Release/net10.0/." "$run_dir/"
    (cd "$run_dir" && dotnet LoraKernels.Sample.dll)
    rm -rf "$run_dir"
}

# Runs a test command, keeps its output in LOG_DIR/NAME.log and echoes it; fails as the command fails.
run_logged() {
    local name=$1; shift
    mkdir -p "$LOG_DIR"
    "$@" 2>&1 | tee "$LOG_DIR/$name.log"
}

test_all() {
    LOG_DIR="$ROOT/build/test-logs"
    rm -rf "$LOG_DIR"

    say "native tests (CTest)"
    run_logged ctest ctest --test-dir "$NATIVE_BUILD" --output-on-failure -j "$JOBS"

    say "emulator and kernel-parity tests under AddressSanitizer (build/native-asan)"
    cmake -S "$ROOT" -B "$ASAN_BUILD" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DLK_SANITIZE=address >/dev/null
    cmake --build "$ASAN_BUILD" -j "$JOBS" --target lk_sanitized_tests
    ASAN_OPTIONS=detect_leaks=1 run_logged ctest-asan ctest --test-dir "$ASAN_BUILD" --output-on-failure -L 'simt|parity'

    say "C# tests (NUnit on Microsoft.Testing.Platform, selected by tests/global.json)"
    (cd "$ROOT/tests" && run_logged nunit dotnet test --project LoraKernels.Tests/LoraKernels.Tests.csproj -c Release --no-build)

    say "NuGet package, and the sample project that installs it from a local folder feed and runs a LoRA forward"
    pack_package "$PACKAGES"
    run_logged sample run_sample

    # One closing line over all three runs, in the plain form CI counts.
    local passed=0 failed=0 skipped=0 n
    for log in ctest ctest-asan; do
        n=$(sed -nE 's/.*tests passed, ([0-9]+) tests failed out of ([0-9]+).*/\1 \2/p' "$LOG_DIR/$log.log" | tail -n1)
        [ -n "$n" ] || die "no CTest summary in $LOG_DIR/$log.log"
        set -- $n
        failed=$((failed + $1)); passed=$((passed + $2 - $1))
    done
    n=$(sed -nE 's/^ *succeeded: ([0-9]+).*/\1/p' "$LOG_DIR/nunit.log" | tail -n1); passed=$((passed + ${n:?no NUnit summary in $LOG_DIR/nunit.log}))
    n=$(sed -nE 's/^ *failed: ([0-9]+).*/\1/p' "$LOG_DIR/nunit.log" | tail -n1); failed=$((failed + ${n:-0}))
    n=$(sed -nE 's/^ *skipped: ([0-9]+).*/\1/p' "$LOG_DIR/nunit.log" | tail -n1); skipped=$((skipped + ${n:-0}))
    grep -q '^sample: OK' "$LOG_DIR/sample.log" && passed=$((passed + 1)) || failed=$((failed + 1))
    echo "tests: $passed passed, $failed failed, $skipped skipped"
}

gpu_bundle() {
    local dest=${1:-$ROOT/out/gpu-bundle}
    say "GPU bundle: $dest"
    rm -rf "$dest"
    mkdir -p "$dest/kernels"
    # One self-contained program: the test executable also runs the benchmarks ("benchmarks" as
    # its first argument), so the bundle carries a single trimmed runtime.
    dotnet publish "$ROOT/tests/LoraKernels.Tests/LoraKernels.Tests.csproj" -c Release -r linux-x64 \
        --self-contained true -p:PublishTrimmed=true -p:TrimMode=partial -nologo -v quiet -o "$dest"
    cp "$ROOT"/kernels/*.cu "$ROOT"/kernels/*.cuh "$dest/kernels/"
    cp "$ROOT/benchmarks/gpu-bundle/run-on-gpu.sh" "$ROOT/benchmarks/gpu-bundle/peft_compare.py" "$dest/"
    chmod +x "$dest/run-on-gpu.sh" "$dest/peft_compare.py"
    local size
    size=$(du -sm "$dest" | cut -f1)
    [ "$size" -lt 80 ] || die "GPU bundle is ${size} MB, over the 80 MB budget"
    # Without a GPU here, the bundle must say so and stop, quickly and with a failing status.
    if ! command -v nvidia-smi >/dev/null; then
        local check rc start
        check=$(mktemp -d)
        start=$(date +%s)
        rc=0
        timeout 90 "$dest/run-on-gpu.sh" "$check" >"$check/run.log" 2>&1 || rc=$?
        [ $rc -ne 0 ] && [ $rc -ne 124 ] || die "the bundle's run-on-gpu.sh did not fail on a machine without a GPU (exit $rc): $(cat "$check/run.log")"
        [ $(( $(date +%s) - start )) -lt 60 ] || die "the bundle's run-on-gpu.sh took over a minute to notice there is no GPU"
        grep -q 'no GPU' "$check/run.log" || die "the bundle's run-on-gpu.sh failed without saying there is no GPU: $(cat "$check/run.log")"
        say "no GPU here: the bundle says so and exits $rc in $(( $(date +%s) - start )) s ($(grep -m1 'no GPU' "$check/run.log"))"
        rm -rf "$check"
    fi
    say "GPU bundle ready: $dest (${size} MB). On the GPU machine: ./run-on-gpu.sh RESULTS_DIR"
}

cmd=${1:-build}
[ $# -gt 0 ] && shift
case "$cmd" in
    build)
        ensure_dependencies; build_native; build_dotnet ;;
    test)
        ensure_dependencies; build_native; build_dotnet; test_all ;;
    run)
        ensure_dependencies; build_native
        say "demo"
        dotnet run --project "$ROOT/bindings/LoraKernels.Demo" -c Release -- "$@" ;;
    bench)
        ensure_dependencies; build_native
        say "benchmarks (BenchmarkDotNet)"
        dotnet run --project "$ROOT/benchmarks/LoraKernels.Benchmarks" -c Release -- "$@" ;;
    gpu-bundle)
        ensure_dependencies; build_native; gpu_bundle "$@" ;;
    pack)
        ensure_dependencies; build_native; pack_package "${1:-$PACKAGES}" ;;
    lora)
        ensure_dependencies; build_native
        dotnet run --project "$ROOT/tools/LoraKernels.Cli" -c Release -- "$@" ;;
    clean)
        rm -rf "$ROOT/build" "$ROOT/out" "$SAMPLE/.packages"
        find "$ROOT" -type d \( -name bin -o -name obj \) -prune -exec rm -rf {} + ;;
    *)
        die "unknown command '$cmd' (build | test | run | bench | pack | lora | gpu-bundle | clean)" ;;
esac
