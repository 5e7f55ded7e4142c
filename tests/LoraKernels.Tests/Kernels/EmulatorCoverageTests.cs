using System.Runtime.InteropServices;
using LoraKernels.Interop;
using LoraKernels.Runtime;

namespace LoraKernels.Tests.Kernels;

/// <summary>
/// Every entry point the kernel sources declare is registered in the SIMT emulator, so no kernel
/// is left without a CPU run, and the library maps each to the family that defines it.
/// </summary>
[TestFixture]
public sealed class EmulatorCoverageTests
{
    private static unsafe SortedSet<string> RegisteredKernels()
    {
        int count = NativeSimt.lk_simt_kernel_count();
        var names = new SortedSet<string>(StringComparer.Ordinal);
        for (int i = 0; i < count; i++)
            names.Add(Marshal.PtrToStringUTF8((IntPtr)NativeSimt.lk_simt_kernel_name(i))!);
        return names;
    }

    public static IEnumerable<TestCaseData> Families() =>
        KernelSources.Families.Select(f => new TestCaseData(f).SetName($"EmulatorRegisters_{f}"));

    [TestCaseSource(nameof(Families))]
    public void EveryDeclaredEntryPointIsRegistered(string family)
    {
        SortedSet<string> declared = KernelEntryPoints.Declared(KernelSources.Source(family));
        SortedSet<string> registered = RegisteredKernels();
        TestContext.Out.WriteLine($"{family}.cu declares {declared.Count}: {string.Join(", ", declared)}");
        Assert.That(declared, Is.Not.Empty, $"{family}.cu declares no lk_* entry point");
        Assert.That(declared.Except(registered), Is.Empty, $"entry points of {family}.cu missing from the emulator");
        foreach (string kernel in declared)
            Assert.That(KernelSources.FamilyOf(kernel), Is.EqualTo(family), $"the library's family of {kernel}");
    }

    [Test]
    public void EveryRegisteredKernelHasASource()
    {
        var declared = new SortedSet<string>(KernelSources.Families.SelectMany(f => KernelEntryPoints.Declared(KernelSources.Source(f))),
                                             StringComparer.Ordinal);
        SortedSet<string> registered = RegisteredKernels();
        Assert.That(registered, Is.Not.Empty, "the emulator registers kernels");
        Assert.That(registered.Except(declared), Is.Empty, "emulator kernels that no embedded source declares (stale build?)");
    }
}
