using LoraKernels.IO;
using LoraKernels.IO.Peft;
using LoraKernels.Layers;
using LoraKernels.Variants;
using static LoraKernels.Tests.IO.PeftFixtures;

namespace LoraKernels.Tests.IO;

/// <summary>
/// Layers → PEFT files → layers, for every variant the project has that PEFT has: the files hold
/// PEFT's keys, and the rebuilt layers compute what the originals computed. Adapters that do not
/// fit their model are rejected with the module's name.
/// </summary>
public sealed class PeftLayerTests
{
    private const int In = 24, Out = 20, R = 4, M = 5;
    private static readonly string[] Modules = [Q, V];

    public static IEnumerable<string> Variants() => ["lora", "rslora", "dora", "vera", "lora-fa", "lora+", "pissa", "qlora", "qdora", "lokr"];

    [TestCaseSource(nameof(Variants))]
    public void EveryVariantRoundTripsThroughPeftFiles(string variant)
    {
        Device device = Device.Cpu;
        var data = new TestData(TestData.SeedFor(variant));
        using var folder = SafeTensorsFiles.NewFolder($"roundtrip-{variant}");
        using VeraProjections? projections = variant == "vera" ? VeraProjections.ForLayers(device, [(In, Out), (In, Out)], R, 5) : null;
        var options = new AdapterOptions { Rank = R, Alpha = 12, Seed = 3, VeraProjections = projections };
        var originals = new Dictionary<string, IAdapterLayer>();
        var biases = new Dictionary<string, float[]>();
        try
        {
            foreach (string module in Modules)
            {
                using Tensor w0 = Tensor.FromArray(device, data.NonZero(Out * In), Out, In);
                biases[module] = data.NonZero(Out);
                using Tensor bias = Tensor.FromArray(device, biases[module], Out);
                IAdapterLayer layer = Catalogue.Create(variant, device, w0, module == Q ? bias : null, options);
                originals[module] = layer;
                Randomize(layer, data);
                layer.Training = false;
            }
            using Tensor x = Tensor.FromArray(device, data.NonZero(M * In), M, In);
            var expected = originals.ToDictionary(p => p.Key, p => { using Tensor y = p.Value.Forward(x); return y.ToArray(); });

            PeftAdapter saved = PeftAdapter.FromLayers(originals, new PeftExportOptions { InitLoraWeights = variant == "pissa" ? "pissa" : null });
            string adapterFolder = folder.File("adapter");
            saved.Save(adapterFolder);
            CheckKeys(Path.Combine(adapterFolder, "adapter_model.safetensors"), variant);

            string basePath = folder.File("base.safetensors");
            WriteBase(basePath, originals, biases);
            PeftAdapter loaded = PeftAdapter.Load(adapterFolder);
            Assert.That(loaded.Variant, Is.EqualTo(variant switch { "qdora" => "dora", "lora-fa" or "lora+" or "qlora" => "lora", _ => variant }));
            using var baseModel = SafeTensorsFile.Open(basePath);
            using PeftModel model = loaded.CreateLayers(device, baseModel);
            Assert.That(model.Layers.Keys.Order(), Is.EqualTo(Modules));
            foreach (string module in Modules)
            {
                using Tensor y = model[module].Forward(x);
                double[] reference = expected[module].Select(v => (double)v).ToArray();
                Expect.NotVacuous($"{variant} {module}", reference);
                Expect.Close($"{variant} {module} rebuilt from PEFT files", y.ToArray(), reference,
                             reference.Select(v => 1e-6 * (Math.Abs(v) + 1)).ToArray());
            }
        }
        finally
        {
            foreach (IAdapterLayer layer in originals.Values) layer.Dispose();
        }
    }

    [Test]
    public void ApplyToFillsExistingLayersAndChecksTheirScale()
    {
        Device device = Device.Cpu;
        var data = new TestData(21);
        using Tensor w0 = Tensor.FromArray(device, data.NonZero(Out * In), Out, In);
        using var trained = new LoraLinear(device, w0, null, R, 16f, seed: 1);
        Randomize(trained, data);
        PeftAdapter adapter = PeftAdapter.FromLayers([new(Q, trained)]);
        using var fresh = new LoraLinear(device, w0, null, R, 16f, seed: 2);
        adapter.ApplyTo(new Dictionary<string, IAdapterLayer> { [Q] = fresh });
        Assert.That(fresh.A.Value.ToArray(), Is.EqualTo(trained.A.Value.ToArray()));
        Assert.That(fresh.B.Value.ToArray(), Is.EqualTo(trained.B.Value.ToArray()));

        using var otherScale = new LoraLinear(device, w0, null, R, 8f);
        var scale = Assert.Throws<AdapterMismatchException>(() => adapter.ApplyTo(new Dictionary<string, IAdapterLayer> { [Q] = otherScale }));
        Assert.That(scale!.Module, Is.EqualTo(Q));
        Assert.That(scale.Message, Does.Contain("scale"));
        using var dora = new DoraLinear(device, w0, null, R, 16f);
        var kind = Assert.Throws<AdapterMismatchException>(() => adapter.ApplyTo(new Dictionary<string, IAdapterLayer> { [Q] = dora }));
        Assert.That(kind!.Message, Does.Contain("DoraLinear"));
    }

    [Test]
    public void AnAdapterModuleThatNoLayerHasIsRejectedWithItsName()
    {
        using var folder = SafeTensorsFiles.NewFolder("unknown-module");
        var data = new TestData(22);
        const string stray = "model.layers.9.self_attn.q_proj";
        string adapter = WriteAdapter(folder.File("adapter"), LoraConfig(R, 8),
            [.. new[] { Q, V, stray }.SelectMany(m => new[]
            {
                Random(data, $"base_model.model.{m}.lora_A.weight", R, In), Random(data, $"base_model.model.{m}.lora_B.weight", Out, R),
            })]);
        string basePath = folder.File("base.safetensors");
        WriteTensors(basePath, [Random(data, $"{Q}.weight", Out, In), Random(data, $"{V}.weight", Out, In)], peftMetadata: false);
        PeftAdapter loaded = PeftAdapter.Load(adapter);
        using var baseModel = SafeTensorsFile.Open(basePath);
        var create = Assert.Throws<AdapterMismatchException>(() => loaded.CreateLayers(Device.Cpu, baseModel).Dispose());
        Assert.That(create!.Module, Is.EqualTo(stray));
        Assert.That(create.Message, Does.Contain(stray).And.Contain("has no"));
        string output = folder.File("merged.safetensors");
        var merge = Assert.Throws<AdapterMismatchException>(() => AdapterMerge.Merge(basePath, loaded, output));
        Assert.That(merge!.Module, Is.EqualTo(stray));
        Assert.That(File.Exists(output), Is.False, "nothing written");
        Assert.That(Directory.GetFiles(folder.Path), Is.EqualTo(new[] { basePath }), "no temporary or spill file left");

        using Tensor w0 = Tensor.FromArray(Device.Cpu, data.NonZero(Out * In), Out, In);
        using var q = new LoraLinear(Device.Cpu, w0, null, R, 8f);
        using var v = new LoraLinear(Device.Cpu, w0, null, R, 8f);
        var apply = Assert.Throws<AdapterMismatchException>(() => loaded.ApplyTo(new Dictionary<string, IAdapterLayer> { [Q] = q, [V] = v }));
        Assert.That(apply!.Module, Is.EqualTo(stray));
    }

    [Test]
    public void ATargetedModuleWithoutWeightsAndAShapeThatDiffersAreRejectedByName()
    {
        using var folder = SafeTensorsFiles.NewFolder("missing-module");
        var data = new TestData(23);
        string adapter = WriteAdapter(folder.File("adapter"), LoraConfig(R, 8),
            [Random(data, $"base_model.model.{Q}.lora_A.weight", R, In), Random(data, $"base_model.model.{Q}.lora_B.weight", Out, R)]);
        PeftAdapter loaded = PeftAdapter.Load(adapter);
        string basePath = folder.File("base.safetensors");
        WriteTensors(basePath, [Random(data, $"{Q}.weight", Out, In), Random(data, $"{V}.weight", Out, In)], peftMetadata: false);
        using (var baseModel = SafeTensorsFile.Open(basePath))
        {
            var error = Assert.Throws<AdapterMismatchException>(() => loaded.CreateLayers(Device.Cpu, baseModel).Dispose());
            Assert.That(error!.Module, Is.EqualTo(V), "v_proj is targeted but has no weights");
        }
        string wrongShape = folder.File("wrong.safetensors");
        WriteTensors(wrongShape, [Random(data, $"{Q}.weight", Out, In + 1)], peftMetadata: false);
        using (var baseModel = SafeTensorsFile.Open(wrongShape))
        {
            var error = Assert.Throws<AdapterMismatchException>(() => loaded.CreateLayers(Device.Cpu, baseModel).Dispose());
            Assert.That(error!.Module, Is.EqualTo(Q));
            Assert.That(error.Message, Does.Contain($"[{Out}, {In + 1}]"));
        }
    }

    [Test]
    public void LayersWithDifferentRanksSaveRankAndAlphaPatterns()
    {
        Device device = Device.Cpu;
        var data = new TestData(24);
        using Tensor w0 = Tensor.FromArray(device, data.NonZero(Out * In), Out, In);
        using var q = new LoraLinear(device, w0, null, R, 8f);
        using var v = new LoraLinear(device, w0, null, 2 * R, 32f);
        using var q1 = new LoraLinear(device, w0, null, R, 8f);
        foreach (var layer in new[] { q, v, q1 }) Randomize(layer, data);
        PeftAdapter adapter = PeftAdapter.FromLayers([new(Q, q), new(V, v), new(Q1, q1)]);
        Assert.That(adapter.Config.Rank, Is.EqualTo(R));
        Assert.That(adapter.Config.RankPattern, Is.EqualTo(new Dictionary<string, int> { [V] = 2 * R }));
        Assert.That(adapter.Config.AlphaPattern, Is.EqualTo(new Dictionary<string, float> { [V] = 32f }));
        using var folder = SafeTensorsFiles.NewFolder("patterns");
        adapter.Save(folder.Path);
        PeftModule reread = PeftAdapter.Load(folder.Path).Module(V)!;
        Assert.That((reread.Rank, reread.Scale), Is.EqualTo((2 * R, 4f)));
    }

    /// <summary>Non-zero values in every trainable tensor (B starts at zero, which would make any test vacuous).</summary>
    internal static void Randomize(IAdapterLayer layer, TestData data)
    {
        foreach (var parameter in layer.Parameters())
        {
            float[] values = data.NonZero((int)parameter.Value.ElementCount, 0.3f);
            if (parameter.Name == "lora_magnitude_vector") values = values.Select(v => Math.Abs(v) + 1f).ToArray();
            parameter.Value.CopyFrom(values);
        }
        if (layer is LoraFaLinear fa) fa.A.CopyFrom(data.NonZero((int)fa.A.ElementCount, 0.3f));
    }

    /// <summary>The base safetensors for the layers: each one's frozen W0 (PiSSA's residual) or 4-bit state, and the biases.</summary>
    private static void WriteBase(string path, Dictionary<string, IAdapterLayer> layers, Dictionary<string, float[]> biases)
    {
        var writer = new SafeTensorsWriter();
        foreach (var (module, layer) in layers)
        {
            QuantizedWeight? quantized = layer switch { QloraLinear q => q.Base.Weight, DoraLinear { IsQuantized: true } d => d.QuantizedW0, _ => null };
            if (quantized is not null)
            {
                foreach (StateTensor state in LoraKernels.Ops.Nf4.ExportState(quantized, $"{module}.weight"))
                    writer.Add(state.Key, Enum.Parse<SafeTensorDType>(state.DType), state.Shape,
                               state.Data is float[] f ? System.Runtime.InteropServices.MemoryMarshal.AsBytes(f.AsSpan()).ToArray() : (byte[])state.Data);
            }
            else
            {
                Tensor w0 = layer switch { AdaptedLinear<DenseLinear> d => d.Base.Weight, DoraLinear d => d.W0, _ => throw new InvalidOperationException() };
                writer.AddSingles($"{module}.weight", w0.ToArray(), [Out, In]);
            }
            if (module == Q) writer.AddSingles($"{module}.bias", biases[module], [Out]);
        }
        writer.AddSingles("model.embed_tokens.weight", new TestData(9).NonZero(3 * In), [3, In]);
        writer.Save(path);
    }

    /// <summary>The saved keys are exactly PEFT's for the variant (read back from the file by name).</summary>
    private static void CheckKeys(string path, string variant)
    {
        using var file = SafeTensorsFile.Open(path);
        string[] perModule = variant switch
        {
            "vera" => ["vera_lambda_b", "vera_lambda_d"],
            "lokr" => ["lokr_w1", "lokr_w2"],  // in 24 = 4·6, out 20 = 4·5, r 4 >= max(5, 6)/2: both factors full
            "dora" or "qdora" => ["lora_A.weight", "lora_B.weight", "lora_magnitude_vector"],
            _ => ["lora_A.weight", "lora_B.weight"],
        };
        var expected = Modules.SelectMany(m => perModule.Select(c => $"base_model.model.{m}.{c}")).ToList();
        if (variant == "vera") expected.AddRange(["base_model.vera_A", "base_model.vera_B"]);
        Assert.That(file.Tensors.Select(t => t.Name).Order(StringComparer.Ordinal), Is.EqualTo(expected.Order(StringComparer.Ordinal)));
        Assert.That(file.Metadata["format"], Is.EqualTo("pt"));
    }
}
