namespace LoraKernels.Tests.VeraAdapter;

/// <summary>
/// The VeRA parity cases on a real GPU (kernels/vera.cu with kernels/lora.cu on CUDA) against the
/// CPU kernels and the reference. Where there is no CUDA device each test is reported once as
/// skipped, with the reason (never as passed).
/// </summary>
[TestFixture]
[Category("Cuda")]
public sealed class VeraCudaTests
{
    private static Device Cuda => Devices.CudaOrIgnore();

    public static IEnumerable<TestCaseData> ForwardCases() =>
        Devices.CudaCases("VeraForward", 1, VeraTests.Cases().Select(c => new TestCaseData(c).SetName("VeraForward_" + c)));

    public static IEnumerable<TestCaseData> BackwardCases() =>
        Devices.CudaCases("VeraBackward", 1, VeraTests.Cases().Select(c => new TestCaseData(c).SetName("VeraBackward_" + c)));

    public static IEnumerable<TestCaseData> MergeCases() =>
        Devices.CudaCases("VeraMergeUnmerge", 1, new[] { DType.F32, DType.BF16 }.Select(d => new TestCaseData(d).SetName("VeraMergeUnmerge_" + d)));

    [TestCaseSource(nameof(ForwardCases))]
    public void Forward(VeraCase c) => VeraTests.Forward(c, Device.Cpu, Cuda);

    [TestCaseSource(nameof(BackwardCases))]
    public void Backward(VeraCase c) => VeraTests.Backward(c, Device.Cpu, Cuda);

    [TestCaseSource(nameof(MergeCases))]
    public void MergeUnmerge(DType dtype) => VeraTests.MergeUnmerge(dtype, Device.Cpu, Cuda);
}
