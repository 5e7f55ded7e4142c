// LoftQ initialisation (REFERENCE.md §4.3, PEFT's loftq_init with 4 bits): alternate a 4-bit
// quantization of the residual with a rank-r SVD of the quantization error,
//   res = W
//   repeat T times:  Q = quant(res);  E = W − deq(Q);  U,S,Vt = svd(E)
//                    B = U_r·√S_r,  A = √S_r·Vt_r;  res = W − s·B·A   (not after the last)
// so that deq(Q) + s·B·A approximates W better than deq(quant(W)) alone. PEFT does not compensate
// the adapter scale s (s = 1 in the residual, exact only when alpha = r); compensateScaling divides
// S by s so the init is exact for any alpha (REFERENCE.md §11). The SVD is Ops.Linalg.Svd (LAPACK
// on the CPU, cuSOLVER on CUDA, LAPACK on the emulator's host memory); the rank-r slices are taken
// on the host ([m, k] and [k, n] once per iteration), the residual update W − s·B·A on the device.
namespace LoraKernels.Variants;

public static class LoftQ
{
    /// <summary>
    /// The LoftQ initialisation of the F32 weight <paramref name="w"/> [out, in] for a rank-<paramref name="r"/>
    /// adapter whose forward adds <paramref name="scale"/>·B·A: Q (the base to freeze), A [r, in] and B [out, r]
    /// (F32, on w's device). The caller owns all three.
    /// </summary>
    public static (QuantizedWeight Q, Tensor A, Tensor B) Initialize(Tensor w, int r, int iterations = 1, QuantType type = QuantType.Nf4,
                                                                   int blockSize = 64, float scale = 1f, bool compensateScaling = false)
    {
        const string op = "LoftQ.Initialize";
        Ops.Checks.Alive(w, op, nameof(w));
        (long outFeatures, long inFeatures) = Ops.Checks.Matrix(op, nameof(w), w, "out, in");
        Ops.Checks.Fp32(op, nameof(w), w);
        if (r < 1 || r > Math.Min(outFeatures, inFeatures))
            throw new ArgumentOutOfRangeException(nameof(r), r, $"{op}: r must be in [1, min(out, in)] = [1, {Math.Min(outFeatures, inFeatures)}] for {w.Describe()}.");
        if (iterations < 1) throw new ArgumentOutOfRangeException(nameof(iterations), iterations, $"{op}: iterations must be >= 1.");
        Ops.Nf4.CheckQuantType(op, type);
        Ops.Nf4.CheckBlockSize(op, blockSize);
        if (!float.IsFinite(scale) || !(scale > 0f))
            throw new ArgumentOutOfRangeException(nameof(scale), scale, $"{op}: scale must be finite and > 0.");
        Ops.Checks.AllFinite(op, nameof(w), w, "LoftQ quantizes W and factors the quantization error by an SVD; both need finite values.");
        float singularDivisor = compensateScaling ? scale : 1f;
        float residualScale = compensateScaling ? scale : 1f;

        QuantizedWeight? q = null;
        Tensor? a = null, b = null;
        Tensor residual = w.Clone();
        try
        {
            for (int iteration = 0; iteration < iterations; iteration++)
            {
                q?.Dispose();
                q = Ops.Nf4.Quantize(residual, type, blockSize);
                residual.Dispose();
                residual = QuantizationError(w, q);
                a?.Dispose();
                b?.Dispose();
                (a, b) = LowRankFactors(residual, r, singularDivisor);
                if (iteration == iterations - 1) break;
                residual.Dispose();
                residual = w.Clone();
                Ops.Lora.Unmerge(residual, a, b, residualScale);
            }
            return (q!, a!, b!);
        }
        catch
        {
            q?.Dispose();
            Ops.Checks.DisposeAll(a, b);
            throw;
        }
        finally
        {
            residual.Dispose();
        }
    }

    /// <summary>‖W − (deq(Q) + scale·B·A)‖_F (in double on the host): how far the initialised layer is from W.</summary>
    public static double ApproximationError(Tensor w, QuantizedWeight q, Tensor? a, Tensor? b, float scale)
    {
        using Tensor approximation = Ops.Nf4.Dequantize(q);
        if (a is not null && b is not null) Ops.Lora.Merge(approximation, a, b, scale);
        float[] target = w.ToArray(), approx = approximation.ToArray();
        double sum = 0;
        for (int i = 0; i < target.Length; i++)
        {
            double difference = (double)target[i] - approx[i];
            sum += difference * difference;
        }
        return Math.Sqrt(sum);
    }

    /// <summary>W − deq(Q) on W's device.</summary>
    private static Tensor QuantizationError(Tensor w, QuantizedWeight q)
    {
        Tensor error = w.Clone();
        try
        {
            using Tensor dequantized = Ops.Nf4.Dequantize(q);
            Ops.Elementwise.Axpy(-1f, dequantized, error);
            return error;
        }
        catch
        {
            error.Dispose();
            throw;
        }
    }

    /// <summary>B = U_r·√(S_r/d) [out, r] and A = √(S_r/d)·Vt_r [r, in] from the thin SVD of <paramref name="error"/>.</summary>
    private static (Tensor A, Tensor B) LowRankFactors(Tensor error, int r, float singularDivisor)
    {
        var (u, s, vt) = Ops.Linalg.Svd(error);
        using (u)
        using (s)
        using (vt)
        {
            int rows = (int)u.Shape[0], k = (int)u.Shape[1], columns = (int)vt.Shape[1];
            float[] uValues = u.ToArray(), sValues = s.ToArray(), vtValues = vt.ToArray();
            float[] root = new float[r];
            for (int j = 0; j < r; j++) root[j] = MathF.Sqrt(sValues[j] / singularDivisor);
            float[] bValues = new float[(long)rows * r];
            for (int i = 0; i < rows; i++)
                for (int j = 0; j < r; j++)
                    bValues[(long)i * r + j] = uValues[(long)i * k + j] * root[j];
            float[] aValues = new float[(long)r * columns];
            for (int j = 0; j < r; j++)
                for (int c = 0; c < columns; c++)
                    aValues[(long)j * columns + c] = root[j] * vtValues[(long)j * columns + c];
            Tensor a = Tensor.FromArray(error.Device, aValues, r, columns);
            try
            {
                return (a, Tensor.FromArray(error.Device, bValues, rows, r));
            }
            catch
            {
                a.Dispose();
                throw;
            }
        }
    }
}
