using System.Text.RegularExpressions;
using LoraKernels.Layers;
using LoraKernels.Variants;

namespace LoraKernels.Tests.Variants;

/// <summary>The variant catalogue: complete entries, parameter-count formulas, and Create by name.</summary>
[TestFixture]
public sealed partial class CatalogueTests
{
    [GeneratedRegex(@"^\d{4}\.\d{4,5}$")]
    private static partial Regex ArxivId();

    [Test]
    public void EveryEntryHasPaperFamilyDefaultsAndIssue()
    {
        Assert.That(Catalogue.Variants, Is.Not.Empty);
        foreach (VariantInfo info in Catalogue.Variants)
        {
            Assert.That(info.Paper.Title, Is.Not.Empty, info.Name);
            Assert.That(info.Paper.Year, Is.InRange(2021, 2026), info.Name);
            Assert.That(info.Paper.ArxivId is { } id ? ArxivId().IsMatch(id) : !string.IsNullOrEmpty(info.Paper.Note), Is.True,
                        $"{info.Name}: an arXiv id, or a note saying why there is none");
            Assert.That(Enum.IsDefined(info.Family), Is.True, info.Name);
            Assert.That(info.Defaults, Is.Not.Empty, info.Name);
            Assert.That(info.ParameterFormula, Is.Not.Empty, info.Name);
            Assert.That(info.Backends.Count > 0 && info.DTypes.Count > 0, Is.True, $"{info.Name}: lists its backends and dtypes");
            Assert.That(info.TrainableParameters(4096, 4096), Is.GreaterThan(0), info.Name);
        }
        Assert.That(Catalogue.Variants.Select(v => v.Name).Distinct().Count(), Is.EqualTo(Catalogue.Variants.Count), "unique names");
        Assert.That(Catalogue.Variants.Select(v => v.Family).Distinct().Count(), Is.EqualTo(6), "the guide's six families are all present");
    }

    [Test]
    public void TheGuidesAndTheIssuesVariantsAreAllListed()
    {
        string[] expected =
        [
            "lora", "rslora", "dora", "qlora", "qdora", "loftq", "pissa", "vera", "lora-fa", "lora+", "adalora", "sora",
            "lokr", "krona", "flora", "lotr", "mixture-rank1", "lora-moe", "lora-ssm", "auto-rank", "mira",
        ];
        foreach (string name in expected) Assert.That(() => Catalogue.Get(name), Throws.Nothing, name);
        Assert.That(Catalogue.Get("LoRA-FA").Name, Is.EqualTo("lora-fa"), "names are case-insensitive");
        Assert.That(() => Catalogue.Get("no-such-lora"), Throws.ArgumentException.With.Message.Contains("known: lora"));
    }

    [TestCase(17, 23, 4)]
    [TestCase(4096, 4096, 8)]
    [TestCase(1, 1, 1)]
    public void ParameterCountsFollowTheirFormulas(int inFeatures, int outFeatures, int r)
    {
        var options = new AdapterOptions { Rank = r };
        long i = inFeatures, o = outFeatures;
        Assert.That(Catalogue.Get("lora").TrainableParameters(i, o, options), Is.EqualTo(r * (i + o)), "LoRA: r·(in + out)");
        Assert.That(Catalogue.Get("vera").TrainableParameters(i, o, options), Is.EqualTo(r + o), "VeRA: r + out");
        Assert.That(Catalogue.Get("dora").TrainableParameters(i, o, options), Is.EqualTo(r * (i + o) + o), "DoRA: r·(in + out) + out");
        Assert.That(Catalogue.Get("lora-fa").TrainableParameters(i, o, options), Is.EqualTo(r * o), "LoRA-FA: r·out");
        Assert.That(Catalogue.Get("adalora").TrainableParameters(i, o, options), Is.EqualTo(r * (i + o) + r), "AdaLoRA: A, E, B");
    }

    [Test]
    public void LoKrCountsW1FullAndW2LowRank_4096x4096_r8()
    {
        // (64, 64) both ways: w1 [64, 64] full; r = 8 < 64/2, so w2 = w2_a [64, 8] + w2_b [8, 64].
        Assert.That(Catalogue.Get("lokr").TrainableParameters(4096, 4096, new AdapterOptions { Rank = 8 }), Is.EqualTo(64 * 64 + 8 * (64 + 64)));
    }

    public static IEnumerable<TestCaseData> EveryVariant() =>
        from v in Catalogue.Variants
        from kind in new[] { DeviceKind.Cpu, DeviceKind.Simt }
        select new TestCaseData(v.Name, kind).SetName($"Create_{v.Name}_{kind}_out24_in16");

    /// <summary>
    /// Every entry builds its layer on the device, runs forward (finite, non-zero,
    /// the count of trainable values the catalogue gives) and backward through the tape (a finite, non-zero
    /// gradient for every trainable parameter, after one step that moves B or λ_b off zero).
    /// </summary>
    [TestCaseSource(nameof(EveryVariant))]
    public void CreateBuildsEachAvailableVariant(string name, DeviceKind kind)
    {
        const int outFeatures = 24, inFeatures = 16, m = 3;
        Device device = kind == DeviceKind.Cpu ? Device.Cpu : Device.Simt;
        var data = new TestData(TestData.SeedFor(name));
        using var w0 = Tensor.FromArray(device, data.NonZero(outFeatures * inFeatures, 0.25f), outFeatures, inFeatures);
        using var bias = Tensor.FromArray(device, data.NonZero(outFeatures, 0.5f), outFeatures);
        using var x = Tensor.FromArray(device, data.NonZero(m * inFeatures), m, inFeatures);
        using var target = Tensor.FromArray(device, data.NonZero(m * outFeatures), m, outFeatures);
        VariantInfo info = Catalogue.Get(name);
        // VeRA's projections are shared across a model's layers, so the caller makes them (here for one layer).
        using VeraProjections? projections = name == "vera" ? VeraProjections.Create(device, 4, inFeatures, outFeatures) : null;
        var options = new AdapterOptions { Rank = 4, Alpha = 8f, Seed = 9, VeraProjections = projections };

        using IAdapterLayer layer = Catalogue.Create(name, device, w0, bias, options);
        Assert.That((layer.InFeatures, layer.OutFeatures), Is.EqualTo((inFeatures, outFeatures)));
        Assert.That(layer.Device, Is.SameAs(device));
        long trainable = layer.Parameters().Sum(p => p.Value.ElementCount);
        Assert.That(trainable, Is.EqualTo(info.TrainableParameters(inFeatures, outFeatures, options)), "the catalogue's count is the layer's");
        using (Tensor y = layer.Forward(x))
        {
            Assert.That(y.Shape, Is.EqualTo(new long[] { m, outFeatures }));
            Assert.That(y.ToArray().All(float.IsFinite) && y.ToArray().Any(v => v != 0f), Is.True, "a finite, non-zero output");
        }

        using var optimizer = new LoraKernels.Optim.AdamW(layer.Parameters(), lr: 1e-2f);
        for (int step = 0; step < 2; step++)
        {
            using var tape = new LoraKernels.Autograd.Tape();
            tape.MseLoss(layer.Forward(tape, new LoraKernels.Autograd.Variable(x)), target);
            tape.Backward();
            if (step == 1)
                foreach (var parameter in layer.Parameters())
                {
                    Assert.That(parameter.Grad, Is.Not.Null, $"{parameter.Name} has a gradient");
                    float[] grad = parameter.Grad!.ToArray();
                    Assert.That(grad.All(float.IsFinite) && grad.Any(v => v != 0f), Is.True, $"{parameter.Name}: a finite, non-zero gradient");
                }
            optimizer.Step();
            optimizer.ZeroGrad();
        }
    }

    [Test]
    public void VeraNeedsTheCallersSharedProjections_Cpu_4x3()
    {
        using var w0 = Tensor.FromArray(Device.Cpu, new TestData(2).NonZero(12), 4, 3);
        Assert.That(() => Catalogue.Create("vera", Device.Cpu, w0, null, new AdapterOptions { Rank = 2 }),
                    Throws.ArgumentException.With.Message.Contains("VeraProjections.ForLayers"));
        using var projections = VeraProjections.Create(Device.Cpu, 3, 3, 4);
        Assert.That(() => Catalogue.Create("vera", Device.Cpu, w0, null, new AdapterOptions { Rank = 2, VeraProjections = projections }),
                    Throws.ArgumentException.With.Message.Contains("rank 3"));
    }

    [Test]
    public void TheTableListsEveryVariant()
    {
        string table = Catalogue.FormatTable();
        foreach (VariantInfo info in Catalogue.Variants) Assert.That(table, Does.Contain(info.DisplayName));
        Assert.That(table, Does.Contain("65,536 (r=8)"), "LoRA at 4096x4096, r = 8: 8·(4096 + 4096)");
    }
}
