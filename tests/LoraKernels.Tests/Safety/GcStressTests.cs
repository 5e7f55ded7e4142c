using System.Diagnostics;

namespace LoraKernels.Tests.Safety;

/// <summary>
/// Native calls keep their memory alive: temporaries collected mid-call and tensors disposed on
/// another thread neither crash the host nor change a result. Each case runs GcStressProgram in a
/// child process with tiered compilation off (the optimised code that exposed the defect: before
/// buffers were leased for each call, the CPU case died with SIGSEGV within seconds and the emulator
/// returned values up to 1e30 off).
/// </summary>
[TestFixture]
[Category("Stress")]
public sealed class GcStressTests
{
    [TestCase("cpu", "temporaries", 6)]
    [TestCase("simt", "temporaries", 6)]
    [TestCase("cpu", "dispose", 4)]
    [TestCase("simt", "dispose", 4)]
    public void NativeCallsOutliveNoneOfTheirMemory(string device, string mode, int seconds)
    {
        ProcessStartInfo start = ChildProgram.StartInfo("gc-stress", device, seconds.ToString(System.Globalization.CultureInfo.InvariantCulture), mode);
        start.Environment["DOTNET_TieredCompilation"] = "0";
        var (exitCode, output, errors) = ChildProgram.Run(start, TimeSpan.FromSeconds(seconds + 120));
        string report = $"exit code {exitCode}\nstdout: {output}\nstderr: {errors}";
        Assert.That(exitCode, Is.Zero, report);
        Assert.That(output, Does.Contain($"gc-stress {mode} on {device}:"), report);
        TestContext.Out.WriteLine(output.Trim());
    }
}
