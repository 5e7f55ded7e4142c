using LoraKernels.Runtime;

namespace LoraKernels.Tests.Kernels;

/// <summary>
/// The tensor-core kernels are tensor-core kernels in the PTX NVRTC makes of them: for sm_80 and sm_90
/// each *_mma_bf16 entry point holds mma.sync m16n8k16 with bf16 inputs and fp32 accumulators, ldmatrix
/// (.trans where an operand is stored N-contiguous: the input gradients' W), cp.async with its waits and
/// the L2 prefetch hint. Then the guards: compiled for sm_75 (no bf16 mma, no cp.async) the same entry
/// points hold neither and trap instead, and with LK_CP_ASYNC_L2_PREFETCH=0 (what NVRTC before 11.4
/// gets) the copies carry no hint. Zero spills for these are NvrtcTests' check.
/// </summary>
[TestFixture]
public sealed class TensorCorePtxTests
{
    private static readonly (string Family, string Kernel)[] MmaKernels =
    [
        ("lora", "lk_lora_forward_mma_bf16"),
        ("lora", "lk_lora_grad_x_mma_bf16"),
        ("nf4", "lk_nf4_matmul_mma_bf16"),
        ("nf4", "lk_nf4_qlora_forward_mma_bf16"),
        ("nf4", "lk_nf4_grad_x_mma_bf16"),
    ];

    public static IEnumerable<TestCaseData> KernelsAndArchitectures() =>
        from k in MmaKernels
        from arch in new[] { "sm_80", "sm_90" }
        select new TestCaseData(k.Family, k.Kernel, arch).SetName($"TensorCorePtx_{k.Kernel}_{arch}");

    [TestCaseSource(nameof(KernelsAndArchitectures))]
    public void MmaLdmatrixAndCpAsyncAreInThePtx(string family, string kernel, string arch)
    {
        NvrtcTests.RequireNvrtc();
        string ptx = CompiledKernels.EntryPtx(CompiledKernels.Get(family, arch).Ptx, kernel);
        Assert.That(ptx, Is.Not.Empty, $"{kernel} in the PTX of {family}.cu for {arch}");
        Assert.Multiple(() =>
        {
            Assert.That(ptx, Does.Contain("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32"));
            Assert.That(ptx, Does.Contain("ldmatrix.sync.aligned.m8n8.x4.shared.b16"));
            Assert.That(ptx, Does.Contain("cp.async.cg.shared.global.L2::128B"));
            Assert.That(ptx, Does.Contain("cp.async.commit_group"));
            Assert.That(ptx, Does.Contain("cp.async.wait_group 1"));
            Assert.That(ptx, Does.Contain("cp.async.wait_group 0"));
        });
    }

    [TestCase("lk_lora_grad_x_mma_bf16", TestName = "TensorCorePtx_NContiguousW0IsReadTransposed_lora_grad_x")]
    [TestCase("lk_nf4_grad_x_mma_bf16", TestName = "TensorCorePtx_NContiguousWIsReadTransposed_nf4_grad_x")]
    public void TheInputGradientReadsWTransposed(string kernel)
    {
        NvrtcTests.RequireNvrtc();
        string family = kernel.Split('_')[1];
        string ptx = CompiledKernels.EntryPtx(CompiledKernels.Get(family, "sm_80").Ptx, kernel);
        Assert.That(ptx, Does.Contain("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16"));
    }

    [Test]
    public void BeforeSm80TheTensorCoreKernelsTrapInsteadOfUsingMissingInstructions()
    {
        NvrtcTests.RequireNvrtc();
        NvrtcResult result = CompiledKernels.Get("lora", "sm_75");
        Assert.That(result.Resources.Where(k => k.Kernel.Contains("_mma_", StringComparison.Ordinal)).Select(k => k.SpillStoreBytes),
                    Is.All.Zero, "sm_75 build without spills");
        foreach (string kernel in new[] { "lk_lora_forward_mma_bf16", "lk_lora_grad_x_mma_bf16" })
        {
            string ptx = CompiledKernels.EntryPtx(result.Ptx, kernel);
            Assert.That(ptx, Is.Not.Empty, kernel);
            Assert.That(ptx, Does.Not.Contain("mma.sync").And.Not.Contain("cp.async"), $"{kernel} for sm_75");
            Assert.That(ptx, Does.Contain("trap;"), $"{kernel} for sm_75 traps (the launchers pick it only on sm_80+)");
        }
        string fma = CompiledKernels.EntryPtx(result.Ptx, "lk_lora_forward_tiled_bf16");
        Assert.That(fma, Does.Not.Contain("trap;"), "the CUDA-core kernels serve sm_75");
    }

    [Test]
    public void WithoutTheL2PrefetchHintTheCopiesArePlain()
    {
        NvrtcTests.RequireNvrtc();
        string plain = CompiledKernels.EntryPtx(CompiledKernels.Get("lora", "sm_80", "-DLK_CP_ASYNC_L2_PREFETCH=0").Ptx,
                                                "lk_lora_forward_mma_bf16");
        Assert.That(plain, Does.Contain("cp.async.cg.shared.global [").And.Not.Contain("L2::128B"));
    }
}
