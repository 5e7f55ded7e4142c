using LoraKernels.IO.Peft;
using LoraKernels.Layers;
using LoraKernels.Variants;

namespace LoraKernels.Tests.Api;

/// <summary>
/// AdapterOptions read as PEFT's LoraConfig: each layer built from options equals the one built from the
/// same values positionally, init_lora_weights="gaussian" draws A ~ N(0, (1/r)²), and a saved
/// adapter_config.json maps across field by field (rank_pattern, alpha_pattern, use_rslora, pissa_niter_K).
/// </summary>
[TestFixture]
public sealed class AdapterOptionsTests
{
    private static readonly Device Device = Device.Cpu;

    [Test]
    public void OptionsBuildTheSameLayersAsPositionalArguments()
    {
        var data = new TestData(4);
        using Tensor w0 = Tensor.FromArray(Device, data.NonZero(12 * 10), 12, 10);
        var options = new AdapterOptions { Rank = 4, Alpha = 16f, Dropout = 0.1f, UseRsLora = true, Seed = 99 };
        using var fromOptions = new LoraLinear(Device, w0, null, options);
        using var positional = new LoraLinear(Device, w0, null, 4, 16f, 0.1f, useRsLora: true, seed: 99);
        Assert.That(fromOptions.Scale, Is.EqualTo(16f / MathF.Sqrt(4)), "use_rslora: alpha/√r");
        Assert.That(options.Scale, Is.EqualTo(fromOptions.Scale), "the options say the scale the layer applies");
        Assert.That((fromOptions.Rank, fromOptions.Alpha, fromOptions.Dropout), Is.EqualTo((4, 16f, 0.1f)));
        Expect.Exact("A", fromOptions.A.Value.ToArray(), positional.A.Value.ToArray());

        using var defaults = new LoraLinear(Device, w0, null, new AdapterOptions());
        Assert.That((defaults.Rank, defaults.Alpha, defaults.Scale), Is.EqualTo((8, 8f, 1f)), "PEFT's defaults r = 8, lora_alpha = 8");

        using var dora = new DoraLinear(Device, w0, null, options);
        using var qlora = new QloraLinear(Device, w0, null, options);
        using var fa = new LoraFaLinear(Device, w0, null, options);
        foreach (float scale in new[] { dora.Scale, qlora.Scale, fa.Scale }) Assert.That(scale, Is.EqualTo(fromOptions.Scale));
        Expect.Exact("DoRA's A", dora.A.Value.ToArray(), positional.A.Value.ToArray());
        Expect.Exact("QLoRA's A", qlora.A.Value.ToArray(), positional.A.Value.ToArray());
        Assert.Throws<ArgumentNullException>(() => new LoraLinear(Device, w0, null, (AdapterOptions)null!));
    }

    [Test]
    public void GaussianInitDrawsAWithStandardDeviationOneOverR()
    {
        const int r = 4, inFeatures = 4096;
        using Tensor w0 = Tensor.FromArray(Device, new TestData(1).NonZero(8 * inFeatures), 8, inFeatures);
        using var layer = new LoraLinear(Device, w0, null, new AdapterOptions { Rank = r, Init = LoraInit.Gaussian, Seed = 5 });
        float[] a = layer.A.Value.ToArray();
        double mean = a.Average(v => (double)v), std = Math.Sqrt(a.Average(v => (v - mean) * (v - mean)));
        // n = 16384 draws of N(0, 1/16): the sample mean is within 5 standard errors (5·0.25/128 ≈ 0.0098) of 0,
        // the sample deviation within 5·σ/√(2n) ≈ 0.0069 of 0.25; U(±1/√in) (the default) would give 0.009.
        Assert.That(mean, Is.EqualTo(0).Within(0.0098));
        Assert.That(std, Is.EqualTo(0.25).Within(0.0069));
        Assert.That(layer.B.Value.ToArray(), Is.All.EqualTo(0f), "B starts at zero");
        var e = Assert.Throws<ArgumentException>(() => new LoraLinear(Device, w0, null, new AdapterOptions { Init = LoraInit.Pissa }))!;
        Assert.That(e.Message, Does.Contain("Pissa.CreateLayer"));
    }

    [Test]
    public void APeftConfigReadsAcrossFieldByField()
    {
        PeftConfig config = PeftConfig.Parse("""
            {"peft_type": "LORA", "r": 16, "lora_alpha": 32, "lora_dropout": 0.05, "use_rslora": true,
             "init_lora_weights": "pissa_niter_4", "target_modules": ["q_proj", "v_proj"],
             "rank_pattern": {"v_proj": 4}, "alpha_pattern": {"v_proj": 2}}
            """u8);
        AdapterOptions q = config.ToAdapterOptions("model.layers.0.self_attn.q_proj");
        Assert.That((q.Rank, q.Alpha, q.Dropout, q.UseRsLora, q.Init, q.PissaIterations),
                    Is.EqualTo(((int?)16, (float?)32f, 0.05f, true, LoraInit.Pissa, (int?)4)));
        AdapterOptions v = config.ToAdapterOptions("model.layers.0.self_attn.v_proj");
        Assert.That((v.Rank, v.Alpha), Is.EqualTo(((int?)4, (float?)2f)), "rank_pattern and alpha_pattern apply per module");

        AdapterOptions gaussian = PeftConfig.Parse("""{"peft_type": "LORA", "init_lora_weights": "gaussian"}"""u8).ToAdapterOptions();
        Assert.That((gaussian.Rank, gaussian.Alpha, gaussian.Init), Is.EqualTo(((int?)8, (float?)8f, LoraInit.Gaussian)));
        var e = Assert.Throws<NotSupportedException>(() => PeftConfig.Parse("""{"peft_type": "LORA", "init_lora_weights": "olora"}"""u8).ToAdapterOptions())!;
        Assert.That(e.Message, Does.Contain("olora"));
    }
}
