using LoraKernels.IO;

namespace LoraKernels.Tests.IO;

/// <summary>
/// PEFT-format fixtures built from PEFT's documented conventions (REFERENCE.md §9): the config
/// text as save_pretrained writes it and the tensors under PEFT's keys, written here without the
/// library's PEFT code, so reading them tests the reader against the convention, not against itself.
/// </summary>
internal static class PeftFixtures
{
    public const string Q = "model.layers.0.self_attn.q_proj";
    public const string V = "model.layers.0.self_attn.v_proj";
    public const string Q1 = "model.layers.1.self_attn.q_proj";
    public const string V1 = "model.layers.1.self_attn.v_proj";

    /// <summary>A named float tensor: key, shape, values, stored dtype.</summary>
    public sealed record Entry(string Key, long[] Shape, float[] Values, SafeTensorDType DType = SafeTensorDType.F32);

    public static Entry Random(TestData data, string key, params long[] shape) =>
        new(key, shape, data.NonZero((int)shape.Aggregate(1L, (a, b) => a * b), 0.5f));

    /// <summary>Writes a safetensors file with <paramref name="entries"/> (through the writer, which the safetensors tests cover).</summary>
    public static void WriteTensors(string path, IEnumerable<Entry> entries, bool peftMetadata = true)
    {
        var writer = new SafeTensorsWriter(peftMetadata ? new Dictionary<string, string> { ["format"] = "pt" } : null);
        foreach (Entry entry in entries) writer.AddSingles(entry.Key, entry.Values, entry.Shape, entry.DType);
        writer.Save(path);
    }

    /// <summary>An adapter folder: <paramref name="configJson"/> as adapter_config.json and the tensors as adapter_model.safetensors.</summary>
    public static string WriteAdapter(string folder, string configJson, IEnumerable<Entry> tensors)
    {
        Directory.CreateDirectory(folder);
        File.WriteAllText(Path.Combine(folder, "adapter_config.json"), configJson);
        WriteTensors(Path.Combine(folder, "adapter_model.safetensors"), tensors);
        return folder;
    }

    /// <summary>A LoRA config as PEFT 0.20 writes it (sorted keys, indent 2), with the fields that matter here.</summary>
    public static string LoraConfig(int r, float alpha, string targetModules = "[\"q_proj\", \"v_proj\"]", bool useDora = false,
                                    bool useRsLora = false, string extra = "") => $$"""
        {
          "alpha_pattern": {},
          "auto_mapping": null,
          "base_model_name_or_path": "tiny-llama",
          "bias": "none",
          "fan_in_fan_out": false,
          "inference_mode": true,
          "init_lora_weights": true,
          "layers_pattern": null,
          "layers_to_transform": null,
          "lora_alpha": {{alpha.ToString(System.Globalization.CultureInfo.InvariantCulture)}},
          "lora_bias": false,
          "lora_dropout": 0.05,
          "modules_to_save": null,
          "peft_type": "LORA",{{extra}}
          "r": {{r}},
          "rank_pattern": {},
          "revision": null,
          "target_modules": {{targetModules}},
          "task_type": "CAUSAL_LM",
          "use_dora": {{(useDora ? "true" : "false")}},
          "use_rslora": {{(useRsLora ? "true" : "false")}}
        }
        """;

    public static string VeraConfig(int r, string targetModules = "[\"q_proj\", \"v_proj\"]") => $$"""
        {
          "bias": "none",
          "d_initial": 0.1,
          "fan_in_fan_out": false,
          "inference_mode": true,
          "init_weights": true,
          "modules_to_save": null,
          "peft_type": "VERA",
          "projection_prng_key": 0,
          "r": {{r}},
          "save_projection": true,
          "target_modules": {{targetModules}},
          "task_type": null,
          "vera_dropout": 0.0
        }
        """;

    /// <summary>Double-precision dense reference of W0 + s·B·A ([out, in], row-major).</summary>
    public static double[] LoraMerged(float[] w0, float[] a, float[] b, int outFeatures, int inFeatures, int r, double scale)
    {
        var result = new double[w0.Length];
        for (int o = 0; o < outFeatures; o++)
            for (int i = 0; i < inFeatures; i++)
            {
                double delta = 0;
                for (int k = 0; k < r; k++) delta += (double)b[o * r + k] * a[k * inFeatures + i];
                result[o * inFeatures + i] = w0[o * inFeatures + i] + scale * delta;
            }
        return result;
    }

    /// <summary>DoRA's merge in double: (m / ‖W0 + s·B·A‖_row) ⊙ (W0 + s·B·A).</summary>
    public static double[] DoraMerged(float[] w0, float[] a, float[] b, float[] m, int outFeatures, int inFeatures, int r, double scale)
    {
        double[] combined = LoraMerged(w0, a, b, outFeatures, inFeatures, r, scale);
        for (int o = 0; o < outFeatures; o++)
        {
            double norm = 0;
            for (int i = 0; i < inFeatures; i++) norm += combined[o * inFeatures + i] * combined[o * inFeatures + i];
            double g = m[o] / Math.Sqrt(norm);
            for (int i = 0; i < inFeatures; i++) combined[o * inFeatures + i] *= g;
        }
        return combined;
    }

    /// <summary>VeRA's merge in double: W0 + diag(λ_b)·B_l·diag(λ_d)·A_l with A_l = vera_A[:, :in], B_l = vera_B[:out, :].</summary>
    public static double[] VeraMerged(float[] w0, float[] veraA, int maxIn, float[] veraB, float[] lambdaD, float[] lambdaB,
                                      int outFeatures, int inFeatures, int r)
    {
        var result = new double[w0.Length];
        for (int o = 0; o < outFeatures; o++)
            for (int i = 0; i < inFeatures; i++)
            {
                double delta = 0;
                for (int k = 0; k < r; k++) delta += (double)veraB[o * r + k] * lambdaD[k] * veraA[k * maxIn + i];
                result[o * inFeatures + i] = w0[o * inFeatures + i] + lambdaB[o] * delta;
            }
        return result;
    }

    /// <summary>Bound for an fp32 result of a length-n reduction: 4·n·2⁻²⁴·Σ|terms| plus a floor.</summary>
    public static double[] Fp32Bound(double[] reference, int reduction) =>
        reference.Select(v => 4.0 * (reduction + 2) * Math.Pow(2, -24) * (Math.Abs(v) + 1) + 1e-6).ToArray();
}
