// How the CPU kernels' OpenMP workers wait between parallel regions. libgomp's default spins for a
// while (GOMP_SPINCOUNT, 300,000 rounds) before sleeping, so in a host process that alternates our
// calls with another thread pool's (BLAS, ONNX Runtime, the host's own workers) the idle spinners
// take the cores the other pool needs: on 2 cores that slowed both sides 2-3x. A library is a guest
// in its host's process, so unless the host chose (OMP_WAIT_POLICY or GOMP_SPINCOUNT set in the
// environment), LoraKernels sets OMP_WAIT_POLICY=PASSIVE before libloraknl_cpu (and with it libgomp)
// loads: idle workers sleep at once. libgomp reads the variable once, when it loads, so a host that
// loaded libgomp earlier keeps its own setting (Current then says so). The cost: a worker wakes by
// futex at the start of each parallel region (measured in benchmarks/CpuWaitPolicyBenchmarks.cs).
using System.Runtime.InteropServices;

namespace LoraKernels.Interop;

internal static partial class OpenMpWaitPolicy
{
    private const string PolicyVariable = "OMP_WAIT_POLICY", SpinVariable = "GOMP_SPINCOUNT";
    private static string? _current;

    /// <summary>What the CPU kernels' OpenMP runtime was told, e.g. "PASSIVE (LoraKernels' default)".</summary>
    public static string Current => _current ?? Describe();

    /// <summary>Sets the library's default before libgomp loads, unless the host has chosen. Idempotent.</summary>
    public static void ApplyDefault()
    {
        if (_current is not null || !OperatingSystem.IsLinux()) return;
        if (NativeVariable(PolicyVariable) is null && NativeVariable(SpinVariable) is null)
        {
            if (setenv(PolicyVariable, "PASSIVE", 0) == 0)
            {
                _current = "PASSIVE (LoraKernels' default)";
                return;
            }
        }
        _current = Describe();
    }

    private static string Describe()
    {
        string? policy = NativeVariable(PolicyVariable), spin = NativeVariable(SpinVariable);
        if (policy is null && spin is null) return "libgomp's default (spin, then sleep)";
        return string.Join(", ", new[] { policy is null ? null : $"{PolicyVariable}={policy}", spin is null ? null : $"{SpinVariable}={spin}" }
            .Where(s => s is not null)) + " (set by the host)";
    }

    // The process environment as native code sees it (.NET keeps its own copy for Environment.GetEnvironmentVariable).
    private static string? NativeVariable(string name) => Marshal.PtrToStringUTF8(getenv(name));

    [LibraryImport("libc.so.6", StringMarshalling = StringMarshalling.Utf8)]
    private static partial IntPtr getenv(string name);

    [LibraryImport("libc.so.6", StringMarshalling = StringMarshalling.Utf8)]
    private static partial int setenv(string name, string value, int overwrite);
}
