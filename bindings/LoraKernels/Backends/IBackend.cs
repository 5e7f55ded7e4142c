namespace LoraKernels.Backends;

/// <summary>
/// The ops every family shares: element-wise ops, the losses and reductions of the tape, dtype
/// casts and fills. Each adapter family has its own kernel interface beside its code
/// (Families/&lt;family&gt;/I*Kernels.cs, resolved per device by <see cref="Device.Kernels"/>), so a new
/// family adds nothing here. <see cref="Ops"/> checks shapes, dtypes and devices before calling.
/// Implemented by <see cref="Cpu.CpuBackend"/> (native CPU kernels) and <see cref="Gpu.GpuBackend"/>
/// (kernels/*.cu on CUDA or the SIMT emulator).
/// </summary>
internal partial interface IBackend
{
    void ReluForward(Tensor x, Tensor y);
    void ReluBackward(Tensor x, Tensor dy, Tensor dx);

    /// <summary>y += alpha·x.</summary>
    void Axpy(float alpha, Tensor x, Tensor y);

    /// <summary>Returns mean((pred - target)²); writes 2(pred - target)/n to <paramref name="dpred"/> when given.</summary>
    float MseLoss(Tensor pred, Tensor target, Tensor? dpred);

    /// <summary>The mean softmax cross-entropy of logits [M, C] (see Ops.Losses.CrossEntropy); writes its gradient to <paramref name="dlogits"/> when given.</summary>
    float CrossEntropy(Tensor logits, Ops.CrossEntropyProblem problem, Tensor? dlogits);

    /// <summary>The smallest flat index of a NaN or ±Inf element of <paramref name="tensor"/>, or -1 when every element is finite.</summary>
    long FirstNonFinite(Tensor tensor);

    /// <summary>Element-wise conversion between dtypes (same shape).</summary>
    void Cast(Tensor source, Tensor destination);

    void Fill(Tensor tensor, float value);
}
