// LoKr adapters in PEFT's format (REFERENCE.md §5.3, §9.2), written here from PEFT's conventions (keys lokr_w1_a,
// lokr_w1_b, lokr_w2_a, lokr_w2_b; alpha; decompose_both), without the library's writer: attached to layers they
// compute the dense reference x·(W0 + (alpha/r)·kron(w1_a·w1_b, w2_a·w2_b))ᵀ + bias, merged into a base file they
// give W0 + ΔW, and the layers save back to the same keys. Factors that PEFT's rules would not give the layer, and
// convolution modules, are refused with the module's name.
using LoraKernels.IO;
using LoraKernels.IO.Peft;
using LoraKernels.Layers;
using LoraKernels.Tests.Conv;
using LoraKernels.Tests.IO;
using static LoraKernels.Tests.IO.PeftFixtures;

namespace LoraKernels.Tests.KronAdapter;

public sealed class LokrPeftTests
{
    // in 24 = 4·6 and out 20 = 4·5 (PEFT's factorization); r = 1 < max(4, 4)/2 with decompose_both: w1 low-rank too.
    private const int In = 24, Out = 20, R = 1, M = 3;
    private const float Alpha = 4f;
    private const string Config = """{"peft_type": "LOKR", "r": 1, "alpha": 4, "decompose_both": true, "target_modules": ["q_proj"]}""";

    private static Entry[] Factors(TestData data) =>
    [
        Random(data, $"base_model.model.{Q}.lokr_w1_a", 4, R), Random(data, $"base_model.model.{Q}.lokr_w1_b", R, 4),
        Random(data, $"base_model.model.{Q}.lokr_w2_a", 5, R), Random(data, $"base_model.model.{Q}.lokr_w2_b", R, 6),
    ];

    /// <summary>W0 + (alpha/r)·kron(w1_a·w1_b, w2_a·w2_b), in double.</summary>
    private static double[] MergedWeight(float[] w0, Entry[] factors)
    {
        double[] F(int i) => DenseReference.Double(factors[i].Values);
        double[] w1 = DenseReference.Matmul(F(0), F(1), 4, 4, R), w2 = DenseReference.Matmul(F(2), F(3), 5, 6, R);
        double[] kron = DenseReference.Kron(w1, 4, 4, w2, 5, 6);
        return w0.Select((v, i) => v + Alpha / R * kron[i]).ToArray();
    }

    [Test]
    public void AttachingComputesTheDenseReferenceAndSavingRestoresTheKeys()
    {
        var data = new TestData(71);
        using var folder = SafeTensorsFiles.NewFolder("lokr-peft");
        Entry[] factors = Factors(data);
        string adapterFolder = WriteAdapter(folder.File("adapter"), Config, factors);
        float[] w0 = data.NonZero(Out * In), bias = data.NonZero(Out), x = data.NonZero(M * In);
        string basePath = folder.File("base.safetensors");
        WriteTensors(basePath, [new Entry($"{Q}.weight", [Out, In], w0), new Entry($"{Q}.bias", [Out], bias)]);

        PeftAdapter adapter = PeftAdapter.Load(adapterFolder);
        using var baseModel = SafeTensorsFile.Open(basePath);
        using PeftModel model = adapter.CreateLayers(Device.Cpu, baseModel);
        var layer = (LokrLinear)model[Q];
        Assert.That((layer.Rank, layer.Alpha, layer.DecomposeBoth), Is.EqualTo((R, Alpha, true)));
        double[] weight = MergedWeight(w0, factors);
        double[] reference = DenseReference.Linear(DenseReference.Double(x), weight, DenseReference.Double(bias), M, In, Out);
        using Tensor xt = Tensor.FromArray(Device.Cpu, x, M, In);
        using (Tensor y = layer.Forward(xt))
            Expect.Close("attached LoKr", y.ToArray(), reference, Array.ConvertAll(reference, v => 1e-5 * (1 + Math.Abs(v))));

        string saved = folder.File("saved");
        PeftAdapter.FromLayers([new(Q, (IAdapterLayer)layer)]).Save(saved);
        using var file = SafeTensorsFile.Open(Path.Combine(saved, "adapter_model.safetensors"));
        Assert.That(file.Tensors.Select(t => t.Name).Order(StringComparer.Ordinal), Is.EqualTo(factors.Select(f => f.Key).Order(StringComparer.Ordinal)));
        foreach (Entry factor in factors) Expect.Exact(factor.Key, file.ReadSingles(factor.Key), factor.Values);
        PeftConfig config = PeftConfig.Load(Path.Combine(saved, "adapter_config.json"));
        Assert.That((config.PeftType, config.Rank, config.Alpha, config.DecomposeBoth, config.DecomposeFactor), Is.EqualTo(("LOKR", R, Alpha, true, -1)));
    }

    [Test]
    public void MergingIntoABaseFileAddsTheKroneckerProduct()
    {
        var data = new TestData(73);
        using var folder = SafeTensorsFiles.NewFolder("lokr-merge");
        Entry[] factors = Factors(data);
        PeftAdapter adapter = PeftAdapter.Load(WriteAdapter(folder.File("adapter"), Config, factors));
        float[] w0 = data.NonZero(Out * In);
        string basePath = folder.File("base.safetensors"), output = folder.File("merged.safetensors");
        WriteTensors(basePath, [new Entry($"{Q}.weight", [Out, In], w0)]);
        MergeReport report = AdapterMerge.Merge(basePath, adapter, output);
        Assert.That(report.Modules.Single().Variant, Is.EqualTo("lokr"));
        using var merged = SafeTensorsFile.Open(output);
        double[] expected = MergedWeight(w0, factors);
        Expect.Close("merged W", merged.ReadSingles($"{Q}.weight"), expected, Array.ConvertAll(expected, v => 1e-6 * (1 + Math.Abs(v))));
    }

    [Test]
    public void FactorsPeftWouldNotGiveTheLayerAndConvolutionModulesAreRefusedByName()
    {
        var data = new TestData(79);
        using var folder = SafeTensorsFiles.NewFolder("lokr-refused");
        string basePath = folder.File("base.safetensors");
        WriteTensors(basePath, [Random(data, $"{Q}.weight", Out, In)]);
        using var baseModel = SafeTensorsFile.Open(basePath);
        // r = 8 makes PEFT keep w2 full ([5, 6]), but this file saves it low-rank.
        PeftAdapter lowRank = PeftAdapter.Load(WriteAdapter(folder.File("mismatch"),
            """{"peft_type": "LOKR", "r": 8, "alpha": 8, "target_modules": ["q_proj"]}""",
            [Random(data, $"base_model.model.{Q}.lokr_w1", 4, 4), Random(data, $"base_model.model.{Q}.lokr_w2_a", 5, 8),
             Random(data, $"base_model.model.{Q}.lokr_w2_b", 8, 6)]));
        var mismatch = Assert.Throws<AdapterMismatchException>(() => lowRank.CreateLayers(Device.Cpu, baseModel).Dispose());
        Assert.That(mismatch!.Module, Is.EqualTo(Q));
        Assert.That(mismatch.Message, Does.Contain("lokr_w2_a"));
        PeftAdapter conv = PeftAdapter.Load(WriteAdapter(folder.File("conv"), """{"peft_type": "LOKR", "r": 8, "alpha": 8, "target_modules": ["q_proj"]}""",
            [Random(data, $"base_model.model.{Q}.lokr_w1", 4, 4), Random(data, $"base_model.model.{Q}.lokr_w2", 5, 6, 1, 1)]));
        Assert.That(() => conv.CreateLayers(Device.Cpu, baseModel).Dispose(),
                    Throws.InstanceOf<NotSupportedException>().With.Message.Contains(Q).And.Message.Contains("convolution"));
        var badRank = Assert.Throws<PeftFormatException>(() => PeftAdapter.Load(WriteAdapter(folder.File("rank"), Config,
            [Random(data, $"base_model.model.{Q}.lokr_w1", 4, 4), Random(data, $"base_model.model.{Q}.lokr_w2_a", 5, 2),
             Random(data, $"base_model.model.{Q}.lokr_w2_b", 2, 6)])));
        Assert.That(badRank!.Message, Does.Contain("lokr_w2_a").And.Contain("r = 2"));
    }
}
