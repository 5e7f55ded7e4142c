// Adam's hyper-parameters and the per-step scalar coefficients the kernels take (kernels/optim_segments.cuh),
// computed in double and rounded to float once, the same on every device:
//   torch form (AdamW):                 decay = 1 - lr·wd (before the step), step_size = -lr / (1 - β1^t),
//                                       √(1 - β2^t) divides √v, eps outside the root
//   bitsandbytes form (AdamW8bit):      decay = 1 - lr·wd (after the step), step_size = -lr·c2 / (1 - β1^t),
//                                       eps·c2 beside √v, c2 = √(1 - β2^t)
// bitsandbytes computes its coefficients in float (powf, sqrtf), so they may differ from these by an ulp.
namespace LoraKernels.Optim;

internal readonly record struct AdamSettings(float Beta1, float Beta2, float Eps)
{
    /// <summary>The settings, or an ArgumentOutOfRangeException naming the bad one for <paramref name="optimizer"/>.</summary>
    public static AdamSettings Checked(string optimizer, float beta1, float beta2, float eps)
    {
        if (!(beta1 >= 0f && beta1 < 1f)) throw new ArgumentOutOfRangeException(nameof(beta1), beta1, $"{optimizer}: beta1 must be in [0, 1).");
        if (!(beta2 >= 0f && beta2 < 1f)) throw new ArgumentOutOfRangeException(nameof(beta2), beta2, $"{optimizer}: beta2 must be in [0, 1).");
        if (!(eps >= 0f) || !float.IsFinite(eps)) throw new ArgumentOutOfRangeException(nameof(eps), eps, $"{optimizer}: eps must be finite and >= 0.");
        return new AdamSettings(beta1, beta2, eps);
    }

    public IReadOnlyDictionary<string, double> Describe() =>
        new Dictionary<string, double> { ["beta1"] = Beta1, ["beta2"] = Beta2, ["eps"] = Eps };

    /// <summary>The torch-form coefficients of step <paramref name="step"/> (from 1): decay, step size, √(1 - β2^t), eps.</summary>
    public (float Decay, float StepSize, float BiasCorrection2Sqrt, float Eps) Torch(float lr, float weightDecay, long step)
    {
        double bc1 = 1.0 - Math.Pow(Beta1, step), bc2 = 1.0 - Math.Pow(Beta2, step);
        return ((float)(1.0 - (double)lr * weightDecay), (float)(-(double)lr / bc1), (float)Math.Sqrt(bc2), Eps);
    }

    /// <summary>The bitsandbytes-form coefficients of step <paramref name="step"/>: decay, step size, eps·√(1 - β2^t).</summary>
    public (float Decay, float StepSize, float Eps) Bitsandbytes(float lr, float weightDecay, long step)
    {
        double c1 = 1.0 - Math.Pow(Beta1, step), c2 = Math.Sqrt(1.0 - Math.Pow(Beta2, step));
        return ((float)(1.0 - (double)lr * weightDecay), (float)(-(double)lr * c2 / c1), (float)(Eps * c2));
    }
}
