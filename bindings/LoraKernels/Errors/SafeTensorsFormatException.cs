// A safetensors file (or the bytes about to be written as one) breaks the format: the header
// length, its JSON, a tensor's dtype, shape or offsets. Raised before any tensor byte is used.
namespace LoraKernels;

public sealed class SafeTensorsFormatException(string path, string? key, string problem, Exception? innerException = null)
    : InvalidFileException(path, key, problem, innerException);
