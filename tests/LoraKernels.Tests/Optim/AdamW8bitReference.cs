using LoraKernels.Tests.Nf4;

namespace LoraKernels.Tests.Optim;

/// <summary>
/// bitsandbytes' blockwise 8-bit Adam (REFERENCE.md §8.7, bnb's kOptimizerStatic8bit2StateBlockwise), written
/// here from the reference independently of kernels/adamw_math.cuh: its own copies of the two dynamic maps
/// (REFERENCE.md Appendix B), its own nearest-code search (bnb's dQuantize: binary search from pivot 127, then
/// the pivot or its bracketing neighbour by the fp32 midpoint) and the step in fp32 in bnb's operation order.
/// .NET rounds every fp32 operation separately (no contraction into FMAs), so on the CPU kernels and under the
/// emulator (g++, no FMA) the library must reproduce it bit for bit.
/// </summary>
internal sealed class AdamW8bitReference
{
    public const int BlockSize = 256;

    /// <summary>REFERENCE.md Appendix B: create_dynamic_map(signed=False), the second moment's code.</summary>
    public static readonly uint[] DynamicUnsignedBits =
    [
        0x00000000, 0x34ae7baa, 0x35500998, 0x360e9b38, 0x3692ccf6, 0x36de4c51, 0x3714e5d5, 0x3783126e,
        0x37e171a0, 0x381fe868, 0x384f1800, 0x387e479a, 0x3896bb99, 0x38ae5364, 0x38c5eb31, 0x3906594b,
        0x394154ca, 0x397c5048, 0x399ba5e4, 0x39b923a2, 0x39d6a162, 0x39f41f22, 0x3a08ce71, 0x3a178d50,
        0x3a264c30, 0x3a350b10, 0x3a43c9ef, 0x3a5288d0, 0x3a6147af, 0x3a70068e, 0x3a7ec56e, 0x3a958106,
        0x3aba5e35, 0x3adf3b64, 0x3b020c49, 0x3b147ae1, 0x3b26e978, 0x3b39580f, 0x3b4bc6a7, 0x3b5e353e,
        0x3b70a3d7, 0x3b818937, 0x3b8ac082, 0x3b93f7cf, 0x3b9d2f1a, 0x3ba66666, 0x3baf9db2, 0x3bb8d4fd,
        0x3bc20c4a, 0x3bcb4394, 0x3bd47ae1, 0x3bddb22e, 0x3be6e978, 0x3bf020c5, 0x3bf9580f, 0x3c0147ae,
        0x3c05e353, 0x3c0a7ef9, 0x3c0f1aa0, 0x3c13b645, 0x3c1851eb, 0x3c1ced90, 0x3c218937, 0x3c2f5c2a,
        0x3c466667, 0x3c5d70a3, 0x3c747ae2, 0x3c85c28f, 0x3c9147ae, 0x3c9ccccd, 0x3ca851eb, 0x3cb3d70b,
        0x3cbf5c2a, 0x3ccae148, 0x3cd66667, 0x3ce1eb87, 0x3ced70a3, 0x3cf8f5c3, 0x3d023d70, 0x3d080000,
        0x3d0dc28f, 0x3d13851f, 0x3d1947af, 0x3d1f0a3d, 0x3d24cccd, 0x3d2a8f5b, 0x3d3051eb, 0x3d36147b,
        0x3d3bd70a, 0x3d41999a, 0x3d475c2a, 0x3d4d1eb8, 0x3d52e148, 0x3d58a3d7, 0x3d5e6667, 0x3d6428f7,
        0x3d69eb87, 0x3d6fae15, 0x3d7570a3, 0x3d7b3333, 0x3d807ae2, 0x3d835c29, 0x3d863d71, 0x3d891eb9,
        0x3d8c0000, 0x3d8ee148, 0x3d91c290, 0x3d94a3d7, 0x3d97851f, 0x3d9a6667, 0x3d9d47af, 0x3da028f6,
        0x3da30a3d, 0x3da5eb85, 0x3da8cccd, 0x3dabae14, 0x3dae8f5c, 0x3db170a3, 0x3db451eb, 0x3db73333,
        0x3dba147b, 0x3dbcf5c3, 0x3dbfd70a, 0x3dc2b852, 0x3dc5999a, 0x3dc87ae1, 0x3dcb5c29, 0x3dd40000,
        0x3de26666, 0x3df0cccd, 0x3dff3333, 0x3e06cccc, 0x3e0e0000, 0x3e153334, 0x3e1c6666, 0x3e23999a,
        0x3e2acccc, 0x3e320000, 0x3e393334, 0x3e406666, 0x3e47999a, 0x3e4ecccc, 0x3e560000, 0x3e5d3334,
        0x3e646666, 0x3e6b999a, 0x3e72ccce, 0x3e7a0000, 0x3e80999a, 0x3e843333, 0x3e87cccd, 0x3e8b6667,
        0x3e8f0000, 0x3e92999a, 0x3e963334, 0x3e99cccd, 0x3e9d6667, 0x3ea10000, 0x3ea4999a, 0x3ea83333,
        0x3eabcccc, 0x3eaf6666, 0x3eb30000, 0x3eb69999, 0x3eba3333, 0x3ebdcccc, 0x3ec16666, 0x3ec50000,
        0x3ec8999a, 0x3ecc3333, 0x3ecfcccc, 0x3ed36666, 0x3ed70000, 0x3eda9999, 0x3ede3333, 0x3ee1cccd,
        0x3ee56666, 0x3ee90000, 0x3eec999a, 0x3ef03333, 0x3ef3cccd, 0x3ef76666, 0x3efb0000, 0x3efe9999,
        0x3f01199a, 0x3f02e666, 0x3f04b332, 0x3f068000, 0x3f084ccc, 0x3f0a199a, 0x3f0be666, 0x3f0db334,
        0x3f0f8000, 0x3f114ccd, 0x3f13199a, 0x3f14e666, 0x3f16b334, 0x3f188000, 0x3f1a4ccd, 0x3f1c199a,
        0x3f1de666, 0x3f1fb333, 0x3f218000, 0x3f234ccc, 0x3f25199a, 0x3f26e666, 0x3f28b334, 0x3f2a8000,
        0x3f2c4cce, 0x3f2e199a, 0x3f2fe666, 0x3f31b334, 0x3f338000, 0x3f354cce, 0x3f37199a, 0x3f38e666,
        0x3f3ab334, 0x3f3c8000, 0x3f3e4ccc, 0x3f40199a, 0x3f41e666, 0x3f43b334, 0x3f458000, 0x3f474ccc,
        0x3f49199a, 0x3f4ae666, 0x3f4cb332, 0x3f4e8000, 0x3f504ccc, 0x3f52199a, 0x3f53e666, 0x3f55b334,
        0x3f578000, 0x3f594ccd, 0x3f5b199a, 0x3f5ce666, 0x3f5eb334, 0x3f608000, 0x3f624ccd, 0x3f64199a,
        0x3f65e666, 0x3f67b333, 0x3f698000, 0x3f6b4ccc, 0x3f6d199a, 0x3f6ee666, 0x3f70b334, 0x3f728000,
        0x3f744cce, 0x3f76199a, 0x3f77e666, 0x3f79b334, 0x3f7b8000, 0x3f7d4cce, 0x3f7f199a, 0x3f800000,
    ];

    private static readonly float[] Signed = Nf4Reference.DynamicSigned();
    private static readonly float[] Unsigned = Array.ConvertAll(DynamicUnsignedBits, BitConverter.UInt32BitsToSingle);

    private readonly float _beta1, _beta2, _eps;

    public AdamW8bitReference(float[] parameter, float beta1, float beta2, float eps)
    {
        Parameter = (float[])parameter.Clone();
        int blocks = (parameter.Length + BlockSize - 1) / BlockSize;
        MCodes = new byte[parameter.Length];  // zeros, as bitsandbytes creates the state
        VCodes = new byte[parameter.Length];
        MAbsmax = new float[blocks];
        VAbsmax = new float[blocks];
        (_beta1, _beta2, _eps) = (beta1, beta2, eps);
    }

    public float[] Parameter { get; }
    public byte[] MCodes { get; }
    public byte[] VCodes { get; }
    public float[] MAbsmax { get; }
    public float[] VAbsmax { get; }
    public int Steps { get; private set; }

    /// <summary>One step with <paramref name="gradient"/> (scaled by <paramref name="gradScale"/>) at learning rate lr and weight decay wd.</summary>
    public void Step(float[] gradient, float lr, float wd, float gradScale = 1f)
    {
        Steps++;
        double c1 = 1 - Math.Pow(_beta1, Steps), c2 = Math.Sqrt(1 - Math.Pow(_beta2, Steps));
        float stepSize = (float)(-lr * c2 / c1), epsC2 = (float)(_eps * c2), decay = (float)(1 - (double)lr * wd);
        float oneMinusBeta1 = (float)(1 - (double)_beta1), oneMinusBeta2 = (float)(1 - (double)_beta2);
        var m = new float[BlockSize];
        var v = new float[BlockSize];
        for (int block = 0; block < MAbsmax.Length; block++)
        {
            int first = block * BlockSize, count = Math.Min(BlockSize, Parameter.Length - first);
            float newM = 0f, newV = 0f;
            for (int j = 0; j < count; j++)
            {
                float g = gradient[first + j] * gradScale;
                v[j] = Unsigned[VCodes[first + j]] * VAbsmax[block];
                v[j] = v[j] * _beta2 + oneMinusBeta2 * g * g;
                m[j] = Signed[MCodes[first + j]] * MAbsmax[block];
                m[j] = m[j] * _beta1 + oneMinusBeta1 * g;
                newM = Math.Max(newM, Math.Abs(m[j]));
                newV = Math.Max(newV, Math.Abs(v[j]));
            }
            for (int j = 0; j < count; j++)
            {
                float p = Parameter[first + j] + stepSize * (m[j] / (MathF.Sqrt(v[j]) + epsC2));
                Parameter[first + j] = p * decay;
                int mc = Search(Signed, m[j] / newM);
                if (float.IsNegative(Signed[mc]) != float.IsNegative(m[j])) mc += m[j] > 0f ? 1 : -1;
                MCodes[first + j] = (byte)mc;
                VCodes[first + j] = (byte)Search(Unsigned, v[j] / newV);
            }
            MAbsmax[block] = newM;
            VAbsmax[block] = newV;
        }
    }

    /// <summary>bnb's dQuantize over a sorted 256-entry code (REFERENCE.md §8.4).</summary>
    public static int Search(float[] code, float x)
    {
        int pivot = 127, upperPivot = 255, lowerPivot = 0;
        float lower = -1f, upper = 1f, value = code[pivot];
        for (int step = 64; step > 0; step /= 2)
        {
            if (x > value)
            {
                lowerPivot = pivot;
                lower = value;
                pivot += step;
            }
            else
            {
                upperPivot = pivot;
                upper = value;
                pivot -= step;
            }
            value = code[pivot];
        }
        if (upperPivot == 255) upper = code[255];
        if (lowerPivot == 0) lower = code[0];
        if (x > value) return x > (upper + value) * 0.5f ? upperPivot : pivot;
        return x < (lower + value) * 0.5f ? lowerPivot : pivot;
    }

    /// <summary>The dequantized moments of element i: code · absmax of its block.</summary>
    public (float M, float V) Moments(int i) =>
        (Signed[MCodes[i]] * MAbsmax[i / BlockSize], Unsigned[VCodes[i]] * VAbsmax[i / BlockSize]);

    public static float[] SignedMap => Signed;
    public static float[] UnsignedMap => Unsigned;
}
