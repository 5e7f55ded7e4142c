namespace LoraKernels.Tests.Nf4;

/// <summary>
/// bitsandbytes' 4-bit format written independently of the library, from REFERENCE.md §8 (tables as
/// float32 hex copied from there): blockwise absmax, scaling by the fp32 reciprocal, NF4's strict
/// `&gt;` thresholds (a value on a midpoint takes the lower code), FP4's decision tree, high-nibble-first
/// packing with an odd tail padded by the code of 0.0, the all-zero block as 0.0 (§11), and the
/// signed dynamic 8-bit map for double quantization. Products are formed in double.
/// </summary>
internal static class Nf4Reference
{
    public static readonly uint[] Nf4Bits =
    [
        0xbf800000, 0xbf3239b1, 0xbf066b30, 0xbeca32a0, 0xbe91a24d, 0xbe3d353f, 0xbdba7871, 0x00000000,
        0x3da2faff, 0x3e24cae3, 0x3e7c04dd, 0x3ead033a, 0x3ee1a4b8, 0x3f1007ab, 0x3f3913b3, 0x3f800000,
    ];

    public static readonly uint[] Nf4ThresholdBits =
    [
        0xbf591cd8, 0xbf1c5270, 0xbeeb8480, 0xbeadea76, 0xbe703cec, 0xbe0d38bc, 0xbd3a7871, 0x3d22faff,
        0x3df64862, 0x3e5067e0, 0x3e9582d4, 0x3ec753f9, 0x3f006d04, 0x3f248daf, 0x3f5c89da,
    ];

    /// <summary>FP4 values by code: bit 3 the sign, bits 0-2 index [0, 0.0625, 8, 12, 4, 6, 2, 3] / 12.</summary>
    public static readonly float[] Fp4Magnitudes = [0f, 0.0625f / 12f, 8f / 12f, 1f, 4f / 12f, 6f / 12f, 2f / 12f, 3f / 12f];

    public static float Bits(uint bits) => BitConverter.UInt32BitsToSingle(bits);

    public static float[] Table(QuantType type) => type == QuantType.Nf4
        ? Array.ConvertAll(Nf4Bits, Bits)
        : Enumerable.Range(0, 16).Select(c => (c & 8) != 0 ? -Fp4Magnitudes[c & 7] : Fp4Magnitudes[c & 7]).ToArray();

    public static int ZeroCode(QuantType type) => type == QuantType.Nf4 ? 7 : 0;

    public static int Code(QuantType type, float x)
    {
        if (type == QuantType.Nf4)
        {
            int code = 0;
            foreach (uint t in Nf4ThresholdBits) if (x > Bits(t)) code++;
            return code;
        }
        float a = Math.Abs(x);
        int magnitude = a > Bits(0x3e955555)
            ? (a > Bits(0x3f155550) ? (a > Bits(0x3f555555) ? 0b011 : 0b010) : (a > Bits(0x3ed55556) ? 0b101 : 0b100))
            : (a > Bits(0x3db00000) ? (a > Bits(0x3e555555) ? 0b111 : 0b110) : (a > Bits(0x3b2aaab9) ? 0b001 : 0b000));
        return x < 0 ? magnitude | 0b1000 : magnitude;
    }

    /// <summary>(codes, absmax) of w as bitsandbytes' quantize_4bit.</summary>
    public static (byte[] Codes, float[] Absmax) Quantize(QuantType type, float[] w, int blockSize)
    {
        int n = w.Length, blocks = (n + blockSize - 1) / blockSize;
        var absmax = new float[blocks];
        var codes = new byte[(n + 1) / 2];
        var q = new int[n + 1];
        for (int b = 0; b < blocks; b++)
        {
            int start = b * blockSize, end = Math.Min(n, start + blockSize);
            float max = 0f;
            for (int i = start; i < end; i++) max = Math.Max(max, Math.Abs(w[i]));
            absmax[b] = max;
            float reciprocal = 1f / max;
            for (int i = start; i < end; i++) q[i] = max == 0f ? ZeroCode(type) : Code(type, w[i] * reciprocal);
        }
        q[n] = ZeroCode(type);
        for (int k = 0; k < codes.Length; k++) codes[k] = (byte)((q[2 * k] << 4) | q[2 * k + 1]);
        return (codes, absmax);
    }

    /// <summary>table[nibble]·absmax[block] in fp32, as bnb's kDequantizeBlockwise.</summary>
    public static float[] Dequantize(QuantType type, byte[] codes, float[] absmax, int n, int blockSize)
    {
        float[] table = Table(type);
        var w = new float[n];
        for (int i = 0; i < n; i++)
        {
            int code = (i & 1) == 0 ? codes[i / 2] >> 4 : codes[i / 2] & 15;
            w[i] = table[code] * absmax[i / blockSize];
        }
        return w;
    }

    /// <summary>REFERENCE.md Appendix B: create_dynamic_map(signed=True), the nested-absmax code (float32 hex).</summary>
    public static readonly uint[] DynamicSignedBits =
    [
        0xbf7e3333, 0xbf7a9999, 0xbf770000, 0xbf736666, 0xbf6fcccc, 0xbf6c3333, 0xbf68999a, 0xbf650000,
        0xbf616666, 0xbf5dcccc, 0xbf5a3333, 0xbf569999, 0xbf530000, 0xbf4f6666, 0xbf4bcccc, 0xbf483333,
        0xbf44999a, 0xbf410000, 0xbf3d6667, 0xbf39cccd, 0xbf363334, 0xbf32999a, 0xbf2f0000, 0xbf2b6667,
        0xbf27cccd, 0xbf243333, 0xbf20999a, 0xbf1d0000, 0xbf196666, 0xbf15cccd, 0xbf123334, 0xbf0e999a,
        0xbf0b0000, 0xbf076666, 0xbf03cccd, 0xbf003333, 0xbef93334, 0xbef20000, 0xbeeacccc, 0xbee3999a,
        0xbedc6666, 0xbed53332, 0xbece0000, 0xbec6cccc, 0xbebf999a, 0xbeb86666, 0xbeb13332, 0xbeaa0000,
        0xbea2cccc, 0xbe9b999a, 0xbe946666, 0xbe8d3334, 0xbe860000, 0xbe7d999a, 0xbe6f3334, 0xbe60cccd,
        0xbe526666, 0xbe440000, 0xbe359999, 0xbe273333, 0xbe18cccd, 0xbe0a6666, 0xbdf80000, 0xbddb3334,
        0xbdc9eb85, 0xbdc428f5, 0xbdbe6667, 0xbdb8a3d7, 0xbdb2e148, 0xbdad1eb8, 0xbda75c28, 0xbda1999a,
        0xbd9bd70a, 0xbd96147b, 0xbd9051eb, 0xbd8a8f5d, 0xbd84cccd, 0xbd7e147a, 0xbd728f5d, 0xbd670a3d,
        0xbd5b851f, 0xbd500000, 0xbd447ae1, 0xbd38f5c3, 0xbd2d70a3, 0xbd21eb85, 0xbd166667, 0xbd0ae147,
        0xbcfeb852, 0xbce7ae13, 0xbcd0a3d7, 0xbcb9999a, 0xbca28f5c, 0xbc8b851f, 0xbc68f5c3, 0xbc3ae148,
        0xbc1f3b64, 0xbc160418, 0xbc0ccccd, 0xbc039581, 0xbbf4bc6a, 0xbbe24dd3, 0xbbcfdf3b, 0xbbbd70a4,
        0xbbab020d, 0xbb989374, 0xbb8624dd, 0xbb676c8a, 0xbb428f5c, 0xbb1db22d, 0xbaf1a9fc, 0xbaa7ef9d,
        0xba7765ff, 0xba59e83e, 0xba3c6a80, 0xba1eecc1, 0xba016f01, 0xb9c7e283, 0xb98ce705, 0xb923d70b,
        0xb8ba1f4b, 0xb88aefb3, 0xb8378034, 0xb7b24206, 0xb70205ff, 0xb65a1a94, 0xb513a3b7, 0x00000000,
        0x3513a3b7, 0x365a1a94, 0x370205ff, 0x37b24206, 0x38378034, 0x388aefb3, 0x38ba1f4b, 0x3923d70b,
        0x398ce705, 0x39c7e283, 0x3a016f01, 0x3a1eecc1, 0x3a3c6a80, 0x3a59e83e, 0x3a7765ff, 0x3aa7ef9d,
        0x3af1a9fc, 0x3b1db22d, 0x3b428f5c, 0x3b676c8a, 0x3b8624dd, 0x3b989374, 0x3bab020d, 0x3bbd70a4,
        0x3bcfdf3b, 0x3be24dd3, 0x3bf4bc6a, 0x3c039581, 0x3c0ccccd, 0x3c160418, 0x3c1f3b64, 0x3c3ae148,
        0x3c68f5c3, 0x3c8b851f, 0x3ca28f5c, 0x3cb9999a, 0x3cd0a3d7, 0x3ce7ae13, 0x3cfeb852, 0x3d0ae147,
        0x3d166667, 0x3d21eb85, 0x3d2d70a3, 0x3d38f5c3, 0x3d447ae1, 0x3d500000, 0x3d5b851f, 0x3d670a3d,
        0x3d728f5d, 0x3d7e147a, 0x3d84cccd, 0x3d8a8f5d, 0x3d9051eb, 0x3d96147b, 0x3d9bd70a, 0x3da1999a,
        0x3da75c28, 0x3dad1eb8, 0x3db2e148, 0x3db8a3d7, 0x3dbe6667, 0x3dc428f5, 0x3dc9eb85, 0x3ddb3334,
        0x3df80000, 0x3e0a6666, 0x3e18cccd, 0x3e273333, 0x3e359999, 0x3e440000, 0x3e526666, 0x3e60cccd,
        0x3e6f3334, 0x3e7d999a, 0x3e860000, 0x3e8d3334, 0x3e946666, 0x3e9b999a, 0x3ea2cccc, 0x3eaa0000,
        0x3eb13332, 0x3eb86666, 0x3ebf999a, 0x3ec6cccc, 0x3ece0000, 0x3ed53332, 0x3edc6666, 0x3ee3999a,
        0x3eeacccc, 0x3ef20000, 0x3ef93334, 0x3f003333, 0x3f03cccd, 0x3f076666, 0x3f0b0000, 0x3f0e999a,
        0x3f123334, 0x3f15cccd, 0x3f196666, 0x3f1d0000, 0x3f20999a, 0x3f243333, 0x3f27cccd, 0x3f2b6667,
        0x3f2f0000, 0x3f32999a, 0x3f363334, 0x3f39cccd, 0x3f3d6667, 0x3f410000, 0x3f44999a, 0x3f483333,
        0x3f4bcccc, 0x3f4f6666, 0x3f530000, 0x3f569999, 0x3f5a3333, 0x3f5dcccc, 0x3f616666, 0x3f650000,
        0x3f68999a, 0x3f6c3333, 0x3f6fcccc, 0x3f736666, 0x3f770000, 0x3f7a9999, 0x3f7e3333, 0x3f800000,
    ];

    public static float[] DynamicSigned() => Array.ConvertAll(DynamicSignedBits, Bits);

    /// <summary>Index of the code nearest <paramref name="x"/> in the sorted <paramref name="code"/> (ties: the lower one).</summary>
    public static int Nearest(float[] code, float x)
    {
        int best = 0;
        for (int i = 1; i < code.Length; i++)
            if (Math.Abs(x - code[i]) < Math.Abs(x - code[best])) best = i;
        return best;
    }
}
