using System.Buffers.Binary;
using System.Text;

namespace LoraKernels.Tests.IO;

/// <summary>Temporary folders and hand-built safetensors files: the header bytes are written here, not by the library.</summary>
internal static class SafeTensorsFiles
{
    /// <summary>A fresh folder under the system temp folder, deleted by the returned handle.</summary>
    public static TempFolder NewFolder(string name) => new(name);

    /// <summary>
    /// The bytes of a file whose header is <paramref name="headerJson"/> (as given, padded with spaces to
    /// <paramref name="padTo"/>), with <paramref name="data"/> after it and <paramref name="declaredLength"/>
    /// in the first 8 bytes (default: the header's real length).
    /// </summary>
    public static byte[] Raw(string headerJson, byte[]? data = null, ulong? declaredLength = null, int padTo = 8)
    {
        byte[] json = Encoding.UTF8.GetBytes(headerJson);
        int padded = (json.Length + padTo - 1) / padTo * padTo;
        var bytes = new byte[8 + padded + (data?.Length ?? 0)];
        BinaryPrimitives.WriteUInt64LittleEndian(bytes, declaredLength ?? (ulong)padded);
        json.CopyTo(bytes, 8);
        bytes.AsSpan(8 + json.Length, padded - json.Length).Fill((byte)' ');
        data?.CopyTo(bytes, 8 + padded);
        return bytes;
    }

    /// <summary>Little-endian float32 bytes.</summary>
    public static byte[] F32(params float[] values)
    {
        var bytes = new byte[values.Length * 4];
        for (int i = 0; i < values.Length; i++) BinaryPrimitives.WriteSingleLittleEndian(bytes.AsSpan(4 * i), values[i]);
        return bytes;
    }

    /// <summary>The header JSON and its declared length, read back by hand.</summary>
    public static (ulong Length, string Json) ReadHeader(string path)
    {
        byte[] bytes = File.ReadAllBytes(path);
        ulong length = BinaryPrimitives.ReadUInt64LittleEndian(bytes);
        return (length, Encoding.UTF8.GetString(bytes, 8, (int)length));
    }

    /// <summary>This process's resident set (VmRSS of /proc/self/status) in bytes.</summary>
    public static long ResidentBytes()
    {
        foreach (string line in File.ReadLines("/proc/self/status"))
        {
            if (!line.StartsWith("VmRSS:", StringComparison.Ordinal)) continue;
            string[] parts = line.Split(' ', StringSplitOptions.RemoveEmptyEntries);
            return long.Parse(parts[1], System.Globalization.CultureInfo.InvariantCulture) * 1024;
        }
        throw new InvalidOperationException("/proc/self/status has no VmRSS line");
    }
}

internal sealed class TempFolder : IDisposable
{
    public TempFolder(string name)
    {
        Path = System.IO.Path.Combine(System.IO.Path.GetTempPath(), $"lorakernels-{name}-{Environment.ProcessId}-{Guid.NewGuid():N}");
        Directory.CreateDirectory(Path);
    }

    public string Path { get; }

    public string File(string name) => System.IO.Path.Combine(Path, name);

    public void Dispose()
    {
        try
        {
            Directory.Delete(Path, recursive: true);
        }
        catch (IOException)
        {
        }
    }
}
