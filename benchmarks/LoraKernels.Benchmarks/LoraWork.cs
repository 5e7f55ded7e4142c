namespace LoraKernels.Benchmarks;

/// <summary>Which LoRA op a benchmark runs.</summary>
internal enum LoraOp { Forward, Backward }

/// <summary>
/// FLOPs and minimum bytes of one fp32 LoRA call (no dropout, no bias), the numerators of the
/// throughput columns. Forward: 2·M·(in·out + r·in + r·out) FLOPs; bytes = W0 + A + B + x + y.
/// Backward (du = s·dy B, dB = s·dyᵀ u, dA = duᵀ x, dx = dy W0 + du A):
/// 2·M·(in·out + 2·r·out + 2·r·in) FLOPs; bytes = x + W0 + A + B + u + dy read, dx + dA + dB written.
/// </summary>
internal readonly record struct LoraWork(LoraOp Op, int M, int In, int Out, int R)
{
    public double Flops => Op == LoraOp.Forward
        ? 2.0 * M * ((double)In * Out + (double)R * In + (double)R * Out)
        : 2.0 * M * ((double)In * Out + 2.0 * R * Out + 2.0 * R * In);

    public double Bytes => 4.0 * (Op == LoraOp.Forward
        ? (double)Out * In + (double)R * In + (double)Out * R + (double)M * In + (double)M * Out
        : (double)M * In + (double)Out * In + (double)R * In + (double)Out * R + (double)M * R + (double)M * Out
          + (double)M * In + (double)R * In + (double)Out * R);
}
