using System.Globalization;
using System.Text.RegularExpressions;
using LoraKernels.Runtime;

namespace LoraKernels.Tests.Kernels;

/// <summary>
/// Every kernel family compiles under NVRTC for sm_80 and sm_90, every declared entry point is in
/// ptxas' resource report, and no kernel spills (DESIGN.md). NVRTC needs no GPU, and it is a
/// required dependency of the build, so where it cannot be loaded these tests fail.
/// </summary>
[TestFixture]
public sealed partial class NvrtcTests
{
    private static readonly string[] Architectures = ["sm_80", "sm_90"];

    public static IEnumerable<TestCaseData> FamilyAndArch() =>
        from family in KernelSources.Families
        from arch in Architectures
        select new TestCaseData(family, arch).SetName($"Nvrtc_{family}_{arch}");

    [Test]
    public void EveryFamilyIsEmbedded()
    {
        Assert.That(KernelSources.Families, Does.Contain("lora").And.Contain("elementwise").And.Contain("optim"));
    }

    [TestCaseSource(nameof(FamilyAndArch))]
    public void CompilesWithoutSpills(string family, string arch)
    {
        RequireNvrtc();
        NvrtcResult result = CompiledKernels.Get(family, arch);
        SortedSet<string> declared = KernelEntryPoints.Declared(KernelSources.Source(family));

        TestContext.Out.WriteLine($"NVRTC {NvrtcCompiler.Version.Major}.{NvrtcCompiler.Version.Minor}, {family}.cu for {arch} ({result.Cubin.Length:N0}-byte cubin)");
        TestContext.Out.WriteLine($"  {"kernel",-34} {"registers",9} {"smem B",8} {"stack B",8} {"spill st",9} {"spill ld",9}");
        foreach (KernelResources k in result.Resources.OrderBy(k => k.Kernel, StringComparer.Ordinal))
            TestContext.Out.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"  {k.Kernel,-34} {k.Registers,9} {k.SharedBytes,8} {k.StackFrameBytes,8} {k.SpillStoreBytes,9} {k.SpillLoadBytes,9}"));

        Assert.That(declared, Is.Not.Empty, $"{family}.cu declares no lk_* entry point");
        Assert.That(result.Cubin, Is.Not.Empty, "cubin");
        Assert.That(result.Resources.Select(k => k.Kernel), Is.EquivalentTo(declared),
                    "ptxas reports exactly the entry points the source declares");
        // Guard against a silently unparsed log, which would make "0 spill bytes" vacuous.
        Assert.That(SpillReport().Matches(result.Log), Has.Count.GreaterThanOrEqualTo(declared.Count),
                    $"ptxas' log has a spill report per entry point:\n{result.Log}");
        Assert.Multiple(() =>
        {
            foreach (KernelResources k in result.Resources)
            {
                Assert.That(k.Arch, Is.EqualTo(arch), $"{k.Kernel} architecture");
                Assert.That(k.Registers, Is.GreaterThan(0), $"{k.Kernel} registers (parsed)");
                Assert.That(k.SpillStoreBytes, Is.Zero, $"{k.Kernel} spill stores on {arch}");
                Assert.That(k.SpillLoadBytes, Is.Zero, $"{k.Kernel} spill loads on {arch}");
            }
        });
    }

    /// <summary>Fails (not skips) with the resolver's list of attempts when NVRTC cannot be loaded.</summary>
    internal static void RequireNvrtc()
    {
        try
        {
            _ = NvrtcCompiler.Version;
        }
        catch (CudaUnavailableException e)
        {
            Assert.Fail($"NVRTC is a required build dependency (Debian: libnvrtc11.2) and could not be loaded: {e.Message}");
        }
    }

    [GeneratedRegex(@"\d+ bytes spill stores, \d+ bytes spill loads")]
    private static partial Regex SpillReport();
}
