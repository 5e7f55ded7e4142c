using System.Text.Json;
using LoraKernels.IO;

namespace LoraKernels.Tests.IO;

/// <summary>
/// safetensors reading and writing: round trips of every dtype, the layout safetensors' own writer
/// produces (checked on the raw bytes), a hand-written file read back, tensor views into the
/// mapping, and atomic writes.
/// </summary>
public sealed class SafeTensorsTests
{
    private static readonly SafeTensorDType[] AllDTypes = Enum.GetValues<SafeTensorDType>();

    /// <summary>A shape whose bit count is a whole number of bytes for every dtype (F4 and F6 need multiples of 4 elements).</summary>
    private static readonly long[] Shape = [3, 4];

    [TestCaseSource(nameof(AllDTypes))]
    public void EveryDTypeRoundTripsByteForByte(SafeTensorDType dtype)
    {
        using var folder = SafeTensorsFiles.NewFolder("dtype");
        var data = new TestData(TestData.SeedFor(dtype.ToString()));
        int bytes = (int)dtype.ByteLength(12)!.Value;
        byte[] payload = Enumerable.Range(0, bytes).Select(_ => (byte)(data.NextDouble() * 256)).ToArray();
        if (dtype == SafeTensorDType.BOOL) payload = payload.Select(b => (byte)(b & 1)).ToArray();
        Assert.That(payload.Count(b => b != 0), Is.GreaterThan(0), "payload not all zero");

        var writer = new SafeTensorsWriter(new Dictionary<string, string> { ["format"] = "pt" });
        writer.Add("t", dtype, Shape, payload);
        writer.Add("scalar", dtype.BitSize() < 8 ? SafeTensorDType.U8 : dtype, [],
                   payload.AsMemory(0, Math.Max(1, dtype.BitSize() / 8)));
        writer.Add("empty", dtype, [0, 5], ReadOnlyMemory<byte>.Empty);
        string path = folder.File("t.safetensors");
        writer.Save(path);

        using var file = SafeTensorsFile.Open(path);
        SafeTensorInfo info = file["t"];
        Assert.That(info.DType, Is.EqualTo(dtype));
        Assert.That(info.Shape, Is.EqualTo(Shape));
        Assert.That(file.ReadBytes("t"), Is.EqualTo(payload));
        Assert.That(file.GetSpan("t").ToArray(), Is.EqualTo(payload), "the mapped span");
        Assert.That(file["scalar"].Shape, Is.Empty);
        Assert.That(file["scalar"].ElementCount, Is.EqualTo(1));
        Assert.That(file["empty"].ByteLength, Is.Zero);
        Assert.That(file.Metadata, Is.EqualTo(new Dictionary<string, string> { ["format"] = "pt" }));
    }

    [Test]
    public void TypedReadsMatchTheValuesWritten()
    {
        using var folder = SafeTensorsFiles.NewFolder("typed");
        float[] values = [1.5f, -2.25f, 3e-3f, 65504f, -0.0f, 7.125f];
        long[] longs = [long.MinValue, -1, 0, 1, long.MaxValue, 1L << 40];
        var writer = new SafeTensorsWriter();
        writer.AddSingles("f32", values, [2, 3]);
        writer.AddSingles("f16", values, [2, 3], SafeTensorDType.F16);
        writer.AddSingles("bf16", values, [2, 3], SafeTensorDType.BF16);
        writer.Add("i64", SafeTensorDType.I64, [6], System.Runtime.InteropServices.MemoryMarshal.AsBytes(longs.AsSpan()).ToArray());
        writer.Add("bool", SafeTensorDType.BOOL, [3], new byte[] { 1, 0, 1 });
        writer.Add("i8", SafeTensorDType.I8, [2], new byte[] { 0x80, 0x7f });
        writer.Add("i32", SafeTensorDType.I32, [1], BitConverter.GetBytes(-123456));
        string path = folder.File("typed.safetensors");
        writer.Save(path);

        using var file = SafeTensorsFile.Open(path);
        Assert.That(file.ReadSingles("f32"), Is.EqualTo(values));
        Assert.That(file.Read<float>("f32"), Is.EqualTo(values));
        // F16 and BF16 are rounded to nearest even from the float, as torch's .to() does (System.Half and the kernels' bf16 rule).
        Assert.That(file.Read<Half>("f16"), Is.EqualTo(values.Select(v => (Half)v).ToArray()));
        Assert.That(file.ReadSingles("f16"), Is.EqualTo(values.Select(v => (float)(Half)v).ToArray()));
        Assert.That(file.ReadSingles("bf16"), Is.EqualTo(Reference.RoundToBf16(values)));
        Assert.That(file.Read<long>("i64"), Is.EqualTo(longs));
        Assert.That(file.ReadSingles("bool"), Is.EqualTo(new[] { 1f, 0f, 1f }));
        Assert.That(file.ReadSingles("i8"), Is.EqualTo(new[] { -128f, 127f }));
        Assert.That(file.Read<int>("i32"), Is.EqualTo(new[] { -123456 }));
        Assert.Throws<ArgumentException>(() => file.Read<int>("i64"), "I64 is not stored as int");
    }

    [Test]
    public void TheLayoutIsSafetensorsOwn()
    {
        using var folder = SafeTensorsFiles.NewFolder("layout");
        var writer = new SafeTensorsWriter(new Dictionary<string, string> { ["format"] = "pt", ["a"] = "b" });
        writer.Add("z.u8", SafeTensorDType.U8, [3], new byte[] { 1, 2, 3 });
        writer.AddSingles("b.f32", [1f, 2f], [2]);
        writer.AddSingles("a.f32", [3f], [1]);
        writer.AddSingles("m.bf16", [1f, 2f, 3f], [3], SafeTensorDType.BF16);
        writer.Add("c.i64", SafeTensorDType.I64, [1], new byte[8]);
        string path = folder.File("layout.safetensors");
        writer.Save(path);

        var (length, json) = SafeTensorsFiles.ReadHeader(path);
        Assert.That(length % 8, Is.Zero, "header length is a multiple of 8 (data 8-byte aligned)");
        Assert.That(json, Does.StartWith("{\"__metadata__\":{\"a\":\"b\",\"format\":\"pt\"}"));
        Assert.That(json.TrimEnd(' '), Does.EndWith("}"), "padding is spaces");
        using JsonDocument document = JsonDocument.Parse(json);
        string[] order = document.RootElement.EnumerateObject().Select(p => p.Name).Where(n => n != "__metadata__").ToArray();
        // dtype descending (I64 > F32 > BF16 > U8), then name.
        Assert.That(order, Is.EqualTo(new[] { "c.i64", "a.f32", "b.f32", "m.bf16", "z.u8" }));
        long expectedBegin = 0;
        foreach (string name in order)
        {
            JsonElement offsets = document.RootElement.GetProperty(name).GetProperty("data_offsets");
            Assert.That(offsets[0].GetInt64(), Is.EqualTo(expectedBegin), $"{name} starts where the previous ended");
            expectedBegin = offsets[1].GetInt64();
        }
        Assert.That(new FileInfo(path).Length, Is.EqualTo(8 + (long)length + expectedBegin));
    }

    [Test]
    public void AHandWrittenFileReadsBack()
    {
        // The example of safetensors' README, bytes laid out by hand: two F32 tensors and metadata.
        using var folder = SafeTensorsFiles.NewFolder("hand");
        string path = folder.File("hand.safetensors");
        byte[] data = SafeTensorsFiles.F32(1f, 2f, 3f, 4f, 5f, 6f);
        File.WriteAllBytes(path, SafeTensorsFiles.Raw(
            "{\"__metadata__\":{\"format\":\"pt\"},\"weight\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[8,24]}," +
            "\"bias\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", data));
        using var file = SafeTensorsFile.Open(path);
        Assert.That(file.Tensors.Select(t => t.Name), Is.EqualTo(new[] { "bias", "weight" }), "in data order");
        Assert.That(file.ReadSingles("bias"), Is.EqualTo(new[] { 1f, 2f }));
        Assert.That(file.ReadSingles("weight"), Is.EqualTo(new[] { 3f, 4f, 5f, 6f }));
        Assert.That(file.Metadata["format"], Is.EqualTo("pt"));
        var missing = Assert.Throws<ArgumentException>(() => _ = file["nope"]);
        Assert.That(missing!.Message, Does.Contain("nope").And.Contain("hand.safetensors"));
    }

    [TestCase(DeviceKind.Cpu)]
    [TestCase(DeviceKind.Simt)]
    public void ToTensorMapsAlignedF32AndBf16OnTheCpuAndCopiesOtherwise(DeviceKind kind)
    {
        Device device = kind == DeviceKind.Cpu ? Device.Cpu : Device.Simt;
        using var folder = SafeTensorsFiles.NewFolder("views");
        var data = new TestData(11);
        float[] w = data.NonZero(6 * 5);
        float[] b = data.NonZero(7);
        var writer = new SafeTensorsWriter();
        writer.AddSingles("w", w, [6, 5]);
        writer.AddSingles("b", b, [7], SafeTensorDType.BF16);
        writer.AddSingles("h", w, [6, 5], SafeTensorDType.F16);
        string path = folder.File("views.safetensors");
        writer.Save(path);
        long liveBefore = device.LiveAllocations;

        Tensor tw, tb, th;
        using (var file = SafeTensorsFile.Open(path))
        {
            tw = file.ToTensor("w", device);
            tb = file.ToTensor("b", device);
            th = file.ToTensor("h", device);
            bool mapped = kind == DeviceKind.Cpu;
            Assert.That(tw.Buffer is MappedFileBuffer, Is.EqualTo(mapped), "F32 view on the CPU only");
            Assert.That(tb.Buffer is MappedFileBuffer, Is.EqualTo(mapped), "BF16 view on the CPU only");
            Assert.That(th.Buffer is MappedFileBuffer, Is.False, "F16 is converted, never viewed");
        }
        // The views outlive the file object: the mapping is reference-counted.
        using (tw)
        using (tb)
        using (th)
        {
            Assert.That(tb.DType, Is.EqualTo(DType.BF16));
            Assert.That(tw.ToArray(), Is.EqualTo(w));
            Assert.That(tb.ToArray(), Is.EqualTo(Reference.RoundToBf16(b)));
            Assert.That(th.ToArray(), Is.EqualTo(w.Select(v => (float)(Half)v).ToArray()));
            // A view feeds the kernels like any tensor, and writing to it leaves the file alone (copy-on-write).
            using var x = Tensor.FromArray(device, data.NonZero(2 * 5), 2, 5);
            using var a = Tensor.Zeros(device, DType.F32, 1, 5);
            using var bb = Tensor.Zeros(device, DType.F32, 6, 1);
            var (y, u) = Lora.Forward(x, tw, null, a, bb, 1f);
            using (y)
            using (u)
            {
                float[] expected = new float[2 * 6];
                float[] xs = x.ToArray();
                for (int m = 0; m < 2; m++)
                for (int o = 0; o < 6; o++)
                {
                    double sum = 0;
                    for (int k = 0; k < 5; k++) sum += (double)xs[m * 5 + k] * w[o * 5 + k];
                    expected[m * 6 + o] = (float)sum;
                }
                Expect.Close("x·Wᵀ over a mapped W", y.ToArray(), expected.Select(v => (double)v).ToArray(), Enumerable.Repeat(1e-5, 12).ToArray());
            }
            tw.CopyFrom(new float[30]);
            Assert.That(tw.ToArray(), Has.All.EqualTo(0f));
        }
        using (var again = SafeTensorsFile.Open(path))
            Assert.That(again.ReadSingles("w"), Is.EqualTo(w), "the file is unchanged after writing to a view");
        Assert.That(device.LiveAllocations, Is.EqualTo(liveBefore), "views and copies are released");
    }

    [Test]
    public void MisalignedF32IsCopiedNotViewed()
    {
        using var folder = SafeTensorsFiles.NewFolder("misaligned");
        string path = folder.File("m.safetensors");
        byte[] data = new byte[2].Concat(SafeTensorsFiles.F32(1.25f, -3.5f)).ToArray();
        File.WriteAllBytes(path, SafeTensorsFiles.Raw(
            "{\"pad\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2]},\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[2,10]}}", data));
        using var file = SafeTensorsFile.Open(path);
        Assert.That(file.CanMap("w", Device.Cpu, DType.F32), Is.False, "a float at byte offset 2 mod 4 is not viewable");
        using Tensor w = file.ToTensor("w", Device.Cpu);
        Assert.That(w.Buffer is MappedFileBuffer, Is.False);
        Assert.That(w.ToArray(), Is.EqualTo(new[] { 1.25f, -3.5f }));
    }

    [Test]
    public void AFailedWriteLeavesThePreviousFileAndNoTemporary()
    {
        using var folder = SafeTensorsFiles.NewFolder("atomic");
        string path = folder.File("a.safetensors");
        var good = new SafeTensorsWriter();
        good.AddSingles("x", [1f, 2f], [2]);
        good.Save(path);
        byte[] before = File.ReadAllBytes(path);

        var bad = new SafeTensorsWriter();
        bad.AddSingles("x", [9f, 9f, 9f], [3]);
        bad.Add("y", SafeTensorDType.F32, [4], stream => stream.Write(new byte[8]));  // 8 of 16 bytes
        var error = Assert.Throws<InvalidOperationException>(() => bad.Save(path));
        Assert.That(error!.Message, Does.Contain("\"y\"").And.Contain("16 bytes"));
        Assert.That(File.ReadAllBytes(path), Is.EqualTo(before), "previous file intact");
        Assert.That(Directory.GetFiles(folder.Path), Is.EqualTo(new[] { path }), "no temporary left");

        var tooMuch = new SafeTensorsWriter();
        tooMuch.Add("y", SafeTensorDType.U8, [1], stream => stream.Write(new byte[2]));
        Assert.Throws<InvalidOperationException>(() => tooMuch.Save(path));
        Assert.That(File.ReadAllBytes(path), Is.EqualTo(before));

        Assert.Throws<IOException>(() => AtomicFile.Write(path, _ => throw new IOException("disk full")));
        Assert.That(File.ReadAllBytes(path), Is.EqualTo(before));
        Assert.That(Directory.GetFiles(folder.Path), Has.Length.EqualTo(1));
    }

    [Test]
    public void WriterRejectsBadEntriesBeforeWriting()
    {
        var writer = new SafeTensorsWriter();
        writer.AddSingles("x", [1f], [1]);
        Assert.That(Assert.Throws<ArgumentException>(() => writer.AddSingles("x", [1f], [1]))!.Message, Does.Contain("already added"));
        Assert.That(Assert.Throws<ArgumentException>(() => writer.Add("y", SafeTensorDType.F32, [3], new byte[8]))!.Message, Does.Contain("12 bytes"));
        Assert.Throws<ArgumentException>(() => writer.Add("z", SafeTensorDType.F32, [-1], new byte[0]));
        Assert.Throws<ArgumentException>(() => writer.Add("__metadata__", SafeTensorDType.U8, [0], new byte[0]));
        Assert.That(Assert.Throws<ArgumentException>(() => writer.Add("f4", SafeTensorDType.F4, [3], new byte[2]))!.Message, Does.Contain("whole number of bytes"));
        Assert.Throws<ArgumentException>(() => writer.Add("big", SafeTensorDType.F32, [1L << 62], stream => { }));
    }
}
