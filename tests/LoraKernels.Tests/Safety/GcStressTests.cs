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
        ProcessStartInfo start = ChildOfThisProgram("gc-stress", device, seconds.ToString(System.Globalization.CultureInfo.InvariantCulture), mode);
        start.Environment["DOTNET_TieredCompilation"] = "0";
        start.RedirectStandardOutput = true;
        start.RedirectStandardError = true;
        using Process child = Process.Start(start) ?? throw new InvalidOperationException("could not start the stress program");
        Task<string> output = child.StandardOutput.ReadToEndAsync();
        Task<string> errors = child.StandardError.ReadToEndAsync();
        if (!child.WaitForExit(TimeSpan.FromSeconds(seconds + 120)))
        {
            child.Kill(entireProcessTree: true);
            Assert.Fail($"gc-stress {device} {mode} did not finish within {seconds + 120} s");
        }
        string report = $"exit code {child.ExitCode}\nstdout: {output.Result}\nstderr: {errors.Result}";
        Assert.That(child.ExitCode, Is.Zero, report);
        Assert.That(output.Result, Does.Contain($"gc-stress {mode} on {device}:"), report);
        TestContext.Out.WriteLine(output.Result.Trim());
    }

    /// <summary>This test program (the apphost, or `dotnet exec` of its assembly) with <paramref name="arguments"/>.</summary>
    private static ProcessStartInfo ChildOfThisProgram(params string[] arguments)
    {
        string host = Environment.ProcessPath ?? throw new InvalidOperationException("no process path");
        var start = new ProcessStartInfo(host) { UseShellExecute = false };
        if (Path.GetFileNameWithoutExtension(host) == "dotnet")
        {
            start.ArgumentList.Add("exec");
            start.ArgumentList.Add(typeof(GcStressProgram).Assembly.Location);
        }
        foreach (string argument in arguments) start.ArgumentList.Add(argument);
        return start;
    }
}
