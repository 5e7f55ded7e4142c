// The one place where a native status becomes an exception (STYLE.md lesson 4), one helper per
// library. Each names the failing call: pass the call itself and its name is taken from the
// expression (`Check.Cpu(NativeCpu.lk_cpu_axpy(...))` reports lk_cpu_axpy), or pass the name.
using System.Runtime.CompilerServices;

namespace LoraKernels.Interop;

internal static unsafe class Check
{
    /// <summary>Throws <see cref="NativeCallException"/> when a libloraknl_cpu call failed.</summary>
    public static void Cpu(int status, [CallerArgumentExpression(nameof(status))] string call = "")
    {
        if (status == 0) return;
        throw new NativeCallException(FunctionName(call), status, Utf8.Read(NativeCpu.lk_status_name(status)) ?? "LK_ERR_UNKNOWN",
                                      LastError(&NativeCpu.lk_cpu_last_error));
    }

    /// <summary>Throws <see cref="NativeCallException"/> when a libloraknl_simt call failed.</summary>
    public static void Simt(int status, [CallerArgumentExpression(nameof(status))] string call = "")
    {
        if (status == 0) return;
        throw new NativeCallException(FunctionName(call), status, Utf8.Read(NativeSimt.lk_status_name(status)) ?? "LK_ERR_UNKNOWN",
                                      LastError(&NativeSimt.lk_simt_last_error));
    }

    /// <summary>Throws <see cref="CudaException"/> when a CUDA driver call failed.</summary>
    public static void Cuda(int result, [CallerArgumentExpression(nameof(result))] string call = "")
    {
        if (result == CudaDriver.Success) return;
        throw CudaError(FunctionName(call), result);
    }

    public static CudaException CudaError(string function, int result)
    {
        byte* name = null, description = null;
        // Both lookups fail only for a code the driver does not know; the number still reaches the message.
        CudaDriver.cuGetErrorName(result, &name);
        CudaDriver.cuGetErrorString(result, &description);
        return new CudaException(CudaLibrary.Driver, function, result, Utf8.Read(name) ?? "CUDA_ERROR_UNKNOWN", Utf8.Read(description) ?? "");
    }

    /// <summary>Throws <see cref="CudaException"/> when an NVRTC call failed.</summary>
    public static void Nvrtc(int result, [CallerArgumentExpression(nameof(result))] string call = "")
    {
        if (result == Interop.Nvrtc.Success) return;
        string name = NvrtcStatusName(result);
        throw new CudaException(CudaLibrary.Nvrtc, FunctionName(call), result, name, name);
    }

    public static string NvrtcStatusName(int result) => Utf8.Read(Interop.Nvrtc.nvrtcGetErrorString(result)) ?? "NVRTC_ERROR_UNKNOWN";

    /// <summary>Throws <see cref="CudaException"/> when a cuBLAS call failed.</summary>
    public static void Cublas(int status, [CallerArgumentExpression(nameof(status))] string call = "")
    {
        if (status == Interop.Cublas.Success) return;
        throw new CudaException(CudaLibrary.Cublas, FunctionName(call), status, Interop.Cublas.StatusName(status),
                                Interop.Cublas.StatusString(status) ?? "");
    }

    /// <summary>Throws <see cref="CudaException"/> when a cuSOLVER call failed.</summary>
    public static void Cusolver(int status, [CallerArgumentExpression(nameof(status))] string call = "")
    {
        if (status == Interop.Cusolver.Success) return;
        string name = Interop.Cusolver.StatusName(status);
        throw new CudaException(CudaLibrary.Cusolver, FunctionName(call), status, name, "");
    }

    /// <summary>"NativeCpu.lk_cpu_axpy(n, alpha, x, y)" becomes "lk_cpu_axpy"; a bare name is kept.</summary>
    internal static string FunctionName(string call)
    {
        string head = call;
        int parenthesis = head.IndexOf('(');
        if (parenthesis >= 0) head = head[..parenthesis];
        head = head.Trim();
        int dot = head.LastIndexOf('.');
        if (dot >= 0) head = head[(dot + 1)..];
        head = head.Trim('"');
        return head.Length > 0 ? head : call;
    }

    private static string LastError(delegate*<byte*, long, long> lastError)
    {
        const int capacity = 2048;
        byte* buffer = stackalloc byte[capacity];
        long length = lastError(buffer, capacity);
        return length <= 0 ? "" : Utf8.Read(buffer) ?? "";
    }
}
