// The family ops called directly, as docs/API.md shows them (the "ops" region is its example, word for
// word): a LoRA forward and backward on the CPU, checked against the layer that wraps the same op.
using LoraKernels;
using LoraKernels.Layers;
using LoraKernels.Ops;

internal static class OpsSample
{
    public static bool Run()
    {
        var random = new Random(3);
        Tensor Random(params long[] shape) =>
            Tensor.FromArray(Device.Cpu, Enumerable.Range(0, (int)shape.Aggregate(1L, (p, d) => p * d)).Select(_ => (float)random.NextDouble() - 0.5f).ToArray(), shape);
        using Tensor x = Random(4, 16), w0 = Random(8, 16), a = Random(2, 16), b = Random(8, 2), dy = Random(4, 8);

        #region ops
        using var forward = Lora.Forward(x, w0, bias: null, a, b, scale: 2f);
        using var gradients = Lora.Backward(x, w0, a, b, forward.U, dy, scale: 2f, needDx: false);
        #endregion

        using var layer = new LoraLinear(Device.Cpu, w0, null, r: 2, alpha: 4f) { Training = false };  // s = 4/2
        layer.A.Value.CopyFrom(a.ToArray());
        layer.B.Value.CopyFrom(b.ToArray());
        using Tensor y = layer.Forward(x);
        bool ok = forward.Y.ToArray().SequenceEqual(y.ToArray()) && gradients.Dx is null && gradients.DA is not null && gradients.DB is not null;
        Console.WriteLine($"Ops.Lora.Forward / Backward records: {(ok ? "ok" : "FAILED")}");
        return ok;
    }
}
