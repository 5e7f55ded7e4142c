using System.Text;
using LoraKernels.IO;

namespace LoraKernels.Tests.IO;

/// <summary>
/// A corpus of malformed safetensors files, generated here byte by byte: each must give a
/// SafeTensorsFormatException that names the file, the tensor at fault (where one is) and what is
/// wrong, before any tensor byte is used, and never a crash or a raw JSON/IO exception.
/// </summary>
public sealed class MalformedSafeTensorsTests
{
    private const string Entry = "{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}";

    public sealed record Case(string Name, byte[] Bytes, string? Key, string Phrase)
    {
        public override string ToString() => Name;
    }

    private static readonly byte[] Eight = SafeTensorsFiles.F32(1f, 2f);

    public static IEnumerable<TestCaseData> Corpus()
    {
        Case[] cases =
        [
            new("empty file", [], null, "8-byte header length"),
            new("truncated header length", [8, 0, 0, 0, 0], null, "truncated header"),
            new("header length past the end", SafeTensorsFiles.Raw("{\"a\":" + Entry + "}", Eight, declaredLength: 4096), null, "runs past the end of the file"),
            new("header length over the limit", SafeTensorsFiles.Raw("{}", null, declaredLength: 200_000_000), null, "exceeds the 100,000,000-byte limit"),
            new("header length zero", SafeTensorsFiles.Raw("{}", null, declaredLength: 0), null, "too short"),
            new("truncated header JSON", SafeTensorsFiles.Raw("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offs", padTo: 1), null, "not well-formed JSON"),
            new("bad JSON", SafeTensorsFiles.Raw("{\"a\": [1, 2,}", Eight), null, "not well-formed JSON"),
            new("invalid UTF-8", SafeTensorsFiles.Raw("{\"a\xff\":1}").Select(b => b == (byte)'\u00c3' ? (byte)0xff : b).ToArray(), null, "not well-formed JSON"),
            new("header not an object", SafeTensorsFiles.Raw("[1, 2]"), null, "must start with '{'"),
            new("offsets out of range", SafeTensorsFiles.Raw("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", new byte[4]), "a", "offset out of range"),
            new("offsets far out of range", SafeTensorsFiles.Raw("{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[9223372036854775806,9223372036854775807]}}", Eight), "a", "outside the data section"),
            new("overlapping tensors", SafeTensorsFiles.Raw(
                "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", new byte[12]), "b", "overlap tensor \"a\""),
            new("gap between tensors", SafeTensorsFiles.Raw(
                "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]}}", new byte[12]), "b", "gap"),
            new("trailing bytes", SafeTensorsFiles.Raw("{\"a\":" + Entry + "}", new byte[12]), null, "trailing"),
            new("wrong byte length", SafeTensorsFiles.Raw("{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", Eight), "a", "wrong byte length"),
            new("huge shape overflows the element count", SafeTensorsFiles.Raw(
                "{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,4],\"data_offsets\":[0,8]}}", Eight), "a", "overflow"),
            new("huge shape overflows the byte count", SafeTensorsFiles.Raw(
                "{\"a\":{\"dtype\":\"F32\",\"shape\":[4611686018427387904],\"data_offsets\":[0,8]}}", Eight), "a", "overflow"),
            new("dimension past 2^63", SafeTensorsFiles.Raw(
                "{\"a\":{\"dtype\":\"F32\",\"shape\":[18446744073709551615],\"data_offsets\":[0,8]}}", Eight), "a", "not an integer in [0, 2^63)"),
            new("duplicate names", SafeTensorsFiles.Raw("{\"a\":" + Entry + ",\"a\":" + Entry + "}", Eight), "a", "more than once"),
            new("unknown dtype", SafeTensorsFiles.Raw("{\"a\":{\"dtype\":\"F128\",\"shape\":[2],\"data_offsets\":[0,8]}}", Eight), "a", "unknown dtype \"F128\""),
            new("negative dimension", SafeTensorsFiles.Raw("{\"a\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", Eight), "a", "\"shape\"[0] = -2"),
            new("fractional dimension", SafeTensorsFiles.Raw("{\"a\":{\"dtype\":\"F32\",\"shape\":[2.0],\"data_offsets\":[0,8]}}", Eight), "a", "not an integer"),
            new("offsets end before they begin", SafeTensorsFiles.Raw("{\"a\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[8,4]}}", Eight), "a", "end before they begin"),
            new("one offset", SafeTensorsFiles.Raw("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0]}}", Eight), "a", "must have 2 entries"),
            new("missing dtype", SafeTensorsFiles.Raw("{\"a\":{\"shape\":[2],\"data_offsets\":[0,8]}}", Eight), "a", "no \"dtype\""),
            new("entry not an object", SafeTensorsFiles.Raw("{\"a\":[0,8]}", Eight), "a", "must be an object"),
            new("sub-byte total", SafeTensorsFiles.Raw("{\"a\":{\"dtype\":\"F4\",\"shape\":[3],\"data_offsets\":[0,1]}}", new byte[1]), "a", "not a whole number of bytes"),
            new("metadata not strings", SafeTensorsFiles.Raw("{\"__metadata__\":{\"format\":1}}"), "__metadata__", "must be a string"),
            new("metadata not an object", SafeTensorsFiles.Raw("{\"__metadata__\":\"pt\"}"), "__metadata__", "must be an object"),
            new("too deeply nested", SafeTensorsFiles.Raw("{\"a\":" + new string('[', 40) + new string(']', 40) + "}"), null, "not well-formed JSON"),
        ];
        return cases.Select(c => new TestCaseData(c).SetName($"Malformed_{c.Name.Replace(' ', '_')}"));
    }

    [TestCaseSource(nameof(Corpus))]
    public void IsRejectedWithAClearError(Case malformed)
    {
        using var folder = SafeTensorsFiles.NewFolder("malformed");
        string path = folder.File($"{malformed.Name.Replace(' ', '-')}.safetensors");
        File.WriteAllBytes(path, malformed.Bytes);
        var error = Assert.Throws<SafeTensorsFormatException>(() => SafeTensorsFile.Open(path).Dispose());
        Assert.That(error!.Message, Does.Contain(Path.GetFileName(path)), "names the file");
        Assert.That(error.Message, Does.Contain(malformed.Phrase), "says what is wrong");
        Assert.That(error.Key, Is.EqualTo(malformed.Key), "names the tensor at fault");
        if (malformed.Key is not null) Assert.That(error.Message, Does.Contain($"\"{malformed.Key}\""));
        Assert.That(error, Is.InstanceOf<LoraKernelsException>());
    }

    [Test]
    public void TheCorpusIsNotVacuous()
    {
        // Each corpus entry differs from a valid file in one respect: the valid twin opens.
        using var folder = SafeTensorsFiles.NewFolder("valid");
        string path = folder.File("valid.safetensors");
        File.WriteAllBytes(path, SafeTensorsFiles.Raw("{\"a\":" + Entry + "}", Eight));
        using var file = SafeTensorsFile.Open(path);
        Assert.That(file.ReadSingles("a"), Is.EqualTo(new[] { 1f, 2f }));
        Assert.That(Encoding.UTF8.GetString(SafeTensorsFiles.Raw("{}"), 8, 8), Is.EqualTo("{}      "));
    }
}
