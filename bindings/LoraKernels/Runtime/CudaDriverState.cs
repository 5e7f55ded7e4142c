// Whether CUDA can be used in this process, decided once: the driver library loads, cuInit
// succeeds and at least one device exists. Device.IsCudaAvailable reads it without throwing;
// Device.Cuda() throws CudaUnavailableException with the recorded reason.
using LoraKernels.Interop;

namespace LoraKernels.Runtime;

internal static unsafe class CudaDriverState
{
    private sealed record State(int DeviceCount, string? Failure, Exception? Cause, int DriverVersion = 0);

    private static readonly Lazy<State> Current = new(Initialize, LazyThreadSafetyMode.ExecutionAndPublication);

    public static bool IsAvailable => Current.Value.DeviceCount > 0;

    public static int DeviceCount
    {
        get
        {
            EnsureAvailable();
            return Current.Value.DeviceCount;
        }
    }

    /// <summary>The CUDA version the driver supports, as cuDriverGetVersion reports it (12040 is 12.4).</summary>
    public static int DriverVersion
    {
        get
        {
            EnsureAvailable();
            return Current.Value.DriverVersion;
        }
    }

    public static void EnsureAvailable()
    {
        State state = Current.Value;
        if (state.DeviceCount == 0) throw new CudaUnavailableException(state.Failure ?? "No CUDA device.", state.Cause);
    }

    private static State Initialize()
    {
        try
        {
            NativeLibraryResolver.Load(LibraryNames.Cuda);
        }
        catch (CudaUnavailableException e)
        {
            return new State(0, e.Message, e);
        }
        int result = CudaDriver.cuInit(0);
        if (result != CudaDriver.Success)
        {
            CudaException error = Check.CudaError("cuInit", result);
            return new State(0, $"The CUDA driver loaded but cannot be used: {error.Message}", error);
        }
        int count;
        result = CudaDriver.cuDeviceGetCount(&count);
        if (result != CudaDriver.Success)
        {
            CudaException error = Check.CudaError("cuDeviceGetCount", result);
            return new State(0, $"The CUDA driver cannot count devices: {error.Message}", error);
        }
        if (count == 0) return new State(0, "The CUDA driver found no device.", null);
        int version;
        result = CudaDriver.cuDriverGetVersion(&version);
        return new State(count, null, null, result == CudaDriver.Success ? version : 0);
    }
}
