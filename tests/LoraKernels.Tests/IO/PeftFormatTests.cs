using System.Text.Json;
using LoraKernels.IO;
using LoraKernels.IO.Peft;
using static LoraKernels.Tests.IO.PeftFixtures;

namespace LoraKernels.Tests.IO;

/// <summary>Reading PEFT adapters made to PEFT's conventions, the key forms PEFT accepts, and clear errors for everything else.</summary>
public sealed class PeftFormatTests
{
    private const int In = 12, Out = 10, R = 4;

    private static List<Entry> LoraTensors(TestData data, string[] modules, string aSuffix = "lora_A.weight", string bSuffix = "lora_B.weight") =>
        modules.SelectMany(m => new[]
        {
            Random(data, $"base_model.model.{m}.{aSuffix}", R, In),
            Random(data, $"base_model.model.{m}.{bSuffix}", Out, R),
        }).ToList();

    [Test]
    public void ALoraAdapterMadeToPeftsConventionsReads()
    {
        using var folder = SafeTensorsFiles.NewFolder("peft-lora");
        var data = new TestData(1);
        List<Entry> tensors = LoraTensors(data, [Q, V]);
        string path = WriteAdapter(folder.Path, LoraConfig(R, 16), tensors);

        PeftAdapter adapter = PeftAdapter.Load(path);
        Assert.That(adapter.Variant, Is.EqualTo("lora"));
        Assert.That(adapter.Modules.Select(m => m.Path), Is.EqualTo(new[] { Q, V }));
        PeftModule q = adapter.Module(Q)!;
        Assert.That((q.Rank, q.Alpha, q.Scale, q.InFeatures, q.OutFeatures), Is.EqualTo((R, 16f, 4f, In, Out)));
        Assert.That(q["lora_A.weight"]!.Values, Is.EqualTo(tensors[0].Values));
        Assert.That(q["lora_B.weight"]!.Values, Is.EqualTo(tensors[1].Values));
        Assert.That(adapter.TrainableParameters, Is.EqualTo(2 * R * (In + Out)));
        Assert.That(adapter.Config.Dropout, Is.EqualTo(0.05f));

        // The .safetensors file itself, with the config beside it, reads the same.
        PeftAdapter byFile = PeftAdapter.Load(Path.Combine(path, "adapter_model.safetensors"));
        Assert.That(byFile.Module(V)!["lora_B.weight"]!.Values, Is.EqualTo(tensors[3].Values));
    }

    [Test]
    public void TheAdapterNameFormsPeftAcceptsReadAsTheSavedForms()
    {
        using var folder = SafeTensorsFiles.NewFolder("peft-default");
        var data = new TestData(2);
        var tensors = LoraTensors(data, [Q], "lora_A.default.weight", "lora_B.default.weight");
        tensors.Add(Random(data, $"base_model.model.{Q}.lora_magnitude_vector.default.weight", Out));
        string path = WriteAdapter(folder.Path, LoraConfig(R, 8, "[\"q_proj\"]", useDora: true), tensors);
        PeftAdapter adapter = PeftAdapter.Load(path);
        Assert.That(adapter.Variant, Is.EqualTo("dora"));
        PeftModule q = adapter.Module(Q)!;
        Assert.That(q.Tensors.Keys.Order(), Is.EqualTo(new[] { "lora_A.weight", "lora_B.weight", "lora_magnitude_vector" }));
        Assert.That(q["lora_magnitude_vector"]!.Values, Is.EqualTo(tensors[2].Values));
        Assert.That(q["lora_A.weight"]!.Key, Is.EqualTo($"base_model.model.{Q}.lora_A.weight"), "saved form");

        // A non-default adapter in PEFT's sub-folder, with its own name in the keys.
        string named = WriteAdapter(Path.Combine(folder.Path, "other", "mine"), LoraConfig(R, 8, "[\"q_proj\"]"),
                                    LoraTensors(data, [Q], "lora_A.mine.weight", "lora_B.mine.weight"));
        Assert.That(PeftAdapter.Load(Path.GetDirectoryName(named)!, "mine").Module(Q), Is.Not.Null);
    }

    [Test]
    public void AVeraAdapterReadsWithItsSharedProjections()
    {
        using var folder = SafeTensorsFiles.NewFolder("peft-vera");
        var data = new TestData(3);
        var tensors = new List<Entry>
        {
            Random(data, $"base_model.model.{Q}.vera_lambda_b", Out),
            Random(data, $"base_model.model.{Q}.vera_lambda_d.default", R),
            Random(data, "base_model.vera_A", R, In),
            Random(data, "base_model.vera_B", Out, R),
        };
        PeftAdapter adapter = PeftAdapter.Load(WriteAdapter(folder.Path, VeraConfig(R, "[\"q_proj\"]"), tensors));
        Assert.That(adapter.Variant, Is.EqualTo("vera"));
        Assert.That(adapter.SharedTensors.Keys.Order(), Is.EqualTo(new[] { "base_model.vera_A", "base_model.vera_B" }));
        Assert.That(adapter.Module(Q)!["vera_lambda_d"]!.Values, Is.EqualTo(tensors[1].Values));
        Assert.That(adapter.TrainableParameters, Is.EqualTo(Out + R), "projections are frozen and not counted");
    }

    [Test]
    public void LoKrAndAdaLoraReadWithTheirLayerShapes()
    {
        using var folder = SafeTensorsFiles.NewFolder("peft-pending");
        var data = new TestData(4);
        string lokr = WriteAdapter(Path.Combine(folder.Path, "lokr"), """{"peft_type": "LOKR", "r": 8, "alpha": 8, "target_modules": ["q_proj"]}""",
            [Random(data, $"base_model.model.{Q}.lokr_w1", 2, 3), Random(data, $"base_model.model.{Q}.lokr_w2", 5, 4)]);
        PeftAdapter a = PeftAdapter.Load(lokr);
        Assert.That(a.Variant, Is.EqualTo("lokr"));
        Assert.That(a.TrainableParameters, Is.EqualTo(6 + 20));
        Assert.That(a.Format.Available, Is.True);
        Assert.That((a.Module(Q)!.OutFeatures, a.Module(Q)!.InFeatures), Is.EqualTo((2 * 5, 3 * 4)), "kron(w1, w2) is [out_l·out_k, in_m·in_n]");
        string adalora = WriteAdapter(Path.Combine(folder.Path, "adalora"),
            // Pruned as PEFT saves it: rank_pattern names Λ's parameter and keeps 3 of init_r = 12 triplets.
            $$$"""{"peft_type": "ADALORA", "init_r": 12, "target_r": 8, "lora_alpha": 8, "total_step": 100, "target_modules": ["q_proj"], "rank_pattern": {"{{{Q}}}.lora_E": [true, false, false, true, false, false, false, false, false, true, false, false]}}""",
            [Random(data, $"base_model.model.{Q}.lora_A", 3, In), Random(data, $"base_model.model.{Q}.lora_E", 3, 1),
             Random(data, $"base_model.model.{Q}.lora_B", Out, 3)]);
        PeftAdapter b = PeftAdapter.Load(adalora);
        Assert.That((b.Variant, b.Module(Q)!.Rank), Is.EqualTo(("adalora", 3)));
        using var baseFile = SafeTensorsFiles.NewFolder("pending-base");
        string basePath = baseFile.File("base.safetensors");
        WriteTensors(basePath, [Random(data, $"{Q}.weight", Out, In)]);
        using var model = SafeTensorsFile.Open(basePath);
        Assert.That(b.Format.Available, Is.True);
        using (var layers = b.CreateLayers(Device.Cpu, model))
            Assert.That(layers.Layers, Has.Count.EqualTo(1), "AdaLoRA attaches");
    }

    public static IEnumerable<TestCaseData> BadConfigs()
    {
        yield return new TestCaseData("{\"r\": 8}", "peft_type", "is missing").SetName("Config_NoPeftType");
        yield return new TestCaseData("{\"peft_type\": \"LORA\", \"r\": \"8\"}", "r", "must be an integer").SetName("Config_RankAsString");
        yield return new TestCaseData("{\"peft_type\": \"LORA\", \"r\": 0}", "r", "[1, 2^31)").SetName("Config_RankZero");
        yield return new TestCaseData("{\"peft_type\": \"LORA\", \"target_modules\": 3}", "target_modules", "must be a string").SetName("Config_TargetsNumber");
        yield return new TestCaseData("{\"peft_type\": \"LORA\", \"target_modules\": [\"q\", 1]}", "target_modules", "[1] must be a string").SetName("Config_TargetsMixed");
        yield return new TestCaseData("{\"peft_type\": \"LORA\", \"target_modules\": \"(q\"}", "target_modules", "not a valid regular expression").SetName("Config_BadRegex");
        yield return new TestCaseData("{\"peft_type\": \"LORA\", \"lora_dropout\": 1.5}", "lora_dropout", "not a probability").SetName("Config_Dropout");
        yield return new TestCaseData("{\"peft_type\": \"LORA\", \"rank_pattern\": {\"q\": -1}}", "rank_pattern", "invalid value").SetName("Config_RankPattern");
        yield return new TestCaseData("{\"peft_type\": \"BOFT\"}", "peft_type", "not a tuner this library knows").SetName("Config_UnknownTuner");
        yield return new TestCaseData("{\"peft_type\": \"LORA\", \"use_dora\": \"yes\"}", "use_dora", "true or false").SetName("Config_DoraString");
        yield return new TestCaseData("{\"peft_type\": \"LORA\", \"r\": 8, \"r\": 4}", null, "not well-formed JSON").SetName("Config_DuplicateKey");
        yield return new TestCaseData("{\"peft_type\": \"LORA\",", null, "not well-formed JSON").SetName("Config_Truncated");
        yield return new TestCaseData("[\"LORA\"]", null, "must be a JSON object").SetName("Config_NotObject");
    }

    [TestCaseSource(nameof(BadConfigs))]
    public void ABadConfigNamesTheFileAndField(string json, string? field, string phrase)
    {
        using var folder = SafeTensorsFiles.NewFolder("peft-config");
        string path = folder.File("adapter_config.json");
        File.WriteAllText(path, json);
        var error = Assert.Throws<PeftFormatException>(() => PeftConfig.Load(path));
        Assert.That(error!.Message, Does.Contain(path).And.Contain(phrase));
        Assert.That(error.Key, Is.EqualTo(field));
    }

    public static IEnumerable<TestCaseData> BadKeys()
    {
        yield return new TestCaseData($"{Q}.lora_A.weight", "starts with \"base_model.model.\"").SetName("Key_NoPrefix");
        yield return new TestCaseData($"base_model.model.{Q}.lora_C.weight", "not a saved module's weight").SetName("Key_UnknownParameter");
        yield return new TestCaseData($"base_model.model.{Q}.lora_A.extra", "is not one of LORA's").SetName("Key_UnknownComponent");
        yield return new TestCaseData($"base_model.model.{Q}.vera_lambda_b", "is a VERA tensor").SetName("Key_OtherTuner");
        yield return new TestCaseData("base_model.model.lora_A.weight", "no module path").SetName("Key_NoModule");
    }

    [TestCaseSource(nameof(BadKeys))]
    public void AKeyOutsidePeftsNamingIsRejectedByName(string key, string phrase)
    {
        using var folder = SafeTensorsFiles.NewFolder("peft-keys");
        var data = new TestData(5);
        var tensors = LoraTensors(data, [Q]);
        tensors.Add(Random(data, key, Out));
        string path = WriteAdapter(folder.Path, LoraConfig(R, 8), tensors);
        var error = Assert.Throws<PeftFormatException>(() => PeftAdapter.Load(path));
        Assert.That(error!.Key, Is.EqualTo(key));
        Assert.That(error.Message, Does.Contain(phrase).And.Contain("adapter_model.safetensors"));
    }

    [Test]
    public void ShapesThatDisagreeWithEachOtherOrTheConfigAreRejectedByKey()
    {
        using var folder = SafeTensorsFiles.NewFolder("peft-shapes");
        var data = new TestData(6);
        string Write(string name, string config, params Entry[] tensors) => WriteAdapter(folder.File(name), config, tensors);
        var cases = new (string Path, string Key, string Phrase)[]
        {
            (Write("rank", LoraConfig(8, 8), Random(data, $"base_model.model.{Q}.lora_A.weight", R, In), Random(data, $"base_model.model.{Q}.lora_B.weight", Out, R)),
             $"base_model.model.{Q}.lora_A.weight", "r = 8"),
            (Write("pair", LoraConfig(R, 8), Random(data, $"base_model.model.{Q}.lora_A.weight", R, In), Random(data, $"base_model.model.{Q}.lora_B.weight", Out, R + 1)),
             $"base_model.model.{Q}.lora_B.weight", "B must be [out, r]"),
            (Write("missing", LoraConfig(R, 8), Random(data, $"base_model.model.{Q}.lora_A.weight", R, In)),
             $"base_model.model.{Q}.lora_B.weight", "is missing"),
            (Write("magnitude", LoraConfig(R, 8), Random(data, $"base_model.model.{Q}.lora_A.weight", R, In), Random(data, $"base_model.model.{Q}.lora_B.weight", Out, R),
                   Random(data, $"base_model.model.{Q}.lora_magnitude_vector", Out)),
             $"base_model.model.{Q}.lora_magnitude_vector", "use_dora is false"),
            (Write("vector", LoraConfig(R, 8, useDora: true), Random(data, $"base_model.model.{Q}.lora_A.weight", R, In), Random(data, $"base_model.model.{Q}.lora_B.weight", Out, R),
                   Random(data, $"base_model.model.{Q}.lora_magnitude_vector", Out + 1)),
             $"base_model.model.{Q}.lora_magnitude_vector", "[out] = [10]"),
        };
        foreach (var (path, key, phrase) in cases)
        {
            var error = Assert.Throws<PeftFormatException>(() => PeftAdapter.Load(path), path);
            Assert.That(error!.Key, Is.EqualTo(key), path);
            Assert.That(error.Message, Does.Contain(phrase), path);
        }
    }

    [Test]
    public void ConfigsAreWrittenAsPeftWritesThem()
    {
        PeftConfig config = PeftConfig.Parse("""{"target_modules": ["v_proj", "q_proj"], "peft_type": "LORA", "rank_pattern": {"z": 2, "a": 4}, "unknown_field": [1]}"""u8);
        string text = System.Text.Encoding.UTF8.GetString(config.ToJsonBytes());
        Assert.That(text, Is.EqualTo("{\n  \"peft_type\": \"LORA\",\n  \"rank_pattern\": {\n    \"a\": 4,\n    \"z\": 2\n  },\n" +
                                     "  \"target_modules\": [\n    \"v_proj\",\n    \"q_proj\"\n  ],\n  \"unknown_field\": [\n    1\n  ]\n}"));
        Assert.That((config.Rank, config.Alpha, config.Variant), Is.EqualTo((8, 8f, "lora")), "PEFT's defaults");
        Assert.That(config.RankFor("model.layers.0.a"), Is.EqualTo(4));
        Assert.That(config.RankFor("model.layers.0.b"), Is.EqualTo(8));
    }

    [TestCase("[\"q_proj\", \"v_proj\"]", "model.layers.3.self_attn.q_proj", true)]
    [TestCase("[\"q_proj\", \"v_proj\"]", "model.layers.3.self_attn.k_proj", false)]
    [TestCase("[\"q_proj\"]", "q_proj", true)]
    [TestCase("[\"q_proj\"]", "model.layers.3.self_attn.xq_proj", false)]
    [TestCase("[\"self_attn.q_proj\"]", "model.layers.3.self_attn.q_proj", true)]
    [TestCase("\".*\\\\.(q|v)_proj\"", "model.layers.3.self_attn.v_proj", true)]
    [TestCase("\".*\\\\.(q|v)_proj\"", "model.layers.3.self_attn.v_proj_extra", false)]
    [TestCase("\"q_proj\"", "model.layers.3.self_attn.q_proj", false)]
    public void TargetModulesMatchAsPeftMatches(string targets, string module, bool expected)
    {
        PeftConfig config = PeftConfig.Parse(System.Text.Encoding.UTF8.GetBytes($"{{\"peft_type\": \"LORA\", \"target_modules\": {targets}}}"));
        Assert.That(PeftTargeting.IsTargeted(config, module), Is.EqualTo(expected));
    }

    [Test]
    public void ExcludeModulesAndLayersToTransformFilterAsPeftDoes()
    {
        PeftConfig config = PeftConfig.Parse("""
            {"peft_type": "LORA", "target_modules": ["q_proj", "v_proj"], "exclude_modules": ["model.layers.2.self_attn.q_proj"],
             "layers_to_transform": [0, 2], "layers_pattern": "layers"}
            """u8);
        Assert.That(PeftTargeting.IsTargeted(config, "model.layers.0.self_attn.q_proj"), Is.True);
        Assert.That(PeftTargeting.IsTargeted(config, "model.layers.1.self_attn.q_proj"), Is.False, "layer 1 not in layers_to_transform");
        Assert.That(PeftTargeting.IsTargeted(config, "model.layers.2.self_attn.q_proj"), Is.False, "excluded");
        Assert.That(PeftTargeting.IsTargeted(config, "model.layers.2.self_attn.v_proj"), Is.True);
        Assert.That(PeftTargeting.IsTargeted(config, "model.blocks.0.self_attn.v_proj"), Is.False, "no 'layers' index");
        PeftConfig noPattern = PeftConfig.Parse("""{"peft_type": "LORA", "target_modules": ["q_proj"], "layers_to_transform": 1}"""u8);
        Assert.That(PeftTargeting.IsTargeted(noPattern, "transformer.h.1.attn.q_proj"), Is.True);
        Assert.That(PeftTargeting.IsTargeted(noPattern, "transformer.h.0.attn.q_proj"), Is.False);
    }

    [Test]
    public void TheConfigJsonIsValidAndKeepsUnknownFields()
    {
        using var folder = SafeTensorsFiles.NewFolder("peft-keep");
        var data = new TestData(7);
        string path = WriteAdapter(folder.File("in"), LoraConfig(R, 8, extra: "\n  \"megatron_core\": \"megatron.core\","), LoraTensors(data, [Q, V]));
        PeftAdapter.Load(path).Save(folder.File("out"));
        using JsonDocument json = JsonDocument.Parse(File.ReadAllBytes(Path.Combine(folder.File("out"), "adapter_config.json")));
        Assert.That(json.RootElement.GetProperty("megatron_core").GetString(), Is.EqualTo("megatron.core"));
        Assert.That(json.RootElement.GetProperty("task_type").GetString(), Is.EqualTo("CAUSAL_LM"));
        using var weights = SafeTensorsFile.Open(Path.Combine(folder.File("out"), "adapter_model.safetensors"));
        Assert.That(weights.Metadata["format"], Is.EqualTo("pt"));
        Assert.That(weights.Tensors.Select(t => t.Name).Order(), Is.EqualTo(LoraTensors(new TestData(7), [Q, V]).Select(e => e.Key).Order()));
    }
}
