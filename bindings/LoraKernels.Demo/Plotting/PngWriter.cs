using System.Buffers.Binary;
using System.IO.Compression;
using System.Text;

namespace LoraKernels.Demo.Plotting;

/// <summary>
/// Writes an 8-bit RGB image as a PNG (RFC 2083 / ISO 15948): the signature, an IHDR chunk, one
/// IDAT chunk holding the zlib-compressed scanlines (filter type 0 on every row), and IEND; each
/// chunk ends with the CRC-32 of its type and data.
/// </summary>
public static class PngWriter
{
    private static ReadOnlySpan<byte> Signature => [0x89, (byte)'P', (byte)'N', (byte)'G', 0x0D, 0x0A, 0x1A, 0x0A];
    private static readonly uint[] CrcTable = BuildCrcTable();

    /// <summary>Writes <paramref name="image"/> to <paramref name="path"/> atomically (temporary file, then rename).</summary>
    public static void Write(string path, RgbImage image)
    {
        string temporary = path + ".tmp";
        using (var file = File.Create(temporary))
        {
            Write(file, image);
        }
        File.Move(temporary, path, overwrite: true);
    }

    public static void Write(Stream output, RgbImage image)
    {
        output.Write(Signature);

        Span<byte> header = stackalloc byte[13];
        BinaryPrimitives.WriteUInt32BigEndian(header[0..], (uint)image.Width);
        BinaryPrimitives.WriteUInt32BigEndian(header[4..], (uint)image.Height);
        header[8] = 8;   // bit depth
        header[9] = 2;   // colour type: truecolour (RGB)
        header[10] = 0;  // compression: deflate
        header[11] = 0;  // filter method 0
        header[12] = 0;  // no interlace
        WriteChunk(output, "IHDR", header);

        using var compressed = new MemoryStream();
        using (var zlib = new ZLibStream(compressed, CompressionLevel.SmallestSize, leaveOpen: true))
        {
            int rowBytes = image.Width * 3;
            for (int y = 0; y < image.Height; y++)
            {
                zlib.WriteByte(0);  // filter type None
                zlib.Write(image.Pixels, y * rowBytes, rowBytes);
            }
        }
        WriteChunk(output, "IDAT", compressed.GetBuffer().AsSpan(0, (int)compressed.Length));
        WriteChunk(output, "IEND", []);
    }

    private static void WriteChunk(Stream output, string type, ReadOnlySpan<byte> data)
    {
        Span<byte> word = stackalloc byte[4];
        BinaryPrimitives.WriteUInt32BigEndian(word, (uint)data.Length);
        output.Write(word);

        Span<byte> typeBytes = stackalloc byte[4];
        Encoding.ASCII.GetBytes(type, typeBytes);
        output.Write(typeBytes);
        output.Write(data);

        uint crc = UpdateCrc(0xFFFFFFFFu, typeBytes);
        crc = UpdateCrc(crc, data) ^ 0xFFFFFFFFu;
        BinaryPrimitives.WriteUInt32BigEndian(word, crc);
        output.Write(word);
    }

    /// <summary>CRC-32 (polynomial 0xEDB88320, reflected), as PNG specifies; the caller pre- and post-inverts.</summary>
    internal static uint UpdateCrc(uint crc, ReadOnlySpan<byte> data)
    {
        foreach (byte b in data) crc = CrcTable[(crc ^ b) & 0xFF] ^ (crc >> 8);
        return crc;
    }

    private static uint[] BuildCrcTable()
    {
        var table = new uint[256];
        for (uint n = 0; n < 256; n++)
        {
            uint c = n;
            for (int k = 0; k < 8; k++) c = (c & 1) != 0 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
            table[n] = c;
        }
        return table;
    }
}

/// <summary>An 8-bit RGB raster, row-major, 3 bytes per pixel, with the few drawing operations the plot needs.</summary>
public sealed class RgbImage
{
    public RgbImage(int width, int height, (byte R, byte G, byte B) background)
    {
        Width = width;
        Height = height;
        Pixels = new byte[width * height * 3];
        FillRectangle(0, 0, width, height, background);
    }

    public int Width { get; }
    public int Height { get; }
    public byte[] Pixels { get; }

    public void SetPixel(int x, int y, (byte R, byte G, byte B) color)
    {
        if ((uint)x >= (uint)Width || (uint)y >= (uint)Height) return;
        int offset = (y * Width + x) * 3;
        Pixels[offset] = color.R;
        Pixels[offset + 1] = color.G;
        Pixels[offset + 2] = color.B;
    }

    public void FillRectangle(int x, int y, int width, int height, (byte R, byte G, byte B) color)
    {
        for (int j = y; j < y + height; j++)
            for (int i = x; i < x + width; i++)
                SetPixel(i, j, color);
    }

    /// <summary>A line of the given thickness (Bresenham, with a square pen).</summary>
    public void DrawLine(int x0, int y0, int x1, int y1, (byte R, byte G, byte B) color, int thickness = 1)
    {
        int dx = Math.Abs(x1 - x0), sx = x0 < x1 ? 1 : -1;
        int dy = -Math.Abs(y1 - y0), sy = y0 < y1 ? 1 : -1;
        int error = dx + dy;
        int half = thickness / 2;
        while (true)
        {
            FillRectangle(x0 - half, y0 - half, thickness, thickness, color);
            if (x0 == x1 && y0 == y1) break;
            int twice = 2 * error;
            if (twice >= dy) { error += dy; x0 += sx; }
            if (twice <= dx) { error += dx; y0 += sy; }
        }
    }
}
