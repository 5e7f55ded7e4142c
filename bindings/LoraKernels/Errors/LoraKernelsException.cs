// The base of every exception LoraKernels raises for a failure inside native code or the GPU
// stack, or for outside data it cannot read (InvalidFileException), so callers can catch these
// apart from their own argument errors.
namespace LoraKernels;

public class LoraKernelsException : Exception
{
    public LoraKernelsException(string message) : base(message) { }
    public LoraKernelsException(string message, Exception? innerException) : base(message, innerException) { }
}
