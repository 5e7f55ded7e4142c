using LoraKernels.Autograd;
using LoraKernels.Optim;
using LoraKernels.Runtime;

namespace LoraKernels.Tests.Optim;

/// <summary>
/// bitsandbytes' 8-bit AdamW against AdamW8bitReference (the blockwise algorithm written in the test, with its own
/// code tables and search): parameters, codes and absmax after 20 steps; the state's memory; its quantization
/// error against fp32 moments; and the small-parameter fp32 path.
/// </summary>
[TestFixture]
public sealed class AdamW8bitTests
{
    private const float Lr = 1e-2f, Beta1 = 0.9f, Beta2 = 0.999f, Eps = 1e-8f, WeightDecay = 0.02f;

    // Tolerance: zero. The reference does bitsandbytes' fp32 operations in bitsandbytes' order, as the kernels do
    // (kernels/adamw_math.cuh), and neither .NET nor the CPU kernels nor the emulator contract multiply-adds, so
    // every value, code and absmax agrees bit for bit; one differing rounding would also flip codes, so nothing
    // looser would stay meaningful over 20 steps. (A GPU contracts; CudaOptimizerTests states its bound.)
    [TestCaseSource(typeof(OptimizerProblem), nameof(OptimizerProblem.CpuAndSimt))]
    public void TwentyStepsMatchTheBlockwiseReferenceBitForBit(DeviceKind kind)
    {
        const int steps = 20;
        const float gradScale = 1f;
        (string, int, DType)[] shapes = [("p4099", 4099, DType.F32), ("p4096", 4096, DType.F32), ("bf16_5003", 5003, DType.BF16)];
        using var problem = new OptimizerProblem(OptimizerProblem.On(kind), "AdamW8bit20", shapes);
        using var optimizer = new AdamW8bit(problem.Parameters, Lr, Beta1, Beta2, Eps, WeightDecay);
        var references = problem.Initial.Select(p => new AdamW8bitReference(p, Beta1, Beta2, Eps)).ToArray();
        for (int t = 1; t <= steps; t++)
        {
            float[][] g = problem.Gradients(t);
            problem.SetGradients(g);
            Assert.That(optimizer.Step(), Is.True);
            for (int i = 0; i < references.Length; i++)
            {
                references[i].Step(g[i], Lr, WeightDecay, gradScale);
                if (problem.Parameters[i].Value.DType == DType.BF16)
                    Array.Copy(Reference.RoundTo(DType.BF16, references[i].Parameter), references[i].Parameter, references[i].Parameter.Length);
            }
        }
        for (int i = 0; i < references.Length; i++)
        {
            Parameter parameter = problem.Parameters[i];
            Assert.That(optimizer.IsBlockwise(parameter), Is.True);
            Expect.Exact($"{kind} 8-bit {parameter.Name}", parameter.Value.ToArray(), references[i].Parameter);
            Assert.That(Bytes(optimizer, parameter, "state1"), Is.EqualTo(references[i].MCodes), $"{parameter.Name} m codes");
            Assert.That(Bytes(optimizer, parameter, "state2"), Is.EqualTo(references[i].VCodes), $"{parameter.Name} v codes");
            Expect.Exact($"{parameter.Name} m absmax", Floats(optimizer, parameter, "absmax1"), references[i].MAbsmax);
            Expect.Exact($"{parameter.Name} v absmax", Floats(optimizer, parameter, "absmax2"), references[i].VAbsmax);
            Assert.That(references[i].MCodes.Distinct().Count(), Is.GreaterThan(30), "the codes spread over the map");
            Assert.That(references[i].Parameter, Is.Not.EqualTo(problem.Initial[i]), "the parameters moved");
        }
    }

    // The reference's search is the nearest code except where x lies on a midpoint (bnb keeps the pivot there):
    // checked over every code and every midpoint, so the reference itself is right.
    [Test]
    public void ReferenceSearchIsTheNearestCode()
    {
        foreach (float[] map in new[] { AdamW8bitReference.SignedMap, AdamW8bitReference.UnsignedMap })
        {
            for (int c = 0; c < 256; c++)
            {
                Assert.That(AdamW8bitReference.Search(map, map[c]), Is.EqualTo(c), $"code {c} encodes to itself");
                if (c == 255) continue;
                float between = map[c] + 0.25f * (map[c + 1] - map[c]), near = map[c + 1] - 0.25f * (map[c + 1] - map[c]);
                Assert.That(AdamW8bitReference.Search(map, between), Is.EqualTo(c), $"a quarter above code {c}");
                Assert.That(AdamW8bitReference.Search(map, near), Is.EqualTo(c + 1), $"a quarter below code {c + 1}");
            }
        }
    }

    // The dequantized moments against fp32 moments of the same gradients after one step (the first step quantizes
    // exact fp32 moments): each is within half a code spacing of its block's normalized value, times the absmax:
    // |dq(m) - m| ≤ absmax · max gap / 2, where the dynamic maps' largest gap is 0.9/64 ≈ 0.0141 (top decade,
    // signed) and 0.9/128 (unsigned). The fp32 moments are (1-β1)·g and (1-β2)·g².
    [TestCaseSource(typeof(OptimizerProblem), nameof(OptimizerProblem.CpuAndSimt))]
    public void StateIsWithinHalfACodeOfTheFp32Moments(DeviceKind kind)
    {
        (string, int, DType)[] shapes = [("p5000", 5000, DType.F32)];
        using var problem = new OptimizerProblem(OptimizerProblem.On(kind), "AdamW8bitError", shapes);
        using var optimizer = new AdamW8bit(problem.Parameters, Lr, Beta1, Beta2, Eps, WeightDecay);
        float[] g = problem.Gradients(1)[0];
        problem.SetGradients([g]);
        optimizer.Step();
        byte[] m = Bytes(optimizer, problem.Parameters[0], "state1"), v = Bytes(optimizer, problem.Parameters[0], "state2");
        float[] mAbsmax = Floats(optimizer, problem.Parameters[0], "absmax1"), vAbsmax = Floats(optimizer, problem.Parameters[0], "absmax2");
        for (int i = 0; i < g.Length; i++)
        {
            int block = i / AdamW8bit.BlockSize;
            float mExact = (1 - Beta1) * g[i], vExact = (float)(1 - (double)Beta2) * g[i] * g[i];
            float mq = AdamW8bitReference.SignedMap[m[i]] * mAbsmax[block], vq = AdamW8bitReference.UnsignedMap[v[i]] * vAbsmax[block];
            Assert.That(Math.Abs(mq - mExact), Is.LessThanOrEqualTo(mAbsmax[block] * 0.0141 / 2 * 1.0001), $"m[{i}]");
            Assert.That(Math.Abs(vq - vExact), Is.LessThanOrEqualTo(vAbsmax[block] * 0.0071 / 2 * 1.0001), $"v[{i}]");
            Assert.That(Math.Sign(mq), Is.EqualTo(Math.Sign(mExact)), $"m[{i}] keeps its sign (bnb's nudge)");
        }
    }

    // bitsandbytes keeps fp32 state for parameters below min_8bit_size (4096) and steps them with its 32-bit Adam
    // (decay after the step, eps·√(1 - β2^t) beside √v): written out here in fp32, bitsandbytes' operation order, so
    // again bit for bit. Memory: 8 bytes an element for fp32 state; 2 bytes an element plus 8 per 256-element block
    // for 8-bit state (REFERENCE.md §8.7), measured from the buffers.
    [TestCaseSource(typeof(OptimizerProblem), nameof(OptimizerProblem.CpuAndSimt))]
    public void SmallParametersKeepFp32StateAndTheStateIsMeasured(DeviceKind kind)
    {
        (string, int, DType)[] shapes = [("p4095", 4095, DType.F32), ("p4099", 4099, DType.F32)];
        using var problem = new OptimizerProblem(OptimizerProblem.On(kind), "AdamW8bitSmall", shapes);
        using var optimizer = new AdamW8bit(problem.Parameters, Lr, Beta1, Beta2, Eps, WeightDecay);
        Parameter small = problem.Parameters[0], large = problem.Parameters[1];
        Assert.That(optimizer.IsBlockwise(small), Is.False);
        Assert.That(optimizer.IsBlockwise(large), Is.True);
        float[] p = (float[])problem.Initial[0].Clone(), m = new float[p.Length], v = new float[p.Length];
        for (int t = 1; t <= 3; t++)
        {
            float[][] g = problem.Gradients(t);
            problem.SetGradients(g);
            optimizer.Step();
            double c1 = 1 - Math.Pow(Beta1, t), c2 = Math.Sqrt(1 - Math.Pow(Beta2, t));
            float stepSize = (float)(-Lr * c2 / c1), eps = (float)(Eps * c2), decay = (float)(1 - (double)Lr * WeightDecay);
            for (int i = 0; i < p.Length; i++)
            {
                v[i] = v[i] * Beta2 + (float)(1 - (double)Beta2) * (g[0][i] * g[0][i]);
                m[i] = m[i] * Beta1 + (float)(1 - (double)Beta1) * g[0][i];
                p[i] = (p[i] + stepSize * (m[i] / (MathF.Sqrt(v[i]) + eps))) * decay;
            }
        }
        Expect.Exact($"{kind} bitsandbytes 32-bit Adam", small.Value.ToArray(), p);

        var memory = optimizer.StateMemory().Single();
        long expected = 8L * 4095 + (2L * 4099 + 8 * ((4099 + 255) / 256));
        Assert.That(memory.ResidentBytes, Is.EqualTo(expected), "fp32 state 8 B/element; 8-bit 2 B/element + 8 B/block");
        Assert.That(memory.PagedBytes, Is.Zero);
    }

    private static byte[] Bytes(Optimizer optimizer, Parameter parameter, string name) => Download(optimizer, parameter, name);

    private static float[] Floats(Optimizer optimizer, Parameter parameter, string name)
    {
        byte[] bytes = Download(optimizer, parameter, name);
        return Enumerable.Range(0, bytes.Length / 4).Select(i => BitConverter.ToSingle(bytes, 4 * i)).ToArray();
    }

    /// <summary>The raw bytes of one of <paramref name="parameter"/>'s state buffers.</summary>
    internal static byte[] Download(Optimizer optimizer, Parameter parameter, string name)
    {
        Assert.That(optimizer.State.TryGet(parameter, out ParameterState state), Is.True, $"{parameter.Name} has state");
        DeviceBuffer buffer = state[name].Buffer;
        byte[] bytes = new byte[buffer.SizeInBytes];
        optimizer.Device.Download(buffer, 0, bytes);
        return bytes;
    }
}
