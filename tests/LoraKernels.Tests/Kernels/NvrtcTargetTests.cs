using LoraKernels.Runtime;

namespace LoraKernels.Tests.Kernels;

/// <summary>
/// The NVRTC target a GPU gets: its own sm_XY when NVRTC knows it; an older cubin of the same major
/// (which the GPU runs); PTX for the newest older compute_XY when the GPU is newer than NVRTC (sm_100
/// and sm_120 with NVRTC 11.8), which the driver JIT-compiles; an error naming both when the GPU is
/// older than everything NVRTC supports. Then the fallback's PTX is built by the NVRTC installed here.
/// </summary>
[TestFixture]
public sealed class NvrtcTargetTests
{
    // nvrtcGetSupportedArchs of NVRTC 11.8 and of a CUDA 12.8-like NVRTC (which dropped sm_35 to sm_50).
    private static readonly int[] Nvrtc118 = [35, 37, 50, 52, 53, 60, 61, 62, 70, 72, 75, 80, 86, 87, 89, 90];
    private static readonly int[] Nvrtc128 = [50, 52, 53, 60, 61, 62, 70, 72, 75, 80, 86, 87, 89, 90, 100, 101, 120];

    public static IEnumerable<TestCaseData> Choices()
    {
        TestCaseData Case(int major, int minor, int[] supported, string arch, bool cubin, string why) =>
            new TestCaseData(major, minor, supported, arch, cubin).SetName($"Target_sm{major}{minor}_{why}");
        yield return Case(8, 0, Nvrtc118, "sm_80", true, "A100_own_cubin");
        yield return Case(9, 0, Nvrtc118, "sm_90", true, "H100_own_cubin");
        yield return Case(8, 6, [80, 90], "sm_80", true, "missing_minor_runs_the_major_s_older_cubin");
        yield return Case(10, 0, Nvrtc118, "compute_90", false, "B200_with_NVRTC_11_8_gets_PTX");
        yield return Case(12, 0, Nvrtc118, "compute_90", false, "RTX5090_with_NVRTC_11_8_gets_PTX");
        yield return Case(10, 0, Nvrtc128, "sm_100", true, "B200_with_a_newer_NVRTC");
        yield return Case(10, 3, Nvrtc128, "sm_101", true, "newer_minor_runs_the_older_minor_s_cubin");
        yield return Case(11, 0, Nvrtc128, "compute_101", false, "unknown_major_gets_the_newest_older_PTX");
    }

    [TestCaseSource(nameof(Choices))]
    public void PicksTheTarget(int major, int minor, int[] supported, string arch, bool cubin)
    {
        Assert.That(NvrtcTarget.For((major, minor), supported), Is.EqualTo(new NvrtcTarget(arch, cubin)));
    }

    [Test]
    public void AGpuOlderThanEveryTargetIsRefusedWithBothNamed()
    {
        var error = Assert.Throws<NotSupportedException>(() => NvrtcTarget.For((3, 0), Nvrtc118))!;
        Assert.That(error.Message, Does.Contain("sm_30").And.Contain("sm_35").And.Contain("sm_90"));
    }

    [Test]
    public void TheInstalledNvrtcListsTheTestedArchitectures()
    {
        NvrtcTests.RequireNvrtc();
        IReadOnlyList<int> supported = NvrtcCompiler.SupportedArchitectures;
        TestContext.Out.WriteLine($"NVRTC {NvrtcCompiler.Version.Major}.{NvrtcCompiler.Version.Minor}: {string.Join(" ", supported)}");
        Assert.That(supported, Does.Contain(80).And.Contain(90));
        Assert.That(supported, Is.Ordered);
        Assert.That(NvrtcTarget.For((9, 0), supported), Is.EqualTo(new NvrtcTarget("sm_90", true)));
        int newest = supported.Max();
        NvrtcTarget future = NvrtcTarget.For((newest / 10 + 1, 0), supported);
        Assert.That(future, Is.EqualTo(new NvrtcTarget($"compute_{newest}", false)), "a GPU one major newer than this NVRTC");
    }

    [Test]
    public void TheFallbackTargetCompilesToPtxOnly()
    {
        NvrtcTests.RequireNvrtc();
        NvrtcResult result = NvrtcCompiler.Compile("elementwise", "compute_90");
        Assert.That(result.Cubin, Is.Empty, "a virtual architecture gives no cubin");
        Assert.That(result.Ptx, Does.Contain(".target sm_90").And.Contain(".entry lk_ew_fill_f32"));
    }
}
