// The SSM op family: Mamba's selective scan (S6) and the block's causal depthwise convolution (REFERENCE: Gu &
// Dao 2023, Mamba's selective_scan_ref and mamba_simple.py; docs/DECISIONS.md states the definitions). A batch of
// sequences is token-major: rows b·L + t of [batch·L, width] tensors. Per sequence b, channel d < D, state n < N:
//   Δ_t = softplus(delta_t + deltaBias), h_t = exp(Δ_t·A)·h_{t-1} + Δ_t·B_t·u_t, y_t = (C_t·h_t + D·u_t)·silu(z_t).
// Training runs the chunked parallel scan (kernels/ssm.cu) or the CPU's sequential one; decode runs the recurrent
// Step. F32 only. Checks every argument, allocates the outputs, then dispatches to the device's kernels.
using LoraKernels.Families.Ssm;

namespace LoraKernels.Ops;

public static class Ssm
{
    /// <summary>The most states N a scan holds (Mamba's d_state is 16).</summary>
    public const int MaxStates = 16;

    // The GPU grid bounds: chunks of 16 steps on grid.y, sequences on grid.z.
    private const int MaxGridYz = 65535;

    /// <summary>
    /// The scan over <paramref name="batch"/> sequences: u, delta [batch·L, D]; deltaBias [D] or null; a [D, N]; b, c
    /// [batch·L, N]; d [D]; z [batch·L, D] or null (no gate); initialState [batch, D, N] or null (zeros). Returns
    /// Y [batch·L, D] and the state after the last step [batch, D, N].
    /// </summary>
    public static (Tensor Y, Tensor LastState) Scan(int batch, Tensor u, Tensor delta, Tensor? deltaBias, Tensor a, Tensor b, Tensor c,
                                                    Tensor d, Tensor? z = null, Tensor? initialState = null)
    {
        ScanProblem p = Problem("Ssm.Scan", batch, u, delta, deltaBias, a, Columns.Of(b), Columns.Of(c), d, z is null ? null : Columns.Of(z),
                                initialState, nameof(b), nameof(c), nameof(z));
        return ScanForward(p);
    }

    /// <summary>
    /// Gradients of <see cref="Scan"/>'s Y given dy [batch·L, D]: du, dDelta (w.r.t. delta, before the softplus), dB, dC
    /// [batch·L, N] and dz (when z was given). A, D and deltaBias are frozen (Mamba with LoRA on its projections).
    /// </summary>
    public static (Tensor Du, Tensor DDelta, Tensor DB, Tensor DC, Tensor? Dz) ScanBackward(int batch, Tensor u, Tensor delta, Tensor? deltaBias,
                                                                                           Tensor a, Tensor b, Tensor c, Tensor d, Tensor? z,
                                                                                           Tensor? initialState, Tensor dy)
    {
        const string op = "Ssm.ScanBackward";
        ScanProblem p = Problem(op, batch, u, delta, deltaBias, a, Columns.Of(b), Columns.Of(c), d, z is null ? null : Columns.Of(z),
                                initialState, nameof(b), nameof(c), nameof(z));
        Checks.Alive(dy, op, nameof(dy));
        Checks.Shape(op, nameof(dy), dy, "batch·L, D", [p.Rows, p.Channels], DType.F32, u.Device);
        var outputs = new List<Tensor>();
        Tensor Output(long columns)
        {
            Tensor output = Tensor.Empty(u.Device, DType.F32, p.Rows, columns);
            outputs.Add(output);
            return output;
        }
        try
        {
            Tensor du = Output(p.Channels), dDelta = Output(p.Channels), dB = Output(p.States), dC = Output(p.States);
            Tensor? dz = z is null ? null : Output(p.Channels);
            ISsmKernels.On(u.Device).ScanBackward(p, dy, du, dDelta, Columns.Of(dB), Columns.Of(dC), dz is null ? null : Columns.Of(dz));
            return (du, dDelta, dB, dC, dz);
        }
        catch
        {
            Checks.DisposeAll([.. outputs]);
            throw;
        }
    }

    /// <summary>
    /// One decode step: u, delta, z [batch, D] (one new token per sequence), b, c [batch, N]; <paramref name="state"/>
    /// [batch, D, N] is advanced in place. Returns y [batch, D].
    /// </summary>
    public static Tensor Step(Tensor u, Tensor delta, Tensor? deltaBias, Tensor a, Tensor b, Tensor c, Tensor d, Tensor? z, Tensor state)
    {
        const string op = "Ssm.Step";
        Checks.Alive(u, op, nameof(u));
        (long batch, _) = Checks.Matrix(op, nameof(u), u, "batch, D");
        ScanProblem p = Problem(op, checked((int)batch), u, delta, deltaBias, a, Columns.Of(b), Columns.Of(c), d,
                                z is null ? null : Columns.Of(z), state, nameof(b), nameof(c), nameof(z));
        return StepColumns(p, state);
    }

    /// <summary>
    /// silu(causal depthwise convolution) over <paramref name="batch"/> sequences: x [batch·L, D], weight [D, K], bias [D]
    /// or null (Mamba's conv1d with padding K - 1, truncated to L). Returns y [batch·L, D].
    /// </summary>
    public static Tensor Convolution(int batch, Tensor x, Tensor weight, Tensor? bias) =>
        ConvolutionColumns(batch, CheckedColumns("Ssm.Convolution", x), weight, bias);

    /// <summary>The convolution's gradient to its input given dy [batch·L, D] (weight and bias are frozen).</summary>
    public static Tensor ConvolutionBackward(int batch, Tensor x, Tensor weight, Tensor? bias, Tensor dy)
    {
        Columns input = CheckedColumns("Ssm.ConvolutionBackward", x);
        Tensor dx = Tensor.Empty(x.Device, DType.F32, x.Shape[0], x.Shape[1]);
        try
        {
            ConvolutionBackwardColumns(batch, input, weight, bias, dy, Columns.Of(dx));
            return dx;
        }
        catch
        {
            dx.Dispose();
            throw;
        }
    }

    /// <summary>One decode step of the convolution: x [batch, D]; state [batch, D, K - 1] (the last inputs, oldest first) shifted in place.</summary>
    public static Tensor ConvolutionStep(Tensor x, Tensor weight, Tensor? bias, Tensor state) =>
        ConvolutionStepColumns(CheckedColumns("Ssm.ConvolutionStep", x), weight, bias, state);

    // ---- the column-slice forms the Mamba block runs (its z, B, C are slices of wider activations) ----------

    internal static (Tensor Y, Tensor LastState) ScanForward(ScanProblem p)
    {
        Tensor y = Tensor.Empty(p.U.Device, DType.F32, p.Rows, p.Channels);
        Tensor? last = null;
        try
        {
            last = Tensor.Empty(p.U.Device, DType.F32, p.Batch, p.Channels, p.States);
            ISsmKernels.On(p.U.Device).ScanForward(p, y, last);
            return (y, last);
        }
        catch
        {
            Checks.DisposeAll(y, last);
            throw;
        }
    }

    internal static Tensor StepColumns(ScanProblem p, Tensor state)
    {
        Checks.Alive(state, "Ssm.Step", nameof(state));
        Checks.Shape("Ssm.Step", nameof(state), state, "batch, D, N", [p.Batch, p.Channels, p.States], DType.F32, p.U.Device);
        Tensor y = Tensor.Empty(p.U.Device, DType.F32, p.Batch, p.Channels);
        try
        {
            ISsmKernels.On(p.U.Device).Step(p, state, y);
            return y;
        }
        catch
        {
            y.Dispose();
            throw;
        }
    }

    internal static Tensor ConvolutionColumns(int batch, Columns x, Tensor weight, Tensor? bias)
    {
        CheckConvolution("Ssm.Convolution", batch, x, weight, bias);
        Tensor y = Tensor.Empty(x.Tensor.Device, DType.F32, x.Rows, x.Width);
        try
        {
            ISsmKernels.On(x.Tensor.Device).ConvForward(batch, x, weight, bias, y);
            return y;
        }
        catch
        {
            y.Dispose();
            throw;
        }
    }

    internal static void ConvolutionBackwardColumns(int batch, Columns x, Tensor weight, Tensor? bias, Tensor dy, Columns dx)
    {
        const string op = "Ssm.ConvolutionBackward";
        CheckConvolution(op, batch, x, weight, bias);
        Checks.Alive(dy, op, nameof(dy));
        Checks.Shape(op, nameof(dy), dy, "batch·L, D", [x.Rows, x.Width], DType.F32, x.Tensor.Device);
        ISsmKernels.On(x.Tensor.Device).ConvBackward(batch, x, weight, bias, dy, dx);
    }

    internal static Tensor ConvolutionStepColumns(Columns x, Tensor weight, Tensor? bias, Tensor state)
    {
        const string op = "Ssm.ConvolutionStep";
        CheckConvolution(op, checked((int)x.Rows), x, weight, bias);
        Checks.Alive(state, op, nameof(state));
        Checks.Shape(op, nameof(state), state, "batch, D, K - 1", [x.Rows, x.Width, weight.Shape[1] - 1], DType.F32, x.Tensor.Device);
        Tensor y = Tensor.Empty(x.Tensor.Device, DType.F32, x.Rows, x.Width);
        try
        {
            ISsmKernels.On(x.Tensor.Device).ConvStep(x, weight, bias, state, y);
            return y;
        }
        catch
        {
            y.Dispose();
            throw;
        }
    }

    /// <summary>Every scan argument: shapes, F32, one device, N ≤ 16, batch dividing the rows, the GPU grid's bounds.</summary>
    internal static ScanProblem Problem(string op, int batch, Tensor u, Tensor delta, Tensor? deltaBias, Tensor a, Columns b, Columns c,
                                        Tensor d, Columns? z, Tensor? initialState, string bName, string cName, string zName)
    {
        Checks.Alive(u, op, nameof(u));
        (long rows, long channels) = Checks.Matrix(op, nameof(u), u, "batch·L, D");
        Checks.Fp32(op, nameof(u), u);
        Device device = u.Device;
        if (batch < 1 || batch > MaxGridYz || rows % batch != 0)
            throw new ArgumentOutOfRangeException(nameof(batch), batch,
                $"{op}: batch must be in [1, {MaxGridYz}] and divide u's {rows} rows (sequences of equal length L), got {batch}.");
        long length = rows / batch;
        if (GpuChunks(length) > MaxGridYz)
            throw new ArgumentOutOfRangeException(nameof(u), $"{op}: sequences of {length} steps need {GpuChunks(length)} chunks of 16; the GPU grid allows {MaxGridYz}.");
        Checks.Alive(delta, op, nameof(delta));
        Checks.Shape(op, nameof(delta), delta, "batch·L, D", [rows, channels], DType.F32, device);
        if (deltaBias is not null)
        {
            Checks.Alive(deltaBias, op, nameof(deltaBias));
            Checks.Shape(op, nameof(deltaBias), deltaBias, "D", [channels], DType.F32, device);
        }
        Checks.Alive(a, op, nameof(a));
        if (a.Rank != 2 || a.Shape[0] != channels || a.Shape[1] < 1 || a.Shape[1] > MaxStates || a.DType != DType.F32 || !ReferenceEquals(a.Device, device))
            throw new ArgumentException($"{op}: a must be [D, N] = [{channels}, N] with 1 <= N <= {MaxStates}, F32 on {device}, got {a.Describe()}", nameof(a));
        long states = a.Shape[1];
        CheckColumns(op, bName, b, rows, states, device);
        CheckColumns(op, cName, c, rows, states, device);
        Checks.Alive(d, op, nameof(d));
        Checks.Shape(op, nameof(d), d, "D", [channels], DType.F32, device);
        if (z is { } gate) CheckColumns(op, zName, gate, rows, channels, device);
        if (initialState is not null)
        {
            Checks.Alive(initialState, op, nameof(initialState));
            Checks.Shape(op, nameof(initialState), initialState, "batch, D, N", [batch, channels, states], DType.F32, device);
        }
        return new ScanProblem(batch, (int)length, (int)channels, (int)states, u, delta, deltaBias, a, b, c, d, z, initialState);
    }

    private static long GpuChunks(long length) => (length + 15) / 16;

    private static void CheckColumns(string op, string name, Columns columns, long rows, long width, Device device)
    {
        Checks.Alive(columns.Tensor, op, name);
        Tensor t = columns.Tensor;
        if (t.Rank != 2 || t.Shape[0] != rows || columns.Width != width || columns.Offset < 0 || columns.Offset + width > t.Shape[1]
            || t.DType != DType.F32 || !ReferenceEquals(t.Device, device))
            throw new ArgumentException(
                $"{op}: {name} must be [batch·L, {width}] = [{rows}, {width}] (F32 on {device}), got {t.Describe()}{(columns.Offset > 0 || columns.Width != t.Shape[1] ? $" columns [{columns.Offset}, {columns.Offset + columns.Width})" : "")}",
                name);
        Checks.Size(op, name, t);
    }

    private static Columns CheckedColumns(string op, Tensor x)
    {
        Checks.Alive(x, op, nameof(x));
        Checks.Matrix(op, nameof(x), x, "rows, D");
        Checks.Fp32(op, nameof(x), x);
        return Columns.Of(x);
    }

    private static void CheckConvolution(string op, int batch, Columns x, Tensor weight, Tensor? bias)
    {
        Device device = x.Tensor.Device;
        if (batch < 1 || x.Rows % batch != 0)
            throw new ArgumentOutOfRangeException(nameof(batch), batch, $"{op}: batch must be >= 1 and divide x's {x.Rows} rows, got {batch}.");
        Checks.Alive(weight, op, nameof(weight));
        if (weight.Rank != 2 || weight.Shape[0] != x.Width || weight.Shape[1] < 1 || weight.DType != DType.F32 || !ReferenceEquals(weight.Device, device))
            throw new ArgumentException($"{op}: weight must be [D, K] = [{x.Width}, K] with K >= 1, F32 on {device}, got {weight.Describe()}", nameof(weight));
        if (bias is not null)
        {
            Checks.Alive(bias, op, nameof(bias));
            Checks.Shape(op, nameof(bias), bias, "D", [x.Width], DType.F32, device);
        }
    }
}
