// What NVRTC builds for one GPU. A GPU newer than the loaded NVRTC (sm_100 or sm_120 with NVRTC
// 11.8, whose newest target is sm_90) has no cubin target of its own; asking for its sm_XY fails
// and the device would get no kernels. The driver, though, JIT-compiles PTX for any newer GPU, and
// a cubin built for X.y runs on every X.z with z >= y. So the choice is, in order: the device's own
// sm_XY; else the newest sm_Xy of the same major with y below the device's (a cubin it runs);
// else PTX for the newest compute_XY not above the device (the driver JITs it at load).
namespace LoraKernels.Runtime;

/// <summary>An NVRTC target: <c>sm_XY</c> (a cubin) or <c>compute_XY</c> (PTX the driver JIT-compiles).</summary>
public readonly record struct NvrtcTarget(string Architecture, bool IsCubin)
{
    /// <summary>
    /// The target for a GPU of compute capability <paramref name="device"/> given the architectures
    /// NVRTC supports (10·major + minor, as <c>nvrtcGetSupportedArchs</c> lists them).
    /// </summary>
    /// <exception cref="NotSupportedException">The GPU is older than every architecture NVRTC supports.</exception>
    public static NvrtcTarget For((int Major, int Minor) device, IReadOnlyList<int> supported)
    {
        ArgumentNullException.ThrowIfNull(supported);
        int own = 10 * device.Major + device.Minor;
        if (supported.Contains(own)) return new NvrtcTarget($"sm_{own}", IsCubin: true);
        int[] sameMajorOlder = supported.Where(a => a / 10 == device.Major && a < own).ToArray();
        if (sameMajorOlder.Length > 0) return new NvrtcTarget($"sm_{sameMajorOlder.Max()}", IsCubin: true);
        int[] older = supported.Where(a => a < own).ToArray();
        if (older.Length > 0) return new NvrtcTarget($"compute_{older.Max()}", IsCubin: false);
        throw new NotSupportedException(
            $"The GPU (sm_{own}) is older than every architecture this NVRTC supports ({string.Join(", ", supported.Order().Select(a => $"sm_{a}"))}).");
    }

    public override string ToString() => IsCubin ? $"{Architecture} cubin" : $"{Architecture} PTX (JIT-compiled by the driver)";
}
