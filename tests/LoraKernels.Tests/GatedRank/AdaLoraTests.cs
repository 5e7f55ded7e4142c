// AdaLoRA (AdaLoraLinear, AdaLoraAllocator) against a reference written here from REFERENCE.md §6: the budget
// schedule, the importance EMAs, scores, threshold and masks step by step through a training run, the orthogonality
// regulariser's value and gradient, the layer's initialisation and scale, and PEFT's ADALORA checkpoints in and out.
using LoraKernels.Autograd;
using LoraKernels.IO;
using LoraKernels.IO.Peft;
using LoraKernels.Layers;
using LoraKernels.Optim;
using LoraKernels.Variants;
using LoraKernels.Tests.IO;
using static LoraKernels.Tests.IO.PeftFixtures;

namespace LoraKernels.Tests.GatedRank;

[TestFixture]
public sealed class AdaLoraTests
{
    /// <summary>REFERENCE.md 6.5, written out: init until tinit, the target after T − tfinal, int() of the cubic between.</summary>
    private static (int Budget, bool Mask) ReferenceBudget(int step, AdaLoraOptions o, int init, int target)
    {
        if (step <= o.Tinit) return (init, false);
        if (step > o.TotalSteps - o.Tfinal) return (target, true);
        double mul = 1 - (step - o.Tinit) / (double)(o.TotalSteps - o.Tfinal - o.Tinit);
        return ((int)Math.Truncate((init - target) * Math.Pow(mul, 3) + target), step % o.DeltaT == 0);
    }

    [TestCase(100, 10, 20, 5, 24, 12)]
    [TestCase(37, 0, 0, 1, 13, 4)]
    [TestCase(50, 49, 0, 3, 6, 0)]
    public void BudgetScheduleIsPeftsAtEveryStep(int total, int tinit, int tfinal, int deltaT, int init, int target)
    {
        var options = new AdaLoraOptions { TotalSteps = total, Tinit = tinit, Tfinal = tfinal, DeltaT = deltaT };
        for (int step = 0; step <= total + 3; step++)
            Assert.That(AdaLoraAllocator.BudgetSchedule(step, options, init, target), Is.EqualTo(ReferenceBudget(step, options, init, target)),
                        $"step {step}");
    }

    /// <summary>PEFT's init: Λ = 0 (the layer computes its base), A and B ~ N(0, 0.02); scale = alpha / (init_r + 1e-5).</summary>
    [Test]
    public void LayerStartsAsPeftsSvdLinear_in64_out48_r12()
    {
        using Tensor w0 = Tensor.FromArray(Device.Cpu, new TestData(9).NonZero(48 * 64), 48, 64);
        using var layer = new AdaLoraLinear(Device.Cpu, w0, null, 12, alpha: 8f, seed: 3);
        Assert.That((layer.Rank, layer.RankNum, layer.Scale), Is.EqualTo((12, 12, 8f / (12 + 1e-5f))));
        Assert.That(layer.E.Value.ToArray(), Is.All.Zero);
        foreach (var (name, values) in new[] { ("A", layer.A.Value.ToArray()), ("B", layer.B.Value.ToArray()) })
        {
            double mean = values.Average(v => (double)v), std = Math.Sqrt(values.Average(v => (double)v * v) - mean * mean);
            // 576 normal draws: the sample std is within 10 % of 0.02 and the mean within 5 standard errors of 0.
            Assert.That(std, Is.EqualTo(0.02).Within(0.002), $"{name}'s std");
            Assert.That(Math.Abs(mean), Is.LessThan(5 * 0.02 / Math.Sqrt(values.Length)), $"{name}'s mean");
        }
        using var sliced = new AdaLoraLinear(Device.Cpu, w0, null, 5, 12, alpha: 8f);
        Assert.That((sliced.Rank, sliced.Scale), Is.EqualTo((5, layer.Scale)), "a sliced layer keeps ranknum and its scale");
        Assert.That(() => new AdaLoraLinear(Device.Cpu, w0, null, 13, 12, 8f), Throws.TypeOf<ArgumentOutOfRangeException>().With.Message.Contains("ranknum"));
    }

    /// <summary>The reference allocator of REFERENCE.md 6.4-6.6, in double over snapshots of the parameters and gradients.</summary>
    private sealed class ReferenceAllocator(AdaLoraOptions options, int layers)
    {
        private readonly double[][][] _ipt = new double[layers][][], _unc = new double[layers][][];
        public bool[][]? Final;

        public void Update(int layer, float[][] values, float[][] grads)
        {
            _ipt[layer] ??= values.Select(v => new double[v.Length]).ToArray();
            _unc[layer] ??= values.Select(v => new double[v.Length]).ToArray();
            for (int p = 0; p < 3; p++)
                for (int i = 0; i < values[p].Length; i++)
                {
                    double sensitivity = Math.Abs((double)values[p][i] * grads[p][i]);
                    _ipt[layer][p][i] = options.Beta1 * _ipt[layer][p][i] + (1 - options.Beta1) * sensitivity;
                    _unc[layer][p][i] = options.Beta2 * _unc[layer][p][i] + (1 - options.Beta2) * Math.Abs(sensitivity - _ipt[layer][p][i]);
                }
        }

        public void Reset()
        {
            for (int l = 0; l < layers; l++)
                if (_ipt[l] is not null)
                    foreach (double[] v in _ipt[l].Concat(_unc[l])) Array.Clear(v);
        }

        /// <summary>S_E + mean_k S_A[i, k] + mean_j S_B[j, i] per triplet (A [r, in], E [r], B [out, r]).</summary>
        public double[] Scores(int layer, int r, int inF, int outF)
        {
            double S(int p, int i) => _ipt[layer][p][i] * _unc[layer][p][i];
            return Enumerable.Range(0, r).Select(i =>
                S(1, i) + Enumerable.Range(0, inF).Average(c => S(0, i * inF + c)) + Enumerable.Range(0, outF).Average(n => S(2, n * r + i))).ToArray();
        }
    }

    /// <summary>
    /// A run of 40 steps over two layers (init_r 6 and 5, target_r 2, tinit 6, tfinal 10, deltaT 3) with AdamW and the
    /// orthogonality loss; after every optimizer step the test snapshots A, Λ, B and their gradients, runs the reference
    /// of REFERENCE.md 6.4-6.6 on them, then the allocator, and compares Λ (zeroed exactly where the reference masks,
    /// untouched elsewhere), each layer's rank pattern and the threshold (the reference's scores are double EMAs of the
    /// same fp32 snapshots; the allocator's are fp32, relative 1e-5 apart at most).
    /// </summary>
    [TestCase(DeviceKind.Cpu)]
    [TestCase(DeviceKind.Simt)]
    public void AllocatorFollowsTheReferenceStepByStep(DeviceKind kind)
    {
        Device device = kind == DeviceKind.Cpu ? Device.Cpu : Device.Simt;
        var options = new AdaLoraOptions { TotalSteps = 40, TargetRank = 2, Tinit = 6, Tfinal = 10, DeltaT = 3, OrthogonalityWeight = 0.05f };
        var data = new TestData(21);
        var shapes = new[] { (In: 12, Out: 9, R: 6), (In: 9, Out: 7, R: 5) };
        var layers = new AdaLoraLinear[2];
        var weights = new List<Tensor>();
        try
        {
            for (int l = 0; l < 2; l++)
            {
                Tensor w = Tensor.FromArray(device, data.NonZero(shapes[l].Out * shapes[l].In, 0.3f), shapes[l].Out, shapes[l].In);
                weights.Add(w);
                layers[l] = new AdaLoraLinear(device, w, null, shapes[l].R, alpha: 4f, seed: (ulong)l + 7);
                layers[l].E.Value.CopyFrom(data.NonZero(shapes[l].R, 0.5f));  // a started Λ, so every triplet has a signal
            }
            using var allocator = new AdaLoraAllocator(layers, options);
            var reference = new ReferenceAllocator(options, 2);
            using var optimizer = new AdamW(layers.SelectMany(l => l.Parameters()), lr: 1e-2f, weightDecay: 0f);
            using var tape = new Tape();
            int init = shapes.Sum(s => s.R), target = 2 * options.TargetRank, final = options.TotalSteps - options.Tfinal, masks = 0;
            for (int step = 1; step <= options.TotalSteps + 3; step++)
            {
                using Tensor x = Tensor.FromArray(device, data.NonZero(8 * 12), 8, 12);
                using Tensor target2 = Tensor.FromArray(device, data.NonZero(8 * 7), 8, 7);
                tape.Reset();
                tape.MseLoss(layers[1].Forward(tape, tape.Relu(layers[0].Forward(tape, new Variable(x)))), target2);
                allocator.OrthogonalityLoss(tape);
                tape.Backward();
                optimizer.Step();

                float[][][] values = layers.Select(l => new[] { l.A.Value.ToArray(), l.E.Value.ToArray(), l.B.Value.ToArray() }).ToArray();
                float[][][] grads = layers.Select(l => new[] { l.A.Grad!.ToArray(), l.E.Grad!.ToArray(), l.B.Grad!.ToArray() }).ToArray();
                bool[][]? patterns = null;
                double? threshold = null;
                if (step > final)
                {
                    patterns = reference.Final;
                }
                else
                {
                    if (step < final)
                        for (int l = 0; l < 2; l++) reference.Update(l, values[l], grads[l]);
                    var (budget, mask) = ReferenceBudget(step, options, init, target);
                    if (mask || step == final)
                    {
                        double[][] scores = Enumerable.Range(0, 2).Select(l => reference.Scores(l, shapes[l].R, shapes[l].In, shapes[l].Out)).ToArray();
                        double cut = init - budget > 0 ? scores.SelectMany(s => s).Order().ElementAt(init - budget - 1) : double.NegativeInfinity;
                        threshold = cut;
                        patterns = scores.Select(s => s.Select(v => !(v <= cut)).ToArray()).ToArray();
                        masks++;
                    }
                    if (step == final)
                    {
                        reference.Final = patterns;
                        reference.Reset();
                    }
                }
                allocator.Update(step);
                for (int l = 0; l < 2; l++)
                {
                    float[] want = (float[])values[l][1].Clone();
                    if (patterns is not null)
                    {
                        for (int i = 0; i < want.Length; i++) if (!patterns[l][i]) want[i] = 0f;
                        Assert.That(layers[l].RankPattern, Is.EqualTo(patterns[l]), $"step {step}, layer {l}: the kept triplets");
                    }
                    Expect.Exact($"step {step}, layer {l}: Λ after the allocator", layers[l].E.Value.ToArray(), want);
                }
                if (threshold is { } t && double.IsFinite(t))
                    Assert.That(allocator.LastThreshold, Is.EqualTo(t).Within(1e-5 * Math.Abs(t)), $"step {step}: the threshold");
                optimizer.ZeroGrad();
            }
            Assert.That(masks, Is.GreaterThan(5), "the run masked several times");
            Assert.That(allocator.Ranks().Sum(), Is.EqualTo(target), "the final budget is target_r per layer in total");
            Assert.That(layers.Select(l => l.E.Value.ToArray().Count(v => v != 0f)).Sum(), Is.EqualTo(target), "masked Λ stays zero after T − tfinal");
        }
        finally
        {
            foreach (AdaLoraLinear? layer in layers) layer?.Dispose();
            foreach (Tensor w in weights) w.Dispose();
        }
    }

    /// <summary>
    /// The regulariser R = mean over lora_A and lora_B of ‖C − I‖_F (C = A Aᵀ, Bᵀ B), weighted on the tape: its value and
    /// its gradient against central differences of R in double (R is smooth away from C = I; h = 2⁻¹⁴ errs by ~h²·R''').
    /// </summary>
    [TestCase(DeviceKind.Cpu)]
    [TestCase(DeviceKind.Simt)]
    public void OrthogonalityLossAndGradientMatchReference_in7_out6_r3(DeviceKind kind)
    {
        Device device = kind == DeviceKind.Cpu ? Device.Cpu : Device.Simt;
        const int inF = 7, outF = 6, r = 3;
        var data = new TestData(22);
        using Tensor w0 = Tensor.FromArray(device, data.NonZero(outF * inF), outF, inF);
        using var layer = new AdaLoraLinear(device, w0, null, r, 4f);
        float[] a = data.NonZero(r * inF, 0.6f), b = data.NonZero(outF * r, 0.6f);
        layer.A.Value.CopyFrom(a);
        layer.B.Value.CopyFrom(b);
        double Norm(double[] x, int rows, int cols, bool transpose)
        {
            int side = transpose ? cols : rows;
            double sum = 0;
            for (int i = 0; i < side; i++)
                for (int j = 0; j < side; j++)
                {
                    double c = 0;
                    for (int q = 0; q < (transpose ? rows : cols); q++)
                        c += transpose ? x[q * cols + i] * x[q * cols + j] : x[i * cols + q] * x[j * cols + q];
                    double v = c - (i == j ? 1 : 0);
                    sum += v * v;
                }
            return Math.Sqrt(sum);
        }
        const float weight = 0.5f;
        double[] aD = Array.ConvertAll(a, v => (double)v), bD = Array.ConvertAll(b, v => (double)v);
        double R() => weight * (Norm(aD, r, inF, false) + Norm(bD, outF, r, true)) / 2;
        using var allocator = new AdaLoraAllocator([layer], new AdaLoraOptions { TotalSteps = 10, TargetRank = 1, OrthogonalityWeight = weight });
        using var tape = new Tape();
        float value = allocator.OrthogonalityLoss(tape);
        Assert.That(value, Is.EqualTo(R()).Within(1e-5 * R()));
        tape.Backward();
        double[] Fd(double[] x) => CentralDifference.Of(R, x, h: 1.0 / 16384);
        double[] dA = Fd(aD), dB = Fd(bD);
        Expect.NotVacuous("dR/dA", dA);
        // fp32 Gram sums of ≤ 7 terms and the gradient's ≤ 6: 1e-5 of the largest element covers them and the h² error.
        Expect.Close("dR/dA", layer.A.Grad!.ToArray(), dA, Array.ConvertAll(dA, _ => 1e-5 * dA.Max(Math.Abs)));
        Expect.Close("dR/dB", layer.B.Grad!.ToArray(), dB, Array.ConvertAll(dB, _ => 1e-5 * dB.Max(Math.Abs)));
        Assert.That(layer.E.Grad, Is.Null, "Λ is not in the regulariser");
    }

    private const int In = 12, Out = 10;

    private static string AdaLoraConfig(string rankPattern) => $$"""
        {"peft_type": "ADALORA", "init_r": 6, "target_r": 2, "lora_alpha": 8, "lora_dropout": 0.0, "total_step": 100,
         "target_modules": ["q_proj"], "rank_pattern": {{rankPattern}}}
        """;

    /// <summary>
    /// A PEFT ADALORA adapter saved after pruning (3 of init_r = 6 triplets kept, rank_pattern naming them) attaches as an
    /// AdaLoraLinear of rank 3 and ranknum 6 whose output is y = x W0ᵀ + (x (A ⊙ Λ)ᵀ) Bᵀ·8/(6 + 1e-5), merges to
    /// W0 + that ΔW, and round-trips through FromLayers and Save with the same tensors and a 3-of-6 rank_pattern.
    /// </summary>
    [Test]
    public void PeftAdapterWithARankPatternAttachesMergesAndRoundTrips_Cpu()
    {
        using var folder = SafeTensorsFiles.NewFolder("adalora");
        var data = new TestData(23);
        var tensors = new List<Entry>
        {
            Random(data, $"base_model.model.{Q}.lora_A", 3, In), Random(data, $"base_model.model.{Q}.lora_E", 3, 1),
            Random(data, $"base_model.model.{Q}.lora_B", Out, 3),
        };
        string path = WriteAdapter(Path.Combine(folder.Path, "adapter"),
                                   AdaLoraConfig($$"""{"{{Q}}.lora_E": [true, false, true, false, false, true]}"""), tensors);
        PeftAdapter adapter = PeftAdapter.Load(path);
        Assert.That((adapter.Variant, adapter.Module(Q)!.Rank, adapter.Format.Available), Is.EqualTo(("adalora", 3, true)));
        Assert.That(adapter.Module(Q)!.Scale, Is.EqualTo(8f / (6 + 1e-5f)));

        string basePath = folder.File("base.safetensors");
        float[] w = data.NonZero(Out * In);
        WriteTensors(basePath, [new Entry($"{Q}.weight", [Out, In], w)]);
        using (var model = SafeTensorsFile.Open(basePath))
        using (PeftModel attached = adapter.CreateLayers(Device.Cpu, model))
        {
            var layer = (AdaLoraLinear)attached[Q];
            Assert.That((layer.Rank, layer.RankNum), Is.EqualTo((3, 6)));
            float[] x = data.NonZero(2 * In);
            using Tensor xTensor = Tensor.FromArray(Device.Cpu, x, 2, In);
            using Tensor y = layer.Forward(xTensor);
            float[] a = tensors[0].Values, e = tensors[1].Values, b = tensors[2].Values;
            double s = 8f / (6 + 1e-5f);
            var want = new double[2 * Out];
            var abs = new double[2 * Out];
            for (int m = 0; m < 2; m++)
                for (int n = 0; n < Out; n++)
                {
                    double sum = 0, mag = 0;
                    for (int c = 0; c < In; c++) { sum += (double)x[m * In + c] * w[n * In + c]; mag += Math.Abs((double)x[m * In + c] * w[n * In + c]); }
                    for (int i = 0; i < 3; i++)
                    {
                        double u = 0;
                        for (int c = 0; c < In; c++) u += (double)x[m * In + c] * a[i * In + c];
                        sum += s * u * e[i] * b[n * 3 + i];
                        mag += Math.Abs(s * u * e[i] * b[n * 3 + i]);
                    }
                    want[m * Out + n] = sum;
                    abs[m * Out + n] = mag;
                }
            Expect.Close("y", y.ToArray(), want, Tolerance.Bounds(want, abs, In + 3 + 2, DType.F32));

            var exported = PeftAdapter.FromLayers(attached.Layers);
            string again = Path.Combine(folder.Path, "again");
            exported.Save(again);
            PeftAdapter reloaded = PeftAdapter.Load(again);
            Assert.That(reloaded.Config.PeftType, Is.EqualTo("ADALORA"));
            Assert.That(reloaded.Config.Rank, Is.EqualTo(6), "init_r is the layer's ranknum");
            Assert.That(reloaded.Config.KeptRanks[$"{Q}.lora_E"].Count(k => k), Is.EqualTo(3));
            foreach (string component in new[] { "lora_A", "lora_E", "lora_B" })
                Assert.That(reloaded.Module(Q)![component]!.Values, Is.EqualTo(adapter.Module(Q)![component]!.Values), component);
        }

        var report = AdapterMerge.Merge(basePath, adapter, folder.File("merged.safetensors"));
        Assert.That(report.Modules.Single().Variant, Is.EqualTo("adalora"));
        using var merged = SafeTensorsFile.Open(folder.File("merged.safetensors"));
        float[] got = merged.ReadSingles($"{Q}.weight");
        for (int n = 0; n < Out; n++)
            for (int c = 0; c < In; c++)
            {
                double delta = 0;
                for (int i = 0; i < 3; i++) delta += 8.0 / (6 + 1e-5) * tensors[2].Values[n * 3 + i] * tensors[1].Values[i] * tensors[0].Values[i * In + c];
                Assert.That(got[n * In + c], Is.EqualTo(w[n * In + c] + delta).Within(1e-5), $"merged W[{n}, {c}]");
            }
    }

    [Test]
    public void PeftAdapterWhoseTripletsDisagreeWithItsRankPatternIsRefused()
    {
        using var folder = SafeTensorsFiles.NewFolder("adalora-bad");
        var data = new TestData(24);
        List<Entry> tensors =
        [
            Random(data, $"base_model.model.{Q}.lora_A", 3, In), Random(data, $"base_model.model.{Q}.lora_E", 3, 1),
            Random(data, $"base_model.model.{Q}.lora_B", Out, 3),
        ];
        string twoKept = WriteAdapter(Path.Combine(folder.Path, "a"), AdaLoraConfig($$"""{"{{Q}}.lora_E": [true, false, true, false, false, false]}"""), tensors);
        Assert.That(() => PeftAdapter.Load(twoKept), Throws.TypeOf<PeftFormatException>().With.Message.Contains("rank_pattern keeps 2"));
        string noPattern = WriteAdapter(Path.Combine(folder.Path, "b"), AdaLoraConfig("null"), tensors);
        Assert.That(() => PeftAdapter.Load(noPattern), Throws.TypeOf<PeftFormatException>().With.Message.Contains("init_r is 6"));
    }

    /// <summary>After the allocator's final mask, FromLayers slices each layer to its kept triplets, as PEFT's save does.</summary>
    [Test]
    public void FromLayersSlicesToTheRankPattern_Cpu()
    {
        using Tensor w0 = Tensor.FromArray(Device.Cpu, new TestData(25).NonZero(Out * In), Out, In);
        using var layer = new AdaLoraLinear(Device.Cpu, w0, null, 4, 8f, seed: 2);
        float[] e = [0.5f, -0.25f, 0.75f, 1f];
        layer.E.Value.CopyFrom(e);
        layer.RankPattern = [true, false, false, true];
        PeftAdapter adapter = PeftAdapter.FromLayers([new KeyValuePair<string, IAdapterLayer>(Q, layer)]);
        PeftModule module = adapter.Module(Q)!;
        Assert.That(module.Rank, Is.EqualTo(2));
        Assert.That(module["lora_E"]!.Values, Is.EqualTo(new[] { 0.5f, 1f }));
        Assert.That(module["lora_E"]!.Shape, Is.EqualTo(new long[] { 2, 1 }));
        float[] a = layer.A.Value.ToArray();
        Assert.That(module["lora_A"]!.Values, Is.EqualTo(a.Take(In).Concat(a.Skip(3 * In).Take(In)).ToArray()));
        Assert.That(adapter.Config.KeptRanks[$"{Q}.lora_E"], Is.EqualTo(new[] { true, false, false, true }));
    }
}
