# LoraKernels on Windows: the same commands as build.sh.
#
#   .\build.ps1                 build everything in Release
#   .\build.ps1 test            native tests (CTest) and C# tests (NUnit)
#   .\build.ps1 run [ARGS]      the demo (--device cpu|simt|cuda)
#   .\build.ps1 bench [ARGS]    the BenchmarkDotNet benchmarks
#   .\build.ps1 pack [DIR]       the NuGet package (default out/packages), native DLLs under runtimes/win-x64/native/
#   .\build.ps1 lora [ARGS]      the lora command
#   .\build.ps1 gpu-bundle [DIR] self-contained win-x64 folder with the GPU tests and benchmarks
#   .\build.ps1 clean
#
# Needs: the .NET 10 SDK, CMake >= 3.20 with a GCC- or Clang-compatible C++17 compiler
# (the emulator's fiber switch and the CPU kernels use GCC builtins: use clang-cl or MinGW-w64),
# GoogleTest (vcpkg: gtest), and, for GPUs, the NVIDIA driver plus NVRTC from the CUDA toolkit.
# Windows is not exercised by CI; build.sh on Linux is the reference.
param(
    [Parameter(Position = 0)][string]$Command = "build",
    [Parameter(Position = 1, ValueFromRemainingArguments = $true)][string[]]$Rest = @()
)
$ErrorActionPreference = "Stop"
$Root = $PSScriptRoot
$NativeBuild = Join-Path $Root "build/native"

function Say([string]$Message) { Write-Host "==> $Message" -ForegroundColor Cyan }
function Invoke-Checked([string]$Exe, [string[]]$Arguments) {
    & $Exe @Arguments
    if ($LASTEXITCODE -ne 0) { throw "$Exe $($Arguments -join ' ') failed with exit code $LASTEXITCODE" }
}

function Assert-Dependencies {
    foreach ($tool in @("cmake", "dotnet")) {
        if (-not (Get-Command $tool -ErrorAction SilentlyContinue)) { throw "$tool not found on PATH" }
    }
    $major = [int]((dotnet --version).Split(".")[0])
    if ($major -lt 10) { throw "the .NET 10 SDK is required (found $(dotnet --version))" }
}

function Build-Native {
    Say "native: CPU kernels, SIMT emulator, native tests (build/native)"
    Invoke-Checked cmake @("-S", $Root, "-B", $NativeBuild, "-DCMAKE_BUILD_TYPE=Release")
    Invoke-Checked cmake @("--build", $NativeBuild, "--config", "Release", "-j", "$env:NUMBER_OF_PROCESSORS")
}

function New-Package([string]$Destination) {
    Say "NuGet package ($Destination)"
    Invoke-Checked dotnet @("pack", (Join-Path $Root "bindings/LoraKernels/LoraKernels.csproj"), "-c", "Release", "-o", $Destination, "-nologo")
}

# Builds samples/LoraKernels.Sample against the package just packed and runs it outside the repository.
function Invoke-Sample {
    $sample = Join-Path $Root "samples/LoraKernels.Sample"
    foreach ($dir in @(".packages", "bin", "obj")) { $p = Join-Path $sample $dir; if (Test-Path $p) { Remove-Item -Recurse -Force $p } }
    Invoke-Checked dotnet @("build", (Join-Path $sample "LoraKernels.Sample.csproj"), "-c", "Release", "-nologo")
    $runDir = Join-Path ([System.IO.Path]::GetTempPath()) ("lorakernels-sample-" + [guid]::NewGuid())
    Copy-Item -Recurse (Join-Path $sample "bin/Release/net10.0") $runDir
    Push-Location $runDir
    try { Invoke-Checked dotnet @("LoraKernels.Sample.dll") } finally { Pop-Location; Remove-Item -Recurse -Force $runDir }
}

function Build-DotNet {
    Say "C#: library, tests, demo, benchmarks (Release)"
    Invoke-Checked dotnet @("build", (Join-Path $Root "LoraKernels.sln"), "-c", "Release", "-nologo")
}

switch ($Command) {
    "build" { Assert-Dependencies; Build-Native; Build-DotNet }
    "test" {
        Assert-Dependencies; Build-Native; Build-DotNet
        Say "native tests (CTest)"
        Invoke-Checked ctest @("--test-dir", $NativeBuild, "-C", "Release", "--output-on-failure")
        Say "C# tests (NUnit)"
        Invoke-Checked dotnet @("test", (Join-Path $Root "tests/LoraKernels.Tests/LoraKernels.Tests.csproj"), "-c", "Release", "--no-build", "-nologo")
        New-Package (Join-Path $Root "out/packages")
        Say "the sample project, from the package"
        Invoke-Sample
    }
    "pack" {
        Assert-Dependencies; Build-Native
        New-Package $(if ($Rest.Count -gt 0) { $Rest[0] } else { Join-Path $Root "out/packages" })
    }
    "lora" {
        Assert-Dependencies; Build-Native
        Invoke-Checked dotnet (@("run", "--project", (Join-Path $Root "tools/LoraKernels.Cli"), "-c", "Release", "--") + $Rest)
    }
    "run" {
        Assert-Dependencies; Build-Native
        Invoke-Checked dotnet (@("run", "--project", (Join-Path $Root "bindings/LoraKernels.Demo"), "-c", "Release", "--") + $Rest)
    }
    "bench" {
        Assert-Dependencies; Build-Native
        Invoke-Checked dotnet (@("run", "--project", (Join-Path $Root "benchmarks/LoraKernels.Benchmarks"), "-c", "Release", "--") + $Rest)
    }
    "gpu-bundle" {
        Assert-Dependencies; Build-Native
        $dest = if ($Rest.Count -gt 0) { $Rest[0] } else { Join-Path $Root "out/gpu-bundle" }
        if (Test-Path $dest) { Remove-Item -Recurse -Force $dest }
        New-Item -ItemType Directory -Force (Join-Path $dest "kernels") | Out-Null
        $publish = @("-c", "Release", "-r", "win-x64", "--self-contained", "true", "-p:PublishTrimmed=true", "-p:TrimMode=partial", "-o", $dest)
        Invoke-Checked dotnet (@("publish", (Join-Path $Root "tests/LoraKernels.Tests/LoraKernels.Tests.csproj")) + $publish)
        Invoke-Checked dotnet (@("publish", (Join-Path $Root "benchmarks/LoraKernels.Benchmarks/LoraKernels.Benchmarks.csproj")) + $publish)
        Copy-Item (Join-Path $Root "kernels/*") (Join-Path $dest "kernels")
        Say "GPU bundle ready: $dest"
    }
    "clean" {
        foreach ($dir in @("build", "out")) { $p = Join-Path $Root $dir; if (Test-Path $p) { Remove-Item -Recurse -Force $p } }
        Get-ChildItem $Root -Recurse -Directory -Include bin, obj | Remove-Item -Recurse -Force
    }
    default { throw "unknown command '$Command' (build | test | run | bench | pack | lora | gpu-bundle | clean)" }
}
