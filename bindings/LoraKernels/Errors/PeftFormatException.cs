// A PEFT adapter (adapter_config.json and adapter_model.safetensors) that this library cannot use
// as it stands: a config field of the wrong type, a tensor key that is not PEFT's naming, a
// variant that this build does not have.
namespace LoraKernels;

public sealed class PeftFormatException(string path, string? key, string problem, Exception? innerException = null)
    : InvalidFileException(path, key, problem, innerException);
