namespace LoraKernels.Tests.Parity;

/// <summary>
/// The parity suite on a real GPU: kernels/*.cu on CUDA against the CPU kernels and the
/// double-precision reference, with the same cases as the emulator. Where there is no CUDA device,
/// each test is reported once as skipped, with the reason (never as passed).
/// </summary>
[TestFixture]
[Category("Cuda")]
public sealed class CudaParityTests
{
    /// <summary>The GPU (process-wide, not owned by the fixture), or the test is ignored with the reason.</summary>
    private static Device Cuda => Devices.CudaOrIgnore();

    [SetUp]
    public void RequireCuda() => _ = Cuda;

    public static IEnumerable<TestCaseData> ForwardCases() => Devices.CudaCases("Forward", 1, LoraCaseSources.Forward());
    public static IEnumerable<TestCaseData> BackwardCases() => Devices.CudaCases("Backward", 1, LoraCaseSources.Backward());
    public static IEnumerable<TestCaseData> BackwardSingleOutputCases() => Devices.CudaCases("BackwardSingleOutput", 2, LoraCaseSources.BackwardSingleOutput());
    public static IEnumerable<TestCaseData> MergeCases() => Devices.CudaCases("MergeUnmerge", 1, LoraCaseSources.Merge());
    public static IEnumerable<TestCaseData> GpuForwardCases() => Devices.CudaCases("GpuForward", 1, LoraCaseSources.GpuForward());
    public static IEnumerable<TestCaseData> GpuBackwardCases() => Devices.CudaCases("GpuBackward", 1, LoraCaseSources.GpuBackward());
    public static IEnumerable<TestCaseData> VendorGemmCases() => Devices.CudaCases("VendorGemmForward", 1, LoraVendorGemmTests.Cases());
    public static IEnumerable<TestCaseData> ReluCases() => Devices.CudaCases("Relu", 1, ElementwiseParityTests.Relu());
    public static IEnumerable<TestCaseData> ReluBackwardCases() => Devices.CudaCases("ReluBackward", 1, ElementwiseParityTests.ReluBackward());
    public static IEnumerable<TestCaseData> AxpyCases() => Devices.CudaCases("Axpy", 1, ElementwiseParityTests.Axpy());
    public static IEnumerable<TestCaseData> MseLossCases() => Devices.CudaCases("MseLoss", 1, ElementwiseParityTests.MseLoss());
    public static IEnumerable<TestCaseData> CastCases() => Devices.CudaCases("Cast", 1, ElementwiseParityTests.Cast());
    public static IEnumerable<TestCaseData> FillCases() => Devices.CudaCases("Fill", 1, ElementwiseParityTests.Fill());
    public static IEnumerable<TestCaseData> AdamWCases() => Devices.CudaCases("AdamW", 1, ElementwiseParityTests.AdamW());
    public static IEnumerable<TestCaseData> FirstNonFiniteCases() => Devices.CudaCases("FirstNonFinite", 1, ElementwiseParityTests.FirstNonFinite());

    [TestCaseSource(nameof(ForwardCases))]
    public void Forward(LoraCase c) => LoraParity.Forward(c, Device.Cpu, Cuda);

    [TestCaseSource(nameof(BackwardCases))]
    public void Backward(LoraCase c) => LoraParity.Backward(c, LoraGradients.All, Device.Cpu, Cuda);

    [TestCaseSource(nameof(BackwardSingleOutputCases))]
    public void BackwardSingleOutput(LoraCase c, LoraGradients output) => LoraParity.Backward(c, output, Device.Cpu, Cuda);

    [TestCaseSource(nameof(GpuForwardCases))]
    public void GpuForward(LoraCase c) => LoraParity.Forward(c, Device.Cpu, Cuda);

    [TestCaseSource(nameof(GpuBackwardCases))]
    public void GpuBackward(LoraCase c) => LoraParity.Backward(c, LoraGradients.All, Device.Cpu, Cuda);

    [TestCaseSource(nameof(VendorGemmCases))]
    public void VendorGemmForward(LoraCase c) => LoraParity.Forward(c, LoraForwardPath.VendorGemm, Device.Cpu, Cuda);

    [TestCaseSource(nameof(MergeCases))]
    public void MergeUnmerge(LoraCase c) => LoraParity.MergeUnmerge(c, Device.Cpu, Cuda);

    [TestCaseSource(nameof(ReluCases))]
    public void Relu(ElementwiseCase c) => ElementwiseParity.Relu(c, Device.Cpu, Cuda);

    [TestCaseSource(nameof(ReluBackwardCases))]
    public void ReluBackward(ElementwiseCase c) => ElementwiseParity.ReluBackward(c, Device.Cpu, Cuda);

    [TestCaseSource(nameof(AxpyCases))]
    public void Axpy(ElementwiseCase c) => ElementwiseParity.Axpy(c, Device.Cpu, Cuda);

    [TestCaseSource(nameof(MseLossCases))]
    public void MseLoss(ElementwiseCase c) => ElementwiseParity.MseLoss(c, Device.Cpu, Cuda);

    [TestCaseSource(nameof(FirstNonFiniteCases))]
    public void FirstNonFinite(ElementwiseCase c) => ElementwiseParity.FirstNonFinite(c, Device.Cpu, Cuda);

    [TestCaseSource(nameof(CastCases))]
    public void Cast(ElementwiseCase c) => ElementwiseParity.Cast(c, Device.Cpu, Cuda);

    [TestCaseSource(nameof(FillCases))]
    public void Fill(ElementwiseCase c) => ElementwiseParity.Fill(c, Device.Cpu, Cuda);

    [TestCaseSource(nameof(AdamWCases))]
    public void AdamW(ElementwiseCase c) => OptimizerParity.AdamW(c, Device.Cpu, Cuda);

    [Test]
    public void LeavesNoAllocations()
    {
        Device cuda = Cuda;
        long before = cuda.LiveAllocations;
        LoraParity.Forward(new LoraCase(new LoraShape(33, 97, 53, 8), DType.BF16, Bias: true, Dropout: 0.25f), Cuda);
        LoraParity.Backward(new LoraCase(new LoraShape(33, 97, 53, 8), DType.F32, Bias: false, Dropout: 0.25f), LoraGradients.All, Cuda);
        Assert.That(cuda.LiveAllocations, Is.EqualTo(before), "live allocations on the GPU after disposing everything");
    }
}
