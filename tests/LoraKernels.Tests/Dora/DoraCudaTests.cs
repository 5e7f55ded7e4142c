namespace LoraKernels.Tests.Dora;

/// <summary>
/// Every DoRA and QDoRA kernel on a real GPU (kernels/dora.cu, nf4.cu's projection and lora.cu's GEMMs
/// on CUDA) against the CPU kernels and the double references, with the emulator's cases: the norm of
/// near-cancelling rows (its direct recomputation path included), every op of a step and the merge,
/// the quantized base, and PEFT's dropout path. Without a CUDA device each test is reported once as
/// skipped, with the reason.
/// </summary>
[TestFixture]
[Category("Cuda")]
public sealed class DoraCudaTests
{
    private static Device Cuda => Devices.CudaOrIgnore();

    public static IEnumerable<TestCaseData> CancellingCases() => Devices.CudaCases("DoraCancellingRowNorms", 2,
        from dtype in new[] { DType.F32, DType.BF16 }
        from depth in new[] { 1e-3, 1e-5, 1e-7 }
        select new TestCaseData(dtype, depth).SetName($"DoraCancellingRowNorms_{dtype}_{depth:0e0}"));

    public static IEnumerable<TestCaseData> DTypes() => Devices.CudaCases("DoraEveryOp", 1,
        new[] { DType.F32, DType.BF16 }.Select(d => new TestCaseData(d).SetName($"DoraEveryOp_{d}")));

    public static IEnumerable<TestCaseData> DropoutCases() => Devices.CudaCases("DoraDropout", 1,
        new[] { false, true }.Select(q => new TestCaseData(q).SetName(q ? "DoraDropout_Quantized" : "DoraDropout_Dense")));

    [TestCaseSource(nameof(CancellingCases))]
    public void CancellingRowNorms(DType dtype, double depth) => DoraCpuSimtParityTests.CancellingRowNormsAgree(dtype, depth, Cuda);

    [TestCaseSource(nameof(DTypes))]
    public void EveryOp(DType dtype) => DoraCpuSimtParityTests.EveryOpAgrees(dtype, Cuda);

    [Test]
    public void QDoraStep() => QDoraTests.CpuAndDeviceAgree(Cuda);

    [TestCaseSource(nameof(DropoutCases))]
    public void DropoutPath(bool quantized) => DoraDropoutTests.CpuAndDeviceAgree(quantized, Cuda);
}
