// NVRTC rejected a kernel family's source. The compile log (errors with file and line) is kept
// whole in Log and repeated in the message, since it is the only useful diagnosis.
namespace LoraKernels;

public sealed class NvrtcCompileException : CudaException
{
    public NvrtcCompileException(string family, string arch, IReadOnlyList<string> options, int status, string statusName, string log)
        : base(CudaLibrary.Nvrtc, "nvrtcCompileProgram", status, statusName, statusName,
               $"NVRTC could not compile kernel family '{family}' for {arch} ({statusName}; options: {string.Join(' ', options)}):\n{log}")
    {
        Family = family;
        Arch = arch;
        Log = log;
    }

    public string Family { get; }
    public string Arch { get; }

    /// <summary>NVRTC's program log.</summary>
    public string Log { get; }
}
