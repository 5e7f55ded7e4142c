using LoraKernels.IO;
using LoraKernels.IO.Peft;
using static LoraKernels.Tests.IO.PeftFixtures;

namespace LoraKernels.Tests.IO;

/// <summary>
/// merge_and_unload into a new safetensors file equals the dense computation (written here in
/// double precision from REFERENCE.md's formulas), for every mergeable variant and base dtype;
/// other tensors are copied byte for byte; a 4-bit base is dequantized, merged, requantized and
/// its reported error is the error actually added.
/// </summary>
public sealed class MergeTests
{
    private const int In = 24, Out = 20, R = 4;

    [TestCase("lora", SafeTensorDType.F32)]
    [TestCase("lora", SafeTensorDType.BF16)]
    [TestCase("lora", SafeTensorDType.F16)]
    [TestCase("rslora", SafeTensorDType.F32)]
    [TestCase("dora", SafeTensorDType.F32)]
    [TestCase("dora", SafeTensorDType.BF16)]
    [TestCase("vera", SafeTensorDType.F32)]
    public void MergeEqualsTheDenseComputation(string variant, SafeTensorDType baseDType)
    {
        using var folder = SafeTensorsFiles.NewFolder($"merge-{variant}-{baseDType}");
        var data = new TestData(TestData.SeedFor(variant + baseDType));
        // The base as its dtype stores it, plus tensors the merge must copy untouched.
        var w0 = new Dictionary<string, float[]>
        {
            [Q] = RoundTo(baseDType, data.NonZero(Out * In)),
            [V] = RoundTo(baseDType, data.NonZero(Out * In)),
        };
        Entry embed = Random(data, "model.embed_tokens.weight", 7, In) with { DType = baseDType };
        var baseEntries = new List<Entry>
        {
            new($"{Q}.weight", [Out, In], w0[Q], baseDType), new($"{V}.weight", [Out, In], w0[V], baseDType),
            new($"{Q}.bias", [Out], data.NonZero(Out), baseDType), embed,
        };
        string basePath = folder.File("base.safetensors");
        var baseWriter = new SafeTensorsWriter(new Dictionary<string, string> { ["format"] = "pt", ["origin"] = "test" });
        foreach (Entry e in baseEntries) baseWriter.AddSingles(e.Key, e.Values, e.Shape, e.DType);
        baseWriter.Add("position_ids", SafeTensorDType.I64, [3], BitConverter.GetBytes(1L).Concat(BitConverter.GetBytes(2L)).Concat(BitConverter.GetBytes(-3L)).ToArray());
        baseWriter.Save(basePath);

        var tensors = new List<Entry>();
        var expected = new Dictionary<string, double[]>();
        float alpha = 12f;
        if (variant == "vera")
        {
            Entry veraA = Random(data, "base_model.vera_A", R, In), veraB = Random(data, "base_model.vera_B", Out, R);
            tensors.AddRange([veraA, veraB]);
            foreach (string m in new[] { Q, V })
            {
                Entry lambdaB = Random(data, $"base_model.model.{m}.vera_lambda_b", Out), lambdaD = Random(data, $"base_model.model.{m}.vera_lambda_d", R);
                tensors.AddRange([lambdaB, lambdaD]);
                expected[m] = VeraMerged(w0[m], veraA.Values, In, veraB.Values, lambdaD.Values, lambdaB.Values, Out, In, R);
            }
        }
        else
        {
            double scale = variant == "rslora" ? alpha / Math.Sqrt(R) : alpha / R;
            foreach (string m in new[] { Q, V })
            {
                Entry a = Random(data, $"base_model.model.{m}.lora_A.weight", R, In), b = Random(data, $"base_model.model.{m}.lora_B.weight", Out, R);
                tensors.AddRange([a, b]);
                if (variant == "dora")
                {
                    Entry magnitude = new($"base_model.model.{m}.lora_magnitude_vector", [Out], data.NonZero(Out).Select(v => Math.Abs(v) * 3 + 1).ToArray());
                    tensors.Add(magnitude);
                    expected[m] = DoraMerged(w0[m], a.Values, b.Values, magnitude.Values, Out, In, R, scale);
                }
                else
                {
                    expected[m] = LoraMerged(w0[m], a.Values, b.Values, Out, In, R, scale);
                }
            }
        }
        string config = variant == "vera" ? VeraConfig(R) : LoraConfig(R, alpha, useDora: variant == "dora", useRsLora: variant == "rslora");
        PeftAdapter adapter = PeftAdapter.Load(WriteAdapter(folder.File("adapter"), config, tensors));
        string output = folder.File("merged.safetensors");
        var progress = new List<MergeProgress>();
        MergeReport report = AdapterMerge.Merge(basePath, adapter, output, new MergeOptions { Progress = new SyncProgress<MergeProgress>(progress.Add) });

        Assert.That(report.Modules.Select(m => m.Module), Is.EqualTo(new[] { Q, V }));
        Assert.That(report.Modules.All(m => m.MaxChange > 1e-3), Is.True, "the adapter changed the weights");
        Assert.That(report.TensorsCopied, Is.EqualTo(3));
        Assert.That(progress.Count(p => p.Stage == "write"), Is.EqualTo(5));
        Assert.That(progress[^1].BytesDone, Is.EqualTo(progress[^1].BytesTotal));
        using var merged = SafeTensorsFile.Open(output);
        using var original = SafeTensorsFile.Open(basePath);
        Assert.That(merged.Metadata["origin"], Is.EqualTo("test"), "base metadata kept");
        foreach (string m in new[] { Q, V })
        {
            Assert.That(merged[$"{m}.weight"].DType, Is.EqualTo(baseDType));
            double[] reference = expected[m];
            Expect.NotVacuous($"{variant} {m}", reference);
            // fp32 merge error (reduction over r, or over in for DoRA's norm) plus one rounding to the base dtype.
            double unit = baseDType switch { SafeTensorDType.BF16 => Math.Pow(2, -8), SafeTensorDType.F16 => Math.Pow(2, -11), _ => 0 };
            double[] bound = Fp32Bound(reference, variant == "dora" ? In : R).Zip(reference, (b, v) => b + unit * Math.Abs(v) * 1.01).ToArray();
            Expect.Close($"merged {m} ({variant}, {baseDType})", merged.ReadSingles($"{m}.weight"), reference, bound);
        }
        foreach (string name in new[] { $"{Q}.bias", embed.Key, "position_ids" })
            Assert.That(merged.ReadBytes(name), Is.EqualTo(original.ReadBytes(name)), $"{name} copied byte for byte");
    }

    [Test]
    public void FanInFanOutWeightsAreMergedInTheirOwnLayout()
    {
        using var folder = SafeTensorsFiles.NewFolder("merge-conv1d");
        var data = new TestData(31);
        const string attn = "transformer.h.0.attn.c_attn";
        float[] w0 = data.NonZero(Out * In);                    // [out, in]
        float[] stored = new float[w0.Length];                  // Conv1D stores [in, out]
        for (int o = 0; o < Out; o++) for (int i = 0; i < In; i++) stored[i * Out + o] = w0[o * In + i];
        string basePath = folder.File("base.safetensors");
        WriteTensors(basePath, [new($"{attn}.weight", [In, Out], stored)], peftMetadata: false);
        Entry a = Random(data, $"base_model.model.{attn}.lora_A.weight", R, In), b = Random(data, $"base_model.model.{attn}.lora_B.weight", Out, R);
        string config = LoraConfig(R, 8, "[\"c_attn\"]").Replace("\"fan_in_fan_out\": false", "\"fan_in_fan_out\": true");
        PeftAdapter adapter = PeftAdapter.Load(WriteAdapter(folder.File("adapter"), config, [a, b]));
        string output = folder.File("merged.safetensors");
        AdapterMerge.Merge(basePath, adapter, output);
        double[] reference = LoraMerged(w0, a.Values, b.Values, Out, In, R, 2.0);
        double[] transposed = new double[reference.Length];
        for (int o = 0; o < Out; o++) for (int i = 0; i < In; i++) transposed[i * Out + o] = reference[o * In + i];
        using var merged = SafeTensorsFile.Open(output);
        Assert.That(merged[$"{attn}.weight"].Shape, Is.EqualTo(new[] { In, Out }));
        Expect.Close("merged Conv1D weight", merged.ReadSingles($"{attn}.weight"), transposed, Fp32Bound(transposed, R));
    }

    [TestCase(false)]
    [TestCase(true)]
    public void MergingIntoAnNf4BaseRequantizesAndReportsTheAddedError(bool nested)
    {
        using var folder = SafeTensorsFiles.NewFolder($"merge-nf4-{nested}");
        var data = new TestData(nested ? 41ul : 42ul);
        const int @out = 64, @in = 96;
        using Tensor dense = Tensor.FromArray(Device.Cpu, data.NonZero(@out * @in), @out, @in);
        using QuantizedWeight quantized = LoraKernels.Ops.Nf4.Quantize(dense, QuantType.Nf4, blockSize: 64, doubleQuant: nested);
        using Tensor dequantized = LoraKernels.Ops.Nf4.Dequantize(quantized);
        float[] deq = dequantized.ToArray();
        string basePath = folder.File("base.safetensors");
        var writer = new SafeTensorsWriter();
        foreach (StateTensor state in LoraKernels.Ops.Nf4.ExportState(quantized, $"{Q}.weight"))
            writer.Add(state.Key, Enum.Parse<SafeTensorDType>(state.DType), state.Shape,
                       state.Data is float[] f ? System.Runtime.InteropServices.MemoryMarshal.AsBytes(f.AsSpan()).ToArray() : (byte[])state.Data);
        writer.AddSingles("lm_head.weight", data.NonZero(3 * @in), [3, @in]);
        writer.Save(basePath);

        Entry a = Random(data, $"base_model.model.{Q}.lora_A.weight", R, @in), b = Random(data, $"base_model.model.{Q}.lora_B.weight", @out, R);
        PeftAdapter adapter = PeftAdapter.Load(WriteAdapter(folder.File("adapter"), LoraConfig(R, 8, "[\"q_proj\"]"), [a, b]));
        string output = folder.File("merged.safetensors");
        MergeReport report = AdapterMerge.Merge(basePath, adapter, output);

        double[] reference = LoraMerged(deq, a.Values, b.Values, @out, @in, R, 2.0);
        using var merged = SafeTensorsFile.Open(output);
        using QuantizedWeight result = BaseWeights.ImportQuantized(merged, $"{Q}.weight", Device.Cpu);
        Assert.That((result.QuantType, result.BlockSize, result.IsNested), Is.EqualTo((QuantType.Nf4, 64, nested)), "same quantization settings");
        using Tensor back = LoraKernels.Ops.Nf4.Dequantize(result);
        float[] values = back.ToArray();
        // Each element is within half the widest NF4 gap, (1 − 0.6961928)/2 (between codes 0 and 1), of its block's absmax of the merged weight.
        double[] bound = new double[reference.Length];
        for (int block = 0; block < reference.Length / 64; block++)
        {
            double absmax = reference.Skip(block * 64).Take(64).Max(Math.Abs);
            for (int i = 0; i < 64; i++) bound[block * 64 + i] = absmax * (1 - 0.6961928) / 2 * 1.01 + (nested ? absmax * 0.01 : 0) + 1e-6;
        }
        Expect.Close("requantized merged weight", values, reference, bound);
        MergedModule module = report.Modules.Single();
        Assert.That(module.BaseFormat, Is.EqualTo(nested ? "NF4 (nested)" : "NF4"));
        double rms = Math.Sqrt(values.Zip(reference, (x, y) => (x - y) * (x - y)).Sum() / values.Length);
        Assert.That(module.Requantization, Is.Not.Null);
        Assert.That(module.Requantization!.Rms, Is.EqualTo(rms).Within(1).Percent, "the reported error is the error added");
        Assert.That(module.Requantization.Rms, Is.GreaterThan(0));
        Assert.That(module.MaxChange, Is.GreaterThan(1e-3));
        Assert.That(Directory.GetFiles(folder.Path).Select(Path.GetFileName).Order(), Is.EqualTo(new[] { "base.safetensors", "merged.safetensors" }),
                    "the spill file is gone");
    }

    [Test]
    public void ModulesToSaveReplaceTheBaseTensors()
    {
        using var folder = SafeTensorsFiles.NewFolder("merge-saved");
        var data = new TestData(51);
        string basePath = folder.File("base.safetensors");
        WriteTensors(basePath, [Random(data, $"{Q}.weight", Out, In), Random(data, "score.weight", 2, In)], peftMetadata: false);
        Entry score = Random(data, "base_model.model.score.weight", 2, In);
        string config = LoraConfig(R, 8, "[\"q_proj\"]").Replace("\"modules_to_save\": null", "\"modules_to_save\": [\"score\"]");
        PeftAdapter adapter = PeftAdapter.Load(WriteAdapter(folder.File("adapter"), config,
            [Random(data, $"base_model.model.{Q}.lora_A.weight", R, In), Random(data, $"base_model.model.{Q}.lora_B.weight", Out, R), score]));
        Assert.That(adapter.SavedTensors.Keys, Is.EqualTo(new[] { "score.weight" }));
        MergeReport report = AdapterMerge.Merge(basePath, adapter, folder.File("merged.safetensors"));
        Assert.That(report.TensorsReplaced, Is.EqualTo(1));
        using var merged = SafeTensorsFile.Open(folder.File("merged.safetensors"));
        Assert.That(merged.ReadSingles("score.weight"), Is.EqualTo(score.Values));
    }

    private static float[] RoundTo(SafeTensorDType dtype, float[] values) => dtype switch
    {
        SafeTensorDType.BF16 => Reference.RoundToBf16(values),
        SafeTensorDType.F16 => values.Select(v => (float)(Half)v).ToArray(),
        _ => values,
    };

    /// <summary>IProgress that reports on the calling thread (Progress&lt;T&gt; posts to the thread pool).</summary>
    private sealed class SyncProgress<T>(Action<T> report) : IProgress<T>
    {
        public void Report(T value) => report(value);
    }
}
