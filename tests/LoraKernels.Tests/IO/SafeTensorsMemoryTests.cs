using LoraKernels.IO;

namespace LoraKernels.Tests.IO;

/// <summary>
/// The bar: reading a 1 GiB safetensors file takes memory proportional to the header, not
/// the file. The file is sparse (1024 F32 tensors of 1 MiB each, a real header, the data a hole),
/// so making it costs no disk; opening it, validating every entry, listing it and taking a view of
/// every tensor must leave the resident set (VmRSS) within a small multiple of the header.
/// </summary>
[NonParallelizable]
public sealed class SafeTensorsMemoryTests
{
    private const int TensorCount = 1024;
    private const int Rows = 512, Columns = 512;   // 1 MiB of F32 each: 1 GiB in all

    [Test]
    public void ReadingA1GiBFileTakesMemoryProportionalToTheHeader()
    {
        if (!File.Exists("/proc/self/status")) Assert.Ignore("VmRSS needs /proc (Linux)");
        using var folder = SafeTensorsFiles.NewFolder("rss");
        string path = folder.File("big.safetensors");
        long headerBytes = WriteSparseFile(path, TensorCount);
        Assert.That(new FileInfo(path).Length, Is.GreaterThanOrEqualTo(1L << 30), "the file is 1 GiB");

        // Warm up the code paths (JIT, pools) on a small file, so the measurement sees only the big one.
        string small = folder.File("small.safetensors");
        WriteSparseFile(small, 4);
        OpenAndView(small);

        GC.Collect();
        GC.WaitForPendingFinalizers();
        long before = SafeTensorsFiles.ResidentBytes();
        long touched = OpenAndView(path);
        long after = SafeTensorsFiles.ResidentBytes();
        long delta = after - before;
        TestContext.Progress.WriteLine(
            $"safetensors RSS: reading a {new FileInfo(path).Length / (1 << 20)} MiB file with a {headerBytes / 1024} KiB header " +
            $"(+ one page read from each of {TensorCount} tensor views) grew VmRSS by {delta / 1024.0 / 1024.0:F1} MiB");
        Assert.That(touched, Is.EqualTo(TensorCount), "every tensor was viewed");
        // Bound: 64 × the header plus 16 MiB of slack for the runtime; reading the data would take 1024 MiB.
        long bound = 64 * headerBytes + (16L << 20);
        Assert.That(delta, Is.LessThan(bound), $"VmRSS grew by {delta} bytes (bound {bound})");
    }

    /// <summary>Opens the file, validates it, and maps a view of every tensor, reading one value of each.</summary>
    private static long OpenAndView(string path)
    {
        long viewed = 0;
        using var file = SafeTensorsFile.Open(path);
        foreach (SafeTensorInfo info in file.Tensors)
        {
            using Tensor view = file.ToTensor(info.Name, Device.Cpu);
            if (view.Buffer is not MappedFileBuffer) throw new AssertionException($"{info.Name} was copied, not mapped");
            if (file.GetSpan(info.Name)[0] != 0) throw new AssertionException("a hole reads as zero");
            viewed++;
        }
        return viewed;
    }

    /// <summary>A real header for <paramref name="count"/> [512, 512] F32 tensors, and the data left as a hole; returns the header's bytes.</summary>
    private static long WriteSparseFile(string path, int count)
    {
        var writer = new SafeTensorsWriter(new Dictionary<string, string> { ["format"] = "pt" });
        for (int i = 0; i < count; i++)
            writer.Add($"model.layers.{i}.mlp.weight", SafeTensorDType.F32, [Rows, Columns], _ => throw new InvalidOperationException("not written"));
        byte[] header = writer.Header();
        using var stream = new FileStream(path, FileMode.CreateNew, FileAccess.Write);
        stream.Write(BitConverter.GetBytes((ulong)header.Length));
        stream.Write(header);
        stream.SetLength(8 + header.Length + (long)count * Rows * Columns * 4);
        return header.Length;
    }
}
