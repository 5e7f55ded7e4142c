using System.Text;

namespace LoraKernels.Tests.Nf4;

/// <summary>
/// A corrupt bitsandbytes state is refused with the library's InvalidFileException naming the key and
/// the problem, before anything is allocated: malformed JSON, missing, null and mistyped keys, crafted
/// huge shapes, sizes that disagree with the data, and non-finite or negative statistics.
/// </summary>
[TestFixture(DeviceKind.Cpu)]
[TestFixture(DeviceKind.Simt)]
public sealed class Nf4StateCorruptionTests(DeviceKind kind)
{
    private const string JsonKey = "weight.quant_state.bitsandbytes__nf4";
    private Device Device => kind == DeviceKind.Cpu ? Device.Cpu : Device.Simt;

    private static string PlainJson(string shape = "[8, 8]") => $"{{\"quant_type\": \"nf4\", \"blocksize\": 64, \"dtype\": \"float32\", \"shape\": {shape}}}";

    /// <summary>(name, JSON text, the key the error must name, a fragment of its problem).</summary>
    private static IEnumerable<TestCaseData> JsonCorruptions()
    {
        yield return Case("truncated JSON", "{\"quant_type\": \"nf4\", \"blocksi", JsonKey, "not valid JSON");
        yield return Case("not an object", "[1, 2]", JsonKey, "JSON object");
        yield return Case("empty bytes", "", JsonKey, "not valid JSON");
        yield return Case("missing quant_type", "{\"blocksize\": 64, \"dtype\": \"float32\", \"shape\": [8, 8]}", $"{JsonKey}: quant_type", "missing");
        yield return Case("null quant_type", "{\"quant_type\": null, \"blocksize\": 64, \"dtype\": \"float32\", \"shape\": [8, 8]}", $"{JsonKey}: quant_type", "null");
        yield return Case("numeric quant_type", "{\"quant_type\": 4, \"blocksize\": 64, \"dtype\": \"float32\", \"shape\": [8, 8]}", $"{JsonKey}: quant_type", "string");
        yield return Case("unknown quant_type", "{\"quant_type\": \"int8\", \"blocksize\": 64, \"dtype\": \"float32\", \"shape\": [8, 8]}", $"{JsonKey}: quant_type", "neither nf4 nor fp4");
        yield return Case("fp4 under the nf4 key", "{\"quant_type\": \"fp4\", \"blocksize\": 64, \"dtype\": \"float32\", \"shape\": [8, 8]}", JsonKey, "different quant_type");
        yield return Case("string blocksize", "{\"quant_type\": \"nf4\", \"blocksize\": \"64\", \"dtype\": \"float32\", \"shape\": [8, 8]}", $"{JsonKey}: blocksize", "integer");
        yield return Case("fractional blocksize", "{\"quant_type\": \"nf4\", \"blocksize\": 64.5, \"dtype\": \"float32\", \"shape\": [8, 8]}", $"{JsonKey}: blocksize", "integer");
        yield return Case("odd blocksize", "{\"quant_type\": \"nf4\", \"blocksize\": 48, \"dtype\": \"float32\", \"shape\": [8, 8]}", $"{JsonKey}: blocksize", "powers of two");
        yield return Case("unknown dtype", "{\"quant_type\": \"nf4\", \"blocksize\": 64, \"dtype\": \"float16x\", \"shape\": [8, 8]}", $"{JsonKey}: dtype", "not float32 or bfloat16");
        yield return Case("missing shape", "{\"quant_type\": \"nf4\", \"blocksize\": 64, \"dtype\": \"float32\"}", $"{JsonKey}: shape", "missing");
        yield return Case("shape not a list", PlainJson("\"8x8\""), $"{JsonKey}: shape", "list of integers");
        yield return Case("negative dimension", PlainJson("[8, -8]"), $"{JsonKey}: shape", "[1, 2^31 - 1]");
        yield return Case("fractional dimension", PlainJson("[8, 8.5]"), $"{JsonKey}: shape", "[1, 2^31 - 1]");
        yield return Case("empty shape", PlainJson("[]"), $"{JsonKey}: shape", "empty");
        // 2^62 elements: a reader that trusted the shape would try to reserve exabytes.
        yield return Case("huge shape", PlainJson("[2147483647, 2147483647]"), $"{JsonKey}: shape", "more than 2^31 - 1 elements");
        yield return Case("overflowing dimension", PlainJson("[99999999999999999999, 2]"), $"{JsonKey}: shape", "[1, 2^31 - 1]");
        yield return Case("shape larger than the data", PlainJson("[64, 64]"), "weight", "the shape needs 2048");
    }

    private static TestCaseData Case(string name, string json, string key, string problem) =>
        new TestCaseData(json, key, problem).SetName($"CorruptJson_{name.Replace(' ', '_')}");

    [TestCaseSource(nameof(JsonCorruptions))]
    public void CorruptJsonNamesTheKey(string json, string key, string problem)
    {
        List<StateTensor> state = PlainState();
        state = state.Select(t => t.Key == JsonKey ? t with { Data = Encoding.UTF8.GetBytes(json) } : t).ToList();
        AssertRefused(state, key, problem);
    }

    [Test]
    public void MissingNullDuplicateAndMistypedEntriesNameTheKey()
    {
        List<StateTensor> state = PlainState();
        AssertRefused(state.Where(t => t.Key != JsonKey), "weight.quant_state.bitsandbytes__nf4", "missing");
        AssertRefused(state.Where(t => t.Key != "weight"), "weight", "missing");
        AssertRefused(state.Where(t => t.Key != "weight.quant_map"), "weight.quant_map", "missing");
        AssertRefused(state.Append(null!), "entry 4", "null");
        AssertRefused(state.Append(state[1]), "weight.absmax", "more than once");
        AssertRefused(Replace(state, "weight.absmax", null!), "weight.absmax", "null");
        AssertRefused(Replace(state, "weight.absmax", new byte[28]), "weight.absmax", "float[]");
        AssertRefused(Replace(state, "weight.absmax", new float[2]), "weight.absmax", "holds 2 floats");
        AssertRefused(Replace(state, "weight", new float[32]), "weight", "byte[]");
        AssertRefused(Replace(state, "weight", new byte[33]), "weight", "holds 33 bytes");
        AssertRefused(Replace(state, JsonKey, new int[3]), JsonKey, "byte[] or float[]");
        AssertRefused(Replace(state, JsonKey, "{\"quant_type\": \"n"u8.ToArray().Append((byte)0xff).Concat("4\"}"u8.ToArray()).ToArray()),
                      JsonKey, "not valid UTF-8");
        AssertRefused(state.Append(new StateTensor("weight.quant_state.bitsandbytes__fp4", "U8", [2], "{}"u8.ToArray())),
                      "weight.quant_state.bitsandbytes__fp4", "second quant_state");
    }

    [TestCase(float.NaN)]
    [TestCase(float.PositiveInfinity)]
    [TestCase(-1f)]
    public void NonFiniteOrNegativeStatisticsAreRefused(float bad)
    {
        List<StateTensor> plain = PlainState();
        float[] absmax = (float[])((float[])plain.Single(t => t.Key == "weight.absmax").Data).Clone();
        absmax[0] = bad;
        AssertRefused(Replace(plain, "weight.absmax", absmax), "weight.absmax", "finite and >= 0");

        List<StateTensor> nested = NestedState();
        float[] absmax2 = (float[])((float[])nested.Single(t => t.Key == "weight.nested_absmax").Data).Clone();
        absmax2[0] = bad;
        AssertRefused(Replace(nested, "weight.nested_absmax", absmax2), "weight.nested_absmax", "finite and >= 0");
    }

    [TestCase("NaN", JsonKey, "not valid JSON")]  // Python's json.dumps writes NaN, which JSON does not allow
    [TestCase("\"0.5\"", JsonKey + ": nested_offset", "number")]
    [TestCase("1e39", JsonKey + ": nested_offset", "finite float32")]
    public void BadNestedOffsetIsRefused(string offset, string key, string problem)
    {
        List<StateTensor> nested = NestedState();
        string json = Encoding.UTF8.GetString((byte[])nested.Single(t => t.Key == JsonKey).Data);
        int at = json.IndexOf("\"nested_offset\": ", StringComparison.Ordinal) + "\"nested_offset\": ".Length;
        string corrupted = json[..at] + offset + "}";
        AssertRefused(Replace(nested, JsonKey, Encoding.UTF8.GetBytes(corrupted)), key, problem);
    }

    [Test]
    public void RandomByteFlipsNeverCrashAndAreRefusedOrRoundTrip()
    {
        // Flipping bytes of the JSON gives either a state that still reads (a changed but valid field) or
        // the library's exception; never a raw JsonException, KeyNotFoundException or NullReferenceException.
        List<StateTensor> state = NestedState();
        byte[] json = (byte[])state.Single(t => t.Key == JsonKey).Data;
        var random = new Random(16);
        int refused = 0;
        for (int trial = 0; trial < 300; trial++)
        {
            byte[] corrupted = (byte[])json.Clone();
            corrupted[random.Next(corrupted.Length)] = (byte)random.Next(256);
            try
            {
                Ops.Nf4.ImportState(Device, Replace(state, JsonKey, corrupted)).Dispose();
            }
            catch (InvalidFileException)
            {
                refused++;
            }
        }
        Assert.That(refused, Is.GreaterThan(100), "most single-byte corruptions of the JSON are refused");
    }

    private void AssertRefused(IEnumerable<StateTensor> state, string key, string problem)
    {
        long before = Device.LiveAllocations;
        var e = Assert.Throws<InvalidFileException>(() => Ops.Nf4.ImportState(Device, state.ToList()))!;
        Assert.That(e.Key, Is.EqualTo(key), e.Message);
        Assert.That(e.Problem, Does.Contain(problem), e.Message);
        Assert.That(e.Message, Does.Contain(key));
        Assert.That(Device.LiveAllocations, Is.EqualTo(before), "nothing allocated by a refused import");
    }

    private static List<StateTensor> Replace(List<StateTensor> state, string key, Array data) =>
        state.Select(t => t.Key == key ? t with { Data = data } : t).ToList();

    private List<StateTensor> PlainState()
    {
        using Tensor w = Tensor.FromArray(Device, new TestData(51).NonZero(64), 8, 8);
        using QuantizedWeight q = Ops.Nf4.Quantize(w);
        return [.. Ops.Nf4.ExportState(q)];
    }

    private List<StateTensor> NestedState()
    {
        using Tensor w = Tensor.FromArray(Device, new TestData(52).NonZero(300 * 64), 300, 64);
        using QuantizedWeight q = Ops.Nf4.Quantize(w, doubleQuant: true);
        return [.. Ops.Nf4.ExportState(q)];
    }
}
