// Element-wise ops the autograd tape needs (ReLU, axpy) plus dtype casts, fills and the
// non-finite scan behind the library's input checks (the losses are in Losses.cs).
// ReLU and axpy are fp32 ops on every device, as their kernels are
// (kernels/elementwise.cu: lk_ew_*_f32), so a BF16 tensor is rejected with a message saying to
// cast it first (Tape.Cast does so inside a graph); Cast converts between F32 and BF16 and Fill
// writes either.
namespace LoraKernels.Ops;

public static class Elementwise
{
    /// <summary>max(x, 0), a new F32 tensor shaped like x (F32).</summary>
    public static Tensor Relu(Tensor x)
    {
        const string op = "Elementwise.Relu";
        CheckFp32(op, nameof(x), x);
        return Produce(x, DType.F32, y => x.Device.Backend.ReluForward(x, y));
    }

    /// <summary>dx = dy where x > 0, else 0 (x and dy F32, same shape and device).</summary>
    public static Tensor ReluBackward(Tensor x, Tensor dy)
    {
        const string op = "Elementwise.ReluBackward";
        CheckFp32(op, nameof(x), x);
        Checks.Alive(dy, op, nameof(dy));
        Checks.SameAs(op, nameof(dy), dy, nameof(x), x);
        return Produce(x, DType.F32, dx => x.Device.Backend.ReluBackward(x, dy, dx));
    }

    /// <summary>y += alpha·x in place (F32, same shape and device).</summary>
    public static void Axpy(float alpha, Tensor x, Tensor y)
    {
        const string op = "Elementwise.Axpy";
        CheckFp32(op, nameof(x), x);
        Checks.Alive(y, op, nameof(y));
        Checks.SameAs(op, nameof(y), y, nameof(x), x);
        x.Device.Backend.Axpy(alpha, x, y);
    }

    /// <summary>The smallest flat index of a NaN or ±Inf element of <paramref name="x"/> (F32 or BF16), or -1 when all are finite.</summary>
    public static long FirstNonFinite(Tensor x)
    {
        const string op = "Elementwise.FirstNonFinite";
        Checks.Alive(x, op, nameof(x));
        return x.Device.Backend.FirstNonFinite(x);
    }

    /// <summary>A copy of x in <paramref name="dtype"/> (round to nearest even into BF16; exact into F32).</summary>
    public static Tensor Cast(Tensor x, DType dtype)
    {
        const string op = "Elementwise.Cast";
        Checks.Alive(x, op, nameof(x));
        Checks.NotEmpty(op, nameof(x), x);
        _ = DTypeInfo.SizeOf(dtype);
        return Produce(x, dtype, y => x.Device.Backend.Cast(x, y));
    }

    /// <summary>Sets every element of <paramref name="tensor"/> to <paramref name="value"/> (rounded to its dtype).</summary>
    public static void Fill(Tensor tensor, float value)
    {
        const string op = "Elementwise.Fill";
        Checks.Alive(tensor, op, nameof(tensor));
        Checks.NotEmpty(op, nameof(tensor), tensor);
        tensor.Device.Backend.Fill(tensor, value);
    }

    internal static void CheckFp32(string op, string name, Tensor tensor)
    {
        Checks.Alive(tensor, op, name);
        Checks.Fp32(op, name, tensor);
        Checks.NotEmpty(op, name, tensor);
    }

    /// <summary>A new tensor shaped like <paramref name="like"/> on its device, filled by <paramref name="compute"/>; freed if that throws.</summary>
    internal static Tensor Produce(Tensor like, DType dtype, Action<Tensor> compute)
    {
        Tensor result = Tensor.Empty(like.Device, dtype, [.. like.Shape]);
        try
        {
            compute(result);
            return result;
        }
        catch
        {
            result.Dispose();
            throw;
        }
    }
}
