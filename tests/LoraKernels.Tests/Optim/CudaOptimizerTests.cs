using LoraKernels.Optim;

namespace LoraKernels.Tests.Optim;

/// <summary>
/// The optimizers on a GPU against the CPU (skipped where there is no GPU). NVRTC contracts multiply-adds into
/// FMAs, so values agree to rounding, not bit for bit: AdamW within 8·2⁻²⁴ of the 50-step magnitudes (as
/// AdamWTests bounds fp32 against double, twice: both sides err); 8-bit AdamW may then pick a neighbouring code
/// where a moment lies within an ulp of a midpoint, which moves that element's next updates by at most a
/// code spacing's share of lr: |Δp| ≤ steps · lr · 0.02. Paged state (pinned host memory through the copy
/// stream) must still equal resident state on the GPU bit for bit.
/// </summary>
[TestFixture]
[Category("Cuda")]
public sealed class CudaOptimizerTests
{
    private const int Steps = 10;
    private const float Lr = 1e-2f;

    [TestCase("AdamW")]
    [TestCase("AdamW8bit")]
    public void GpuAgreesWithCpuAndPagedEqualsResident(string name)
    {
        Device cuda = Devices.CudaOrIgnore();
        float[][] Run(Device device, StatePaging? paging)
        {
            using var problem = new OptimizerProblem(device, "Cuda" + name);
            using Optimizer optimizer = name == "AdamW" ? new AdamW(problem.TwoGroups(Lr), paging: paging) : new AdamW8bit(problem.TwoGroups(Lr), paging: paging);
            optimizer.MaxGradNorm = 20f;
            problem.Train(optimizer, 1, Steps);
            return problem.Values();
        }
        float[][] cpu = Run(Device.Cpu, null), gpu = Run(cuda, null), paged = Run(cuda, new StatePaging(StatePaging.MinimumWorkingBytes));
        OptimizerProblem.ExpectSameBits($"{name} paged vs resident on the GPU", gpu, paged);
        for (int i = 0; i < cpu.Length; i++)
        {
            double[] bound = name == "AdamW"
                ? cpu[i].Select(v => Tolerance.Atol + 16 * Tolerance.Fp32Unit * Steps * (Math.Abs(v) + Lr) + (i == 3 ? Tolerance.Bf16Rounding * Math.Abs(v) : 0)).ToArray()
                : cpu[i].Select(v => Steps * Lr * 0.02 + (i == 3 ? Tolerance.Bf16Rounding * Math.Abs(v) : 0)).ToArray();
            Expect.Close($"{name} GPU vs CPU, parameter {i}", gpu[i], Array.ConvertAll(cpu[i], v => (double)v), bound);
        }
    }
}
