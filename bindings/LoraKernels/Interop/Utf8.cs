// UTF-8 strings across the blittable boundary: native const char* to string, and strings to
// NUL-terminated bytes for arguments (runtime marshalling is disabled, so this is done by hand).
using System.Text;

namespace LoraKernels.Interop;

internal static unsafe class Utf8
{
    public static string? Read(byte* text) =>
        text is null ? null : Encoding.UTF8.GetString(new ReadOnlySpan<byte>(text, StrLen(text)));

    public static byte[] NullTerminated(string text)
    {
        byte[] bytes = new byte[Encoding.UTF8.GetByteCount(text) + 1];
        Encoding.UTF8.GetBytes(text, bytes);
        return bytes;
    }

    private static int StrLen(byte* text)
    {
        int length = 0;
        while (text[length] != 0) length++;
        return length;
    }
}

/// <summary>
/// Strings copied to unmanaged NUL-terminated UTF-8 with a <c>char**</c> array over them, for
/// APIs that take string arrays (NVRTC's headers and options). Freed on Dispose.
/// </summary>
internal sealed unsafe class NativeUtf8Array : IDisposable
{
    private readonly byte** _pointers;
    private readonly int _count;

    public NativeUtf8Array(IReadOnlyList<string> texts)
    {
        _count = texts.Count;
        _pointers = (byte**)System.Runtime.InteropServices.NativeMemory.AllocZeroed((nuint)Math.Max(_count, 1), (nuint)sizeof(byte*));
        for (int i = 0; i < _count; i++)
        {
            byte[] bytes = Utf8.NullTerminated(texts[i]);
            _pointers[i] = (byte*)System.Runtime.InteropServices.NativeMemory.Alloc((nuint)bytes.Length);
            bytes.CopyTo(new Span<byte>(_pointers[i], bytes.Length));
        }
    }

    public int Count => _count;

    /// <summary>The <c>char**</c>; valid until Dispose.</summary>
    public byte** Pointers => _pointers;

    public byte* this[int index] => _pointers[index];

    public void Dispose()
    {
        if (_pointers is null) return;
        for (int i = 0; i < _count; i++) System.Runtime.InteropServices.NativeMemory.Free(_pointers[i]);
        System.Runtime.InteropServices.NativeMemory.Free(_pointers);
    }
}
