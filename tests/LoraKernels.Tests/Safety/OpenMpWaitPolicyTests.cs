using System.Diagnostics;

namespace LoraKernels.Tests.Safety;

/// <summary>
/// The CPU kernels are a good guest: unless the host chose a wait policy, idle OpenMP workers sleep
/// (PASSIVE) instead of spinning on cores the host's other thread pools need; a host's choice is kept.
/// Checked in child processes with a controlled environment, against what libgomp itself reports at
/// start-up (OMP_DISPLAY_ENV=true prints its settings to stderr), not only against our own property.
/// </summary>
[TestFixture]
public sealed class OpenMpWaitPolicyTests
{
    [Test]
    public void WorkersSleepByDefault()
    {
        var (output, libgomp) = RunChild(policy: null);
        Assert.That(output, Does.Contain("policy: PASSIVE (LoraKernels' default)"));
        Assert.That(libgomp, Does.Contain("OMP_WAIT_POLICY = 'PASSIVE'"), "libgomp's own report");
    }

    [Test]
    public void AHostsChoiceIsKept()
    {
        var (output, libgomp) = RunChild(policy: "ACTIVE");
        Assert.That(output, Does.Contain("policy: OMP_WAIT_POLICY=ACTIVE (set by the host)"));
        Assert.That(libgomp, Does.Contain("OMP_WAIT_POLICY = 'ACTIVE'"), "libgomp's own report");
    }

    private static (string Output, string Errors) RunChild(string? policy)
    {
        ProcessStartInfo start = ChildProgram.StartInfo("wait-policy");
        start.Environment.Remove("OMP_WAIT_POLICY");
        start.Environment.Remove("GOMP_SPINCOUNT");
        if (policy is not null) start.Environment["OMP_WAIT_POLICY"] = policy;
        start.Environment["OMP_DISPLAY_ENV"] = "true";
        var (exitCode, output, errors) = ChildProgram.Run(start, TimeSpan.FromMinutes(2));
        Assert.That(exitCode, Is.EqualTo(0), $"child failed:\n{output}\n{errors}");
        return (output, errors);
    }
}
