namespace LoraKernels.Tests.Nf4;

/// <summary>
/// The 4-bit ops and the SVD on a real GPU (kernels/nf4.cu through NVRTC, cuSOLVER), against the
/// CPU kernels and the references, with the emulator's cases. Without a CUDA device each test is
/// reported once as skipped, with the reason.
/// </summary>
[TestFixture]
[Category("Cuda")]
public sealed class CudaNf4Tests
{
    private static Device Cuda => Devices.CudaOrIgnore();

    [SetUp]
    public void RequireCuda() => _ = Cuda;

    public static IEnumerable<TestCaseData> OpCases() => Devices.CudaCases("Nf4Ops", 1, Nf4OpsTests.Cases());

    /// <summary>
    /// The shapes a GPU run adds: `in` a multiple of 32 (decode's 16-byte code loads), M = 1, 16 (decode)
    /// and 17, 512 (tiled), plain and nested statistics, both dtypes.
    /// </summary>
    public static IEnumerable<TestCaseData> GpuOpCases() => Devices.CudaCases("Nf4GpuOps", 1,
        from m in new[] { 1, 16, 17, 512 }
        from nested in new[] { false, true }
        from dtype in new[] { DType.F32, DType.BF16 }
        let c = new Nf4Case(m, 256, 72, 8, 64, nested, dtype, m == 17 ? 0.25f : 0f)
        select new TestCaseData(c).SetName("Gpu_" + c));

    public static IEnumerable<TestCaseData> SvdCases() => Devices.CudaCases("Svd", 2,
        new[] { (9, 9), (40, 13), (13, 40), (1, 7) }.Select(s => new TestCaseData(s.Item1, s.Item2).SetName($"Svd_{s.Item1}x{s.Item2}")));

    [TestCaseSource(nameof(OpCases))]
    public void MatmulAndForward(Nf4Case c) => Nf4OpsTests.CheckMatmulAndForward(c, Device.Cpu, Cuda);

    [TestCaseSource(nameof(OpCases))]
    public void Backward(Nf4Case c) => Nf4OpsTests.CheckBackward(c, Device.Cpu, Cuda);

    [TestCaseSource(nameof(GpuOpCases))]
    public void GpuMatmulAndForward(Nf4Case c) => Nf4OpsTests.CheckMatmulAndForward(c, Device.Cpu, Cuda);

    [TestCaseSource(nameof(GpuOpCases))]
    public void GpuBackward(Nf4Case c) => Nf4OpsTests.CheckBackward(c, Device.Cpu, Cuda);

    [TestCaseSource(nameof(SvdCases))]
    public void Svd(int m, int n) => LoftQTests.CheckSvd(Cuda, m, n);
}
