using System.Reflection;
using System.Text;
using LoraKernels.IO;
using LoraKernels.IO.Peft;

namespace LoraKernels.Tests.IO;

/// <summary>
/// Outside data with random damage (seeded byte flips, deletions, insertions and truncations of a valid
/// adapter_config.json and a valid safetensors file): reading it, and then every property and tensor it
/// claims to have, either works or throws the library's InvalidFileException (or NotSupportedException
/// for a well-formed value this library does not implement), never a raw JSON, IO, cast or range error.
/// The crafted corpora (MalformedSafeTensorsTests, Nf4StateCorruptionTests) check the messages; this
/// checks that nothing else escapes.
/// </summary>
[TestFixture]
public sealed class RandomCorruptionTests
{
    private const int Mutants = 1500;

    private static readonly byte[] Config = Encoding.UTF8.GetBytes("""
        {"peft_type": "LORA", "r": 16, "lora_alpha": 32, "lora_dropout": 0.05, "use_rslora": false, "use_dora": false,
         "init_lora_weights": true, "bias": "none", "target_modules": ["q_proj", "v_proj"], "fan_in_fan_out": false,
         "rank_pattern": {"v_proj": 4}, "alpha_pattern": {}, "modules_to_save": null, "layers_to_transform": [0, 1],
         "layers_pattern": "layers", "base_model_name_or_path": "tiny", "inference_mode": true}
        """);

    [Test]
    public void DamagedPeftConfigsFailOnlyWithTheLibrarysErrors()
    {
        var random = new Random(2026);
        int parsed = 0, refused = 0;
        PropertyInfo[] properties = typeof(PeftConfig).GetProperties(BindingFlags.Public | BindingFlags.Instance);
        for (int i = 0; i < Mutants; i++)
        {
            byte[] bytes = Mutate(Config, random);
            try
            {
                PeftConfig config = PeftConfig.Parse(bytes, "mutant.json");
                foreach (PropertyInfo property in properties) Touch(() => property.GetValue(config));
                Touch(() => config.ToAdapterOptions("model.layers.0.self_attn.v_proj"));
                parsed++;
            }
            catch (InvalidFileException)
            {
                refused++;
            }
            catch (Exception e)
            {
                Assert.Fail($"mutant {i} ({Encoding.UTF8.GetString(bytes)}) escaped as {e.GetType().Name}: {e.Message}");
            }
        }
        Assert.That(parsed, Is.GreaterThan(Mutants / 20), "some mutants still parse (the property reads are exercised)");
        Assert.That(refused, Is.GreaterThan(Mutants / 4), "most mutants are refused (the damage is real)");
    }

    [Test]
    public void DamagedSafeTensorsFilesFailOnlyWithTheLibrarysErrors()
    {
        byte[] valid = SafeTensorsFiles.Raw(
            "{\"__metadata__\":{\"format\":\"pt\"},\"a\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,16]}," +
            "\"b\":{\"dtype\":\"BF16\",\"shape\":[3],\"data_offsets\":[16,22]},\"c\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[22,24]}}",
            new byte[24]);
        using var folder = SafeTensorsFiles.NewFolder("random-corruption");
        var random = new Random(612);
        int opened = 0, refused = 0;
        for (int i = 0; i < Mutants; i++)
        {
            byte[] bytes = Mutate(valid, random);
            string path = folder.File($"mutant-{i}.safetensors");
            File.WriteAllBytes(path, bytes);
            try
            {
                using SafeTensorsFile file = SafeTensorsFile.Open(path);
                foreach (SafeTensorInfo tensor in file.Tensors)
                {
                    byte[] data = file.ReadBytes(tensor.Name);
                    Assert.That(data.LongLength, Is.EqualTo(tensor.ByteLength), $"mutant {i}: {tensor.Name}'s bytes");
                }
                opened++;
            }
            catch (InvalidFileException)
            {
                refused++;
            }
            catch (Exception e) when (e is not AssertionException)
            {
                Assert.Fail($"mutant {i} escaped as {e.GetType().Name}: {e.Message}");
            }
        }
        Assert.That(opened, Is.GreaterThan(0), "some mutants still open (the reads are exercised)");
        Assert.That(refused, Is.GreaterThan(Mutants / 4), "most mutants are refused (the damage is real)");
    }

    // A property read may throw the library's errors for a damaged value, or NotSupportedException for a
    // well-formed one this library does not implement; anything else escapes to the caller's catch.
    private static void Touch(Func<object?> read)
    {
        try
        {
            read();
        }
        catch (NotSupportedException)
        {
        }
        catch (TargetInvocationException e) when (e.InnerException is InvalidFileException or NotSupportedException)
        {
            if (e.InnerException is InvalidFileException invalid) throw invalid;
        }
        catch (TargetInvocationException e)
        {
            throw e.InnerException!;
        }
    }

    // JSON's structural characters, digits, letters of its literals, an escape and a byte that is never UTF-8.
    private static readonly byte[] Insertions = [.. Encoding.ASCII.GetBytes("{}[]\":,0123456789-.eE truefalsnul\\"), 0xff];

    /// <summary>One to four random edits: flip a byte to a random value, delete, insert, or truncate.</summary>
    private static byte[] Mutate(byte[] original, Random random)
    {
        var bytes = new List<byte>(original);
        int edits = 1 + random.Next(4);
        for (int e = 0; e < edits && bytes.Count > 0; e++)
        {
            int at = random.Next(bytes.Count);
            switch (random.Next(4))
            {
                case 0: bytes[at] = (byte)random.Next(256); break;
                case 1: bytes.RemoveAt(at); break;
                case 2: bytes.Insert(at, Insertions[random.Next(Insertions.Length)]); break;
                default: bytes.RemoveRange(at, bytes.Count - at); break;
            }
        }
        return bytes.ToArray();
    }
}
