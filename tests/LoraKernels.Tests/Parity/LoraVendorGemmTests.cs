namespace LoraKernels.Tests.Parity;

/// <summary>
/// The vendor GEMM path of Lora.Forward (LoraForwardPath.VendorGemm: PEFT's cuBLAS sequence, the
/// benchmarks' baseline and a fallback) under the emulator, where the CPU GEMM stands in for cuBLAS:
/// the same reference and the CPU's fused result, with PEFT's extra bf16 roundings allowed
/// (LoraParity.Forward). The GPU run is CudaParityTests.VendorGemmForward. Bad input: the CPU device and
/// an undefined path are refused before anything is allocated.
/// </summary>
[TestFixture]
public sealed class LoraVendorGemmTests
{
    public static IEnumerable<TestCaseData> Cases() =>
        LoraCases.Named("VendorGemmForward",
            from shape in new[] { new LoraShape(1, 97, 53, 8), new LoraShape(33, 33, 130, 16), new LoraShape(70, 256, 72, 4) }
            from dtype in new[] { DType.F32, DType.BF16 }
            from bias in new[] { false, true }
            from dropout in new[] { 0f, 0.25f }
            select new LoraCase(shape, dtype, bias, dropout));

    [TestCaseSource(nameof(Cases))]
    public void MatchesTheReferenceAndTheFusedCpu(LoraCase c) => LoraParity.Forward(c, LoraForwardPath.VendorGemm, Device.Cpu, Device.Simt);

    [Test]
    public void TheCpuDeviceAndAnUndefinedPathAreRefused()
    {
        using var x = Tensor.Zeros(Device.Cpu, DType.F32, 2, 4);
        using var w0 = Tensor.Zeros(Device.Cpu, DType.F32, 3, 4);
        using var a = Tensor.Zeros(Device.Cpu, DType.F32, 1, 4);
        using var b = Tensor.Zeros(Device.Cpu, DType.F32, 3, 1);
        long before = Device.Cpu.LiveAllocations;
        var cpu = Assert.Throws<NotSupportedException>(() => Lora.Forward(x, w0, null, a, b, 1f, path: LoraForwardPath.VendorGemm))!;
        Assert.That(cpu.Message, Does.Contain("VendorGemm").And.Contain("cpu"));
        var undefined = Assert.Throws<ArgumentOutOfRangeException>(() => Lora.Forward(x, w0, null, a, b, 1f, path: (LoraForwardPath)7))!;
        Assert.That(undefined.ParamName, Is.EqualTo("path"));
        Assert.That(Device.Cpu.LiveAllocations, Is.EqualTo(before), "nothing allocated before the refusal");
    }
}
