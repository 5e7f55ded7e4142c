// No usable CUDA: the driver library did not load (the message lists every path tried), cuInit
// failed, or there is no device. Callers that can fall back (Device.Select) catch this one type.
namespace LoraKernels;

public sealed class CudaUnavailableException : LoraKernelsException
{
    public CudaUnavailableException(string message) : base(message) { }
    public CudaUnavailableException(string message, Exception? innerException) : base(message, innerException) { }
}
