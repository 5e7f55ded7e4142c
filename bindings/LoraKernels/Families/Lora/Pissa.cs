// PiSSA (Meng, Wang, Zhang 2024, arXiv:2404.02948; REFERENCE.md 4.1): LoRA initialised from the
// principal singular triplets of W0, with the rest left in the frozen base, as PEFT's pissa_init:
//   W = U diag(S) Vh,  S_r' = S[:r] / s,  A = diag(√S_r') Vh[:r]  [r, in],  B = U[:, :r] diag(√S_r')  [out, r],
//   W_res = W − s·B·A   (= W minus its top-r principal part; the division by s makes this hold for any alpha/r).
// Exact: the thin SVD of W (Ops.Linalg.Svd). Randomized ("pissa_niter_K", torch.svd_lowrank with q = r,
// Halko, Martinsson, Tropp 2011, Alg. 4.4): Ω [in, r] Gaussian from SplitMix64(seed) (Box-Muller),
// Q = orth(W Ω), then K times Q = orth(W orth(Wᵀ Q)), then the SVD of the small Qᵀ W [r, in] = Ũ S Vh
// gives U = Q Ũ. Its product B·A equals Q Qᵀ W (the projection of W onto range Q), so its error against
// the exact principal part is ‖(Q Qᵀ − U_r U_rᵀ) W‖_F ≤ sin θ·‖W‖_F with tan θ ≤ (σ_{r+1}/σ_r)^(2K+1)·‖Ω₂ Ω₁⁻¹‖₂
// (θ the largest principal angle between range Q and the top-r left singular space; Ω₁ = V_rᵀ Ω,
// Ω₂ = V_⊥ᵀ Ω; Halko et al., Theorem 9.1 with the power scheme of Corollary 10.10).
// GEMMs and SVDs run on the weight's device; only the r scalings of the factors run on the host.
using LoraKernels.Layers;
using LoraKernels.Runtime;

namespace LoraKernels.Variants;

/// <summary>A PiSSA initialisation: the adapter factors and the residual base weight, all F32 on W0's device.</summary>
public sealed record PissaInit(Tensor A, Tensor B, Tensor Residual) : IDisposable
{
    public void Dispose()
    {
        A.Dispose();
        B.Dispose();
        Residual.Dispose();
    }
}

public static class Pissa
{
    /// <summary>
    /// PiSSA factors of <paramref name="w0"/> [out, in] for rank <paramref name="r"/> (1 ≤ r ≤ min(in, out))
    /// and adapter scale <paramref name="scale"/> (s = alpha/r, or alpha/√r with rsLoRA): exact SVD when
    /// <paramref name="niter"/> is null, else the randomized SVD with that many subspace iterations
    /// (PEFT's "pissa_niter_K"), its sketch drawn from <paramref name="seed"/>. w0 may be F32 or BF16;
    /// the results are F32 on w0's device and w0 is unchanged.
    /// </summary>
    public static PissaInit Initialize(Tensor w0, int r, float scale, int? niter = null, ulong seed = 0)
    {
        const string op = "Pissa.Initialize";
        Ops.Checks.Alive(w0, op, nameof(w0));
        (long outFeatures, long inFeatures) = Ops.Checks.Matrix(op, nameof(w0), w0, "out, in");
        if (r < 1 || r > Math.Min(outFeatures, inFeatures))
            throw new ArgumentOutOfRangeException(nameof(r), r, $"{op}: r must be in [1, min(in, out)] = [1, {Math.Min(outFeatures, inFeatures)}] for w0 {w0.Describe()}.");
        if (!float.IsFinite(scale) || !(scale > 0f))
            throw new ArgumentOutOfRangeException(nameof(scale), scale, $"{op}: the scale s must be finite and > 0 (√(S/s) must be real).");
        if (niter is < 0) throw new ArgumentOutOfRangeException(nameof(niter), niter, $"{op}: the number of subspace iterations must be >= 0.");
        Ops.Checks.AllFinite(op, nameof(w0), w0, "PiSSA factors W0 by its SVD, which needs finite values.");

        Tensor w = w0.DType == DType.F32 ? w0 : Ops.Elementwise.Cast(w0, DType.F32);
        try
        {
            var (u, s, vt) = niter is int iterations ? RandomizedSvd(w, r, iterations, seed) : Ops.Linalg.Svd(w);
            Tensor? a = null, b = null, residual = null;
            try
            {
                (a, b) = Factors(u, s, vt, r, scale);
                residual = w.Clone();
                Ops.Lora.Unmerge(residual, a, b, scale);
                return new PissaInit(a, b, residual);
            }
            catch
            {
                Ops.Checks.DisposeAll(a, b, residual);
                throw;
            }
            finally
            {
                Ops.Checks.DisposeAll(u, s, vt);
            }
        }
        finally
        {
            if (!ReferenceEquals(w, w0)) w.Dispose();
        }
    }

    /// <summary>
    /// A LoRA layer initialised by PiSSA, as PEFT builds it (both factors train): its base is W_res, its A and
    /// B the principal factors, so at initialisation it computes x W0ᵀ + bias up to rounding. Arguments as
    /// <see cref="LoraLinear"/>; <paramref name="niter"/> as <see cref="Initialize"/>.
    /// </summary>
    public static LoraLinear CreateLayer(Device device, Tensor w0, Tensor? bias, int r, float alpha, float dropout = 0f,
                                         bool useRsLora = false, int? niter = null, ulong seed = 0, DType dtype = DType.F32) =>
        Build(device, w0, r, LowRankDelta.ScaleOf(alpha, r, useRsLora), niter, seed,
              residual => new LoraLinear(device, residual, bias, r, alpha, dropout, useRsLora, seed, dtype),
              (layer, init) =>
              {
                  layer.A.Value.CopyFrom(init.A.ToArray());
                  layer.B.Value.CopyFrom(init.B.ToArray());
              });

    /// <summary>PEFT's PiSSA from a LoraConfig-like <paramref name="options"/> (Rank, Alpha, Dropout, UseRsLora, PissaIterations, Seed, DType).</summary>
    public static LoraLinear CreateLayer(Device device, Tensor w0, Tensor? bias, AdapterOptions options) =>
        CreateLayer(device, w0, bias, AdapterOptions.Require(options).RankOrDefault, options.AlphaOrDefault, options.Dropout,
                    options.UseRsLora, options.PissaIterations, options.Seed, options.DType);

    /// <summary>
    /// PiSSA as the guide describes it: after the SVD initialisation only U_r and S_r train and V_r stays
    /// frozen. A = diag(√S_r') Vh_r is frozen (LoRA-FA's frozen A) and B = U_r diag(√S_r') trains, which spans
    /// every change of U_r and S_r; the base is W_res as in <see cref="CreateLayer(Device, Tensor, Tensor?, int, float, float, bool, int?, ulong, DType)"/>.
    /// Half the trainable parameters of PEFT's PiSSA, and the backward keeps x·Aᵀ instead of x.
    /// </summary>
    public static LoraFaLinear CreateLayerWithFrozenV(Device device, Tensor w0, Tensor? bias, int r, float alpha, float dropout = 0f,
                                                      bool useRsLora = false, int? niter = null, ulong seed = 0, DType dtype = DType.F32) =>
        Build(device, w0, r, LowRankDelta.ScaleOf(alpha, r, useRsLora), niter, seed,
              residual => new LoraFaLinear(device, residual, bias, r, alpha, dropout, useRsLora, seed, dtype),
              (layer, init) =>
              {
                  layer.A.CopyFrom(init.A.ToArray());
                  layer.B.Value.CopyFrom(init.B.ToArray());
              });

    // Computes the factors on the layer's device, builds the layer over the residual and loads A and B.
    private static TLayer Build<TLayer>(Device device, Tensor w0, int r, float scale, int? niter, ulong seed,
                                        Func<Tensor, TLayer> create, Action<TLayer, PissaInit> load) where TLayer : IDisposable
    {
        ArgumentNullException.ThrowIfNull(device);
        Ops.Checks.Alive(w0, "Pissa.CreateLayer", nameof(w0));
        using Tensor onDevice = w0.To(device);
        using PissaInit init = Initialize(onDevice, r, scale, niter, seed);
        TLayer layer = create(init.Residual);
        try
        {
            load(layer, init);
            return layer;
        }
        catch
        {
            layer.Dispose();
            throw;
        }
    }

    /// <summary>The Gaussian sketch Ω [in, r] (row-major) that the randomized SVD draws from <paramref name="seed"/>.</summary>
    internal static float[] GaussianSketch(ulong seed, long inFeatures, int r)
    {
        var values = new float[inFeatures * r];
        new SplitMix64(seed).FillNormal(values);
        return values;
    }

    /// <summary>U [out, r], S [r], Vt [r, in] of the randomized SVD (see the file comment).</summary>
    private static (Tensor U, Tensor S, Tensor Vt) RandomizedSvd(Tensor w, int r, int niter, ulong seed)
    {
        long inFeatures = w.Shape[1];
        using Tensor omega = Tensor.FromArray(w.Device, GaussianSketch(seed, inFeatures, r), inFeatures, r);
        Tensor q;
        using (Tensor y = DenseMath.Matmul(w, false, omega, false)) q = DenseMath.OrthonormalColumns(y);
        try
        {
            for (int i = 0; i < niter; i++)
            {
                Tensor z;
                using (Tensor wtq = DenseMath.Matmul(w, true, q, false)) z = DenseMath.OrthonormalColumns(wtq);
                using (z)
                using (Tensor y = DenseMath.Matmul(w, false, z, false))
                {
                    Tensor next = DenseMath.OrthonormalColumns(y);
                    q.Dispose();
                    q = next;
                }
            }
            using Tensor small = DenseMath.Matmul(q, true, w, false);   // Qᵀ W [r, in]
            var (uSmall, s, vt) = Ops.Linalg.Svd(small);
            try
            {
                using (uSmall) return (DenseMath.Matmul(q, false, uSmall, false), s, vt);
            }
            catch
            {
                Ops.Checks.DisposeAll(s, vt);
                throw;
            }
        }
        finally
        {
            q.Dispose();
        }
    }

    /// <summary>A = √(S_r/s)·Vt[:r], B = U[:, :r]·√(S_r/s), F32 on U's device.</summary>
    private static (Tensor A, Tensor B) Factors(Tensor u, Tensor s, Tensor vt, int r, float scale)
    {
        long outFeatures = u.Shape[0], k = u.Shape[1], inFeatures = vt.Shape[1];
        float[] singular = s.ToArray();
        float[] uValues = u.ToArray(), vtValues = vt.ToArray();
        var root = new double[r];
        for (int j = 0; j < r; j++) root[j] = Math.Sqrt(Math.Max(singular[j], 0f) / (double)scale);
        var aValues = new float[r * inFeatures];
        for (int j = 0; j < r; j++)
            for (long c = 0; c < inFeatures; c++)
                aValues[j * inFeatures + c] = (float)(root[j] * vtValues[j * inFeatures + c]);
        var bValues = new float[outFeatures * r];
        for (long i = 0; i < outFeatures; i++)
            for (int j = 0; j < r; j++)
                bValues[i * r + j] = (float)(root[j] * uValues[i * k + j]);
        Tensor a = Tensor.FromArray(u.Device, aValues, r, inFeatures);
        try
        {
            return (a, Tensor.FromArray(u.Device, bValues, outFeatures, r));
        }
        catch
        {
            a.Dispose();
            throw;
        }
    }
}
