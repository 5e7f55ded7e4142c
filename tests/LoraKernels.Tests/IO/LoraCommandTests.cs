using System.Text.Json;
using LoraKernels.Cli;
using static LoraKernels.Tests.IO.PeftFixtures;

namespace LoraKernels.Tests.IO;

/// <summary>The `lora` command, run in-process: its JSON output for scripts and the exit codes they rely on.</summary>
[NonParallelizable]
public sealed class LoraCommandTests
{
    private const int In = 16, Out = 12, R = 2;

    private static (int Code, string Out, string Error) Run(params string[] args)
    {
        TextWriter stdout = Console.Out, stderr = Console.Error;
        var output = new StringWriter();
        var error = new StringWriter();
        Console.SetOut(output);
        Console.SetError(error);
        try
        {
            return (Cli.Cli.Run(args), output.ToString(), error.ToString());
        }
        finally
        {
            Console.SetOut(stdout);
            Console.SetError(stderr);
        }
    }

    private static string Adapter(TempFolder folder, TestData data, params string[] modules) =>
        WriteAdapter(folder.File("adapter"), LoraConfig(R, 4, "[\"q_proj\"]"), modules.SelectMany(m => new[]
        {
            Random(data, $"base_model.model.{m}.lora_A.weight", R, In), Random(data, $"base_model.model.{m}.lora_B.weight", Out, R),
        }));

    [Test]
    public void InspectReportsAnAdapterAsJson()
    {
        using var folder = SafeTensorsFiles.NewFolder("cli-inspect");
        string adapter = Adapter(folder, new TestData(61), Q, Q1);
        var (code, output, _) = Run("inspect", adapter, "--json");
        Assert.That(code, Is.EqualTo(ExitCodes.Success));
        using JsonDocument json = JsonDocument.Parse(output);
        JsonElement root = json.RootElement;
        Assert.That(root.GetProperty("kind").GetString(), Is.EqualTo("peft-adapter"));
        Assert.That(root.GetProperty("variant").GetString(), Is.EqualTo("lora"));
        Assert.That(root.GetProperty("rank").GetInt32(), Is.EqualTo(R));
        Assert.That(root.GetProperty("parameters").GetInt64(), Is.EqualTo(2 * R * (In + Out)));
        Assert.That(root.GetProperty("tensors").GetArrayLength(), Is.EqualTo(4));
        JsonElement first = root.GetProperty("tensors")[0];
        Assert.That(first.GetProperty("name").GetString(), Is.EqualTo($"base_model.model.{Q}.lora_A.weight"));
        Assert.That(first.GetProperty("shape").EnumerateArray().Select(d => d.GetInt64()), Is.EqualTo(new long[] { R, In }));
        Assert.That(first.GetProperty("dtype").GetString(), Is.EqualTo("F32"));

        var (textCode, text, _) = Run("inspect", Path.Combine(adapter, "adapter_model.safetensors"));
        Assert.That(textCode, Is.EqualTo(ExitCodes.Success));
        Assert.That(text, Does.Contain("variant lora").And.Contain($"base_model.model.{Q1}.lora_B.weight"));
    }

    [Test]
    public void MergeAndQuantizeWriteTheirFilesAndReportAsJson()
    {
        using var folder = SafeTensorsFiles.NewFolder("cli-merge");
        var data = new TestData(62);
        string adapter = Adapter(folder, data, Q);
        string basePath = folder.File("base.safetensors");
        WriteTensors(basePath, [Random(data, $"{Q}.weight", Out, In), Random(data, "lm_head.weight", 3, In)], peftMetadata: false);
        string merged = folder.File("merged.safetensors");
        var (code, output, _) = Run("merge", basePath, adapter, "-o", merged, "--json");
        Assert.That(code, Is.EqualTo(ExitCodes.Success));
        using (JsonDocument json = JsonDocument.Parse(output))
        {
            Assert.That(json.RootElement.GetProperty("modules")[0].GetProperty("module").GetString(), Is.EqualTo(Q));
            Assert.That(json.RootElement.GetProperty("tensors_copied").GetInt32(), Is.EqualTo(1));
        }
        string quantized = folder.File("nf4.safetensors");
        var (quantizeCode, quantizeOutput, _) = Run("quantize", merged, "-o", quantized, "--nf4", "--double-quant", "--json");
        Assert.That(quantizeCode, Is.EqualTo(ExitCodes.Success));
        using (JsonDocument json = JsonDocument.Parse(quantizeOutput))
        {
            JsonElement only = json.RootElement.GetProperty("quantized").EnumerateArray().Single();
            Assert.That(only.GetProperty("name").GetString(), Is.EqualTo($"{Q}.weight"), "lm_head stays dense");
            Assert.That(only.GetProperty("relative_error").GetDouble(), Is.GreaterThan(0).And.LessThan(0.2));
        }
        using var file = LoraKernels.IO.SafeTensorsFile.Open(quantized);
        Assert.That(file.Contains($"{Q}.weight.quant_state.bitsandbytes__nf4"), Is.True);
        Assert.That(file.Contains($"{Q}.weight.nested_absmax"), Is.True);
        Assert.That(file["lm_head.weight"].DType, Is.EqualTo(LoraKernels.IO.SafeTensorDType.F32));
    }

    [Test]
    public void ExitCodesTellScriptsWhatWentWrong()
    {
        using var folder = SafeTensorsFiles.NewFolder("cli-codes");
        var data = new TestData(63);
        string adapter = Adapter(folder, data, Q, "model.layers.7.self_attn.q_proj");
        string basePath = folder.File("base.safetensors");
        WriteTensors(basePath, [Random(data, $"{Q}.weight", Out, In)], peftMetadata: false);
        string broken = folder.File("broken.safetensors");
        File.WriteAllBytes(broken, [1, 2, 3]);
        string lokr = WriteAdapter(folder.File("lokr"), """{"peft_type": "LOKR", "r": 8, "target_modules": ["q_proj"]}""",
                                   [Random(data, $"base_model.model.{Q}.lokr_w1", 3, 4), Random(data, $"base_model.model.{Q}.lokr_w2", 4, 4)]);

        Assert.That(Run().Code, Is.EqualTo(ExitCodes.Usage));
        Assert.That(Run("frobnicate").Code, Is.EqualTo(ExitCodes.Usage));
        Assert.That(Run("merge", basePath, adapter).Code, Is.EqualTo(ExitCodes.Usage), "no -o");
        Assert.That(Run("quantize", basePath, "-o", folder.File("q.safetensors")).Code, Is.EqualTo(ExitCodes.Usage), "no --nf4/--fp4");
        Assert.That(Run("inspect", basePath, "--bogus").Code, Is.EqualTo(ExitCodes.Usage));
        var invalid = Run("inspect", broken);
        Assert.That(invalid.Code, Is.EqualTo(ExitCodes.InvalidInput));
        Assert.That(invalid.Error, Does.Contain("broken.safetensors").And.Contain("truncated header"));
        var mismatch = Run("merge", basePath, adapter, "-o", folder.File("m.safetensors"));
        Assert.That(mismatch.Code, Is.EqualTo(ExitCodes.Mismatch));
        Assert.That(mismatch.Error, Does.Contain("model.layers.7.self_attn.q_proj"));
        Assert.That(Run("merge", basePath, lokr, "-o", folder.File("k.safetensors")).Code, Is.EqualTo(ExitCodes.Success), "LoKr merges");
        Assert.That(Run("inspect", folder.File("missing.safetensors")).Code, Is.EqualTo(ExitCodes.FileSystem));
        Assert.That(Run("inspect", lokr).Code, Is.EqualTo(ExitCodes.Success), "LoKr inspects");
    }

    [Test]
    public void VariantsAndDemoRun()
    {
        var (code, output, _) = Run("variants", "--json");
        Assert.That(code, Is.EqualTo(ExitCodes.Success));
        using JsonDocument json = JsonDocument.Parse(output);
        var lokr = json.RootElement.EnumerateArray().Single(v => v.GetProperty("name").GetString() == "lokr");
        Assert.That(lokr.GetProperty("peft_type").GetString(), Is.EqualTo("LOKR"));
        Assert.That(lokr.GetProperty("peft_attach_and_merge").GetBoolean(), Is.True);
        var adalora = json.RootElement.EnumerateArray().Single(v => v.GetProperty("name").GetString() == "adalora");
        Assert.That(adalora.GetProperty("peft_attach_and_merge").GetBoolean(), Is.True);
        var (demoCode, demo, demoError) = Run("demo", "--device", "cpu", "--json");
        Assert.That(demoCode, Is.EqualTo(ExitCodes.Success), demoError);
        using JsonDocument steps = JsonDocument.Parse(demo);
        Assert.That(steps.RootElement.GetProperty("steps").EnumerateArray().Select(s => s.GetProperty("step").GetString()),
                    Is.EqualTo(new[] { "base model", "train", "save as PEFT", "inspect", "merge", "quantize" }));
    }
}
