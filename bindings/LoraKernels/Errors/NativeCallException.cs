// A call into libloraknl_cpu or libloraknl_simt returned a failing lk_status. Carries the
// function, the status and the library's last-error text (which kernel, which block, what).
namespace LoraKernels;

public sealed class NativeCallException : LoraKernelsException
{
    public NativeCallException(string function, int status, string statusName, string nativeMessage)
        : base($"{function} failed with {statusName} ({status}): {(nativeMessage.Length > 0 ? nativeMessage : "no message")}")
    {
        Function = function;
        Status = status;
        StatusName = statusName;
        NativeMessage = nativeMessage;
    }

    /// <summary>The native entry point, e.g. <c>lk_cpu_lora_forward</c>.</summary>
    public string Function { get; }

    /// <summary>The <c>lk_status</c> value.</summary>
    public int Status { get; }

    /// <summary>The status' name from <c>lk_status_name</c>, e.g. <c>LK_ERR_KERNEL_FAULT</c>.</summary>
    public string StatusName { get; }

    /// <summary>The text of <c>lk_cpu_last_error</c> / <c>lk_simt_last_error</c> for this call.</summary>
    public string NativeMessage { get; }
}
