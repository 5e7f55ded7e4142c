// A CUDA driver, NVRTC, cuBLAS or cuSOLVER call returned an error status. Names the call, the
// status code, its symbolic name and the library's description of it.
namespace LoraKernels;

public enum CudaLibrary { Driver, Nvrtc, Cublas, Cusolver }

public class CudaException : LoraKernelsException
{
    public CudaException(CudaLibrary library, string function, int status, string statusName, string description)
        : base(FormatMessage(function, status, statusName, description))
    {
        Library = library;
        Function = function;
        Status = status;
        StatusName = statusName;
        Description = description;
    }

    protected CudaException(CudaLibrary library, string function, int status, string statusName, string description, string message)
        : base(message)
    {
        Library = library;
        Function = function;
        Status = status;
        StatusName = statusName;
        Description = description;
    }

    public CudaLibrary Library { get; }

    /// <summary>The API call that failed, e.g. <c>cuModuleLoadData</c>.</summary>
    public string Function { get; }

    /// <summary>The numeric status (<c>CUresult</c>, <c>nvrtcResult</c>, <c>cublasStatus_t</c>, <c>cusolverStatus_t</c>).</summary>
    public int Status { get; }

    /// <summary>The status' symbolic name, e.g. <c>CUDA_ERROR_OUT_OF_MEMORY</c>.</summary>
    public string StatusName { get; }

    public string Description { get; }

    private static string FormatMessage(string function, int status, string statusName, string description) =>
        description.Length > 0 && description != statusName
            ? $"{function} failed with {statusName} ({status}): {description}"
            : $"{function} failed with {statusName} ({status})";
}
