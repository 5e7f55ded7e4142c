using LoraKernels.Optim;

namespace LoraKernels.Tests.Optim;

/// <summary>
/// The fused AdamW (one launch for every parameter) against torch.optim.AdamW in double over 50 steps, with two
/// parameter groups; CPU against the emulator; and the base optimizer's gradient clipping, accumulation and
/// schedules, each against what it must equal.
/// </summary>
[TestFixture]
public sealed class AdamWTests
{
    private const float Lr = 1e-2f, Beta1 = 0.9f, Beta2 = 0.999f, Eps = 1e-8f;

    // Per element, each step's fp32 roundings are a few units of 2⁻²⁴ of the magnitudes Reference.AdamW sums over
    // the steps (|p| and the update's terms), and an error in m or v decays by β per step, so after t steps
    // |device - reference| ≤ Atol·lr + 8·2⁻²⁴·Σ_steps(|p| + lr·(|m̂| + |ĝ|)/(√v̂ + eps)); a BF16 parameter also carries
    // the final rounding of its fp32 master copy, 2⁻⁸·|p|.
    [TestCaseSource(typeof(OptimizerProblem), nameof(OptimizerProblem.CpuAndSimt))]
    public void FiftyStepsInTwoGroupsMatchTorchInDouble(DeviceKind kind)
    {
        const int steps = 50;
        using var problem = new OptimizerProblem(OptimizerProblem.On(kind), "AdamW50");
        ParameterGroup[] groups = problem.TwoGroups(Lr);
        using var optimizer = new AdamW(groups, Beta1, Beta2, Eps);
        problem.Train(optimizer, 1, steps);
        Assert.That(optimizer.StepCount, Is.EqualTo(steps));

        float[][] values = problem.Values();
        for (int i = 0; i < problem.Parameters.Length; i++)
        {
            ParameterGroup group = groups.Single(g => g.Parameters.Contains(problem.Parameters[i]));
            double[] expected = Array.ConvertAll(problem.Initial[i], v => (double)v);
            float[][] gradients = Enumerable.Range(1, steps).Select(t => problem.Gradients(t)[i]).ToArray();
            double[] magnitude = Reference.AdamW(expected, gradients, group.LearningRate, Beta1, Beta2, Eps, group.WeightDecay);
            double outputRounding = Tolerance.OutputRounding(problem.Parameters[i].Value.DType);
            double[] bound = expected.Select((p, e) => Tolerance.Atol * Lr + 8 * Tolerance.Fp32Unit * magnitude[e] + outputRounding * Math.Abs(p)).ToArray();
            Expect.NotVacuous($"{problem.Parameters[i].Name} reference", expected);
            double moved = expected.Select((p, e) => Math.Abs(p - problem.Initial[i][e])).Min();
            Assert.That(moved, Is.GreaterThan(bound.Max()), $"{problem.Parameters[i].Name}: every element moves by more than the tolerance");
            Expect.Close($"{kind} AdamW {problem.Parameters[i].Name} after {steps} steps", values[i], expected, bound);
        }
    }

    // The CPU kernel and the emulator run kernels/adamw_math.cuh's fp32 operations in the same order, both compiled
    // without FMA contraction, so with clipping and accumulation on they agree bit for bit (a GPU contracts
    // multiply-adds and agrees to rounding: CudaOptimizerTests).
    [Test]
    public void CpuAndEmulatorAgreeBitForBit()
    {
        float[][] Run(Device device)
        {
            using var problem = new OptimizerProblem(device, "AdamWParity");
            using var optimizer = new AdamW(problem.TwoGroups(Lr)) { MaxGradNorm = 3f };
            problem.Train(optimizer, 1, 6);
            Assert.That(optimizer.LastGradNorm, Is.GreaterThan(3.0), "the clipping was active");
            return problem.Values();
        }
        OptimizerProblem.ExpectSameBits("Cpu vs Simt AdamW", Run(Device.Cpu), Run(Device.Simt));
    }

    // torch's clip_grad_norm_: the global L2 norm over every parameter's gradient, scale max/(norm + 1e-6) when it
    // exceeds max. The reference clips in double; the device multiplies each gradient by the fp32-rounded
    // coefficient (one more rounding, 2⁻²⁴ of g), so the tolerance is the 50-step one's with a 12·2⁻²⁴ factor.
    [TestCaseSource(typeof(OptimizerProblem), nameof(OptimizerProblem.CpuAndSimt))]
    public void ClippingScalesEveryGradientByTheGlobalNorm(DeviceKind kind)
    {
        const int steps = 5;
        const float maxNorm = 2f;
        using var problem = new OptimizerProblem(OptimizerProblem.On(kind), "AdamWClip");
        using var optimizer = new AdamW(problem.Parameters, Lr, Beta1, Beta2, Eps, weightDecay: 0.05f) { MaxGradNorm = maxNorm };
        var clipped = new List<float[][]>();
        for (int t = 1; t <= steps; t++)
        {
            float[][] g = problem.Gradients(t);
            double norm = Math.Sqrt(g.Sum(a => a.Sum(x => (double)x * x)));
            double coefficient = Math.Min(1.0, maxNorm / (norm + 1e-6));
            Assert.That(coefficient, Is.LessThan(0.1), "the gradients are far above the clipping norm");
            clipped.Add(g.Select(a => a.Select(x => (float)(x * coefficient)).ToArray()).ToArray());
            problem.SetGradients(g);
            Assert.That(optimizer.Step(), Is.True);
            Assert.That(optimizer.LastGradNorm!.Value, Is.EqualTo(norm).Within(1e-12).Percent, "the norm is summed in double");
        }
        float[][] values = problem.Values();
        for (int i = 0; i < problem.Parameters.Length; i++)
        {
            double[] expected = Array.ConvertAll(problem.Initial[i], v => (double)v);
            double[] magnitude = Reference.AdamW(expected, clipped.Select(c => c[i]).ToArray(), Lr, Beta1, Beta2, Eps, 0.05);
            double outputRounding = Tolerance.OutputRounding(problem.Parameters[i].Value.DType);
            double[] bound = expected.Select((p, e) => Tolerance.Atol * Lr + 12 * Tolerance.Fp32Unit * magnitude[e] + outputRounding * Math.Abs(p)).ToArray();
            Expect.Close($"{kind} clipped AdamW {problem.Parameters[i].Name}", values[i], expected, bound);
        }
    }

    // Gradients summed over k calls (as the tape sums them) and applied on the k-th as their mean equal one step
    // with the mean: for k = 2 the scale 0.5 is exact, so the two runs agree bit for bit.
    [TestCaseSource(typeof(OptimizerProblem), nameof(OptimizerProblem.CpuAndSimt))]
    public void AccumulationAppliesTheMeanOnTheLastCall(DeviceKind kind)
    {
        Device device = OptimizerProblem.On(kind);
        using var accumulating = new OptimizerProblem(device, "AdamWAccumulate");
        using var plain = new OptimizerProblem(device, "AdamWAccumulate");
        using var a = new AdamW(accumulating.Parameters, Lr) { AccumulationSteps = 2 };
        using var b = new AdamW(plain.Parameters, Lr);
        for (int step = 1; step <= 3; step++)
        {
            float[][] first = accumulating.Gradients(2 * step), second = accumulating.Gradients(2 * step + 1);
            float[][] sum = first.Select((g, i) => g.Select((x, e) => x + second[i][e]).ToArray()).ToArray();
            accumulating.SetGradients(first);
            Assert.That(a.Step(), Is.False, "the first call accumulates");
            a.ZeroGrad();
            Assert.That(accumulating.Parameters[0].Grad, Is.Not.Null, "ZeroGrad keeps an accumulating gradient");
            Assert.That(a.PendingAccumulation, Is.EqualTo(1));
            accumulating.SetGradients(sum);  // what the tape's second backward leaves
            Assert.That(a.Step(), Is.True, "the second call applies");
            a.ZeroGrad();
            Assert.That(accumulating.Parameters[0].Grad, Is.Null, "ZeroGrad frees the gradients at a step boundary");

            plain.SetGradients(sum.Select(g => g.Select(x => x * 0.5f).ToArray()).ToArray());
            Assert.That(b.Step(), Is.True);
            b.ZeroGrad();
        }
        Assert.That(a.StepCount, Is.EqualTo(3), "only applied steps count");
        OptimizerProblem.ExpectSameBits($"{kind} accumulated vs mean", plain.Values(), accumulating.Values());
    }

    // A schedule multiplies each group's rate by its factor at the step: the same bits as setting every group's
    // LearningRate by hand before each step.
    [TestCaseSource(typeof(OptimizerProblem), nameof(OptimizerProblem.CpuAndSimt))]
    public void ScheduleSetsEachGroupsRateEachStep(DeviceKind kind)
    {
        Device device = OptimizerProblem.On(kind);
        LearningRateSchedule schedule = LearningRateSchedule.Cosine(totalSteps: 6, warmupSteps: 2, minimumFactor: 0.1);
        using var scheduled = new OptimizerProblem(device, "AdamWSchedule");
        using var manual = new OptimizerProblem(device, "AdamWSchedule");
        ParameterGroup[] scheduledGroups = scheduled.TwoGroups(Lr), manualGroups = manual.TwoGroups(Lr);
        using var a = new AdamW(scheduledGroups) { Schedule = schedule };
        using var b = new AdamW(manualGroups);
        for (int step = 1; step <= 7; step++)
        {
            double factor = schedule.Factor(step - 1);
            for (int g = 0; g < 2; g++)
            {
                Assert.That(a.ScheduledLearningRate(scheduledGroups[g]), Is.EqualTo((float)(scheduledGroups[g].LearningRate * factor)));
                manualGroups[g].LearningRate = (float)(scheduledGroups[g].LearningRate * factor);
            }
            scheduled.Train(a, step, step);
            manual.Train(b, step, step);
            for (int g = 0; g < 2; g++) manualGroups[g].LearningRate = scheduledGroups[g].LearningRate;
        }
        Assert.That(schedule.Factor(0), Is.Zero, "warm-up starts at 0, as LambdaLR's first step");
        OptimizerProblem.ExpectSameBits($"{kind} scheduled vs manual", manual.Values(), scheduled.Values());
        Assert.That(scheduled.Values()[2], Is.Not.EqualTo(scheduled.Initial[2]), "the parameters moved");
    }

    // The segment layouts the kernels read (kernels/optim_segments.cuh); native/cpu/optim.cpp static_asserts the same sizes.
    [Test]
    public void SegmentLayoutsMatchTheKernels()
    {
        Assert.That(System.Runtime.InteropServices.Marshal.SizeOf<AdamWSegment>(), Is.EqualTo(72));
        Assert.That(System.Runtime.InteropServices.Marshal.SizeOf<AdamW8bitSegment>(), Is.EqualTo(88));
        Assert.That(System.Runtime.InteropServices.Marshal.SizeOf<GradSpan>(), Is.EqualTo(24));
    }
}
