using System.Globalization;
using LoraKernels.Autograd;
using LoraKernels.Optim;

namespace LoraKernels.Tests.Optim;

/// <summary>
/// The child program of PagedStateTests.CpuPagedStepStaysWithinItsRamBudget ("paged-memory"): a parameter of
/// 12 Mi elements (AdamW state 96 MiB), two CPU steps with the state paged under a RAM budget of a quarter of it,
/// then one with resident state, each measured as the growth of the peak resident set (VmHWM, reset through
/// /proc/self/clear_refs) over the resident set before it. Exits 0 when the paged steps grew it by at most the
/// budget plus 16 MiB of slack for the runtime and the resident step by at least the state.
/// </summary>
internal static class PagedMemoryProgram
{
    private const int Elements = 12 << 20;
    private const long Slack = 16L << 20;

    public static int Run(string[] args)
    {
        long stateBytes = 8L * Elements;
        long budget = stateBytes / 4;
        Device cpu = Device.Cpu;
        using var parameter = new Parameter("p", Tensor.Zeros(cpu, DType.F32, Elements));
        parameter.Grad = Tensor.Zeros(cpu, DType.F32, Elements);
        Elementwise.Fill(parameter.Grad, 0.25f);
        WarmUp();

        using var paged = new AdamW([parameter], paging: new StatePaging(budget));
        long pagedGrowth = PeakGrowth(() =>
        {
            paged.Step();
            paged.Step();
        });
        using var resident = new AdamW([parameter]);
        long residentGrowth = PeakGrowth(() => resident.Step());

        bool ok = pagedGrowth <= budget + Slack && residentGrowth >= stateBytes;
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"AdamW state {stateBytes >> 20} MiB; paged with a RAM budget of {budget >> 20} MiB: peak RSS +{pagedGrowth / (1024.0 * 1024.0):F1} MiB " +
            $"(bound {(budget + Slack) >> 20} MiB); resident: +{residentGrowth / (1024.0 * 1024.0):F1} MiB (at least {stateBytes >> 20} MiB expected)"));
        return ok ? 0 : 1;
    }

    /// <summary>Runs the code paths once on a small parameter, so JIT and pools are not measured.</summary>
    private static void WarmUp()
    {
        using var small = new Parameter("small", Tensor.Zeros(Device.Cpu, DType.F32, 100_000));
        small.Grad = Tensor.Zeros(Device.Cpu, DType.F32, 100_000);
        using var optimizer = new AdamW([small], paging: new StatePaging(StatePaging.MinimumWorkingBytes));
        optimizer.Step();
    }

    private static long PeakGrowth(Action step)
    {
        GC.Collect();
        GC.WaitForPendingFinalizers();
        File.WriteAllText("/proc/self/clear_refs", "5");  // resets VmHWM to the current resident set
        long before = Status("VmRSS:");
        step();
        return Status("VmHWM:") - before;
    }

    private static long Status(string field)
    {
        foreach (string line in File.ReadLines("/proc/self/status"))
            if (line.StartsWith(field, StringComparison.Ordinal))
                return long.Parse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1], CultureInfo.InvariantCulture) * 1024;
        throw new InvalidOperationException($"/proc/self/status has no {field} line");
    }
}
