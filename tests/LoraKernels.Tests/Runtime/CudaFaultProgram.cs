using LoraKernels.Runtime;

namespace LoraKernels.Tests.Runtime;

/// <summary>
/// The child process of CudaHealthTests' GPU test: with SynchronizeEveryLaunch on, launches
/// lk_ew_fill_f32 on an address no allocation owns, so the kernel faults with an illegal address,
/// then checks that the failure names the kernel, that the device reports itself lost, and that
/// a later call is refused with the same exception. Exit 0 when all hold.
/// </summary>
internal static class CudaFaultProgram
{
    public const string Command = "cuda-fault";

    public static int Run()
    {
        var cuda = (CudaDevice)Device.Cuda();
        cuda.SynchronizeEveryLaunch = true;
        const ulong unmapped = 0x10_0000;  // the driver maps nothing at 1 MiB
        CudaDeviceLostException lost;
        try
        {
            using var args = new KernelArguments().ULong(unmapped).Float(1f).Long(1 << 20);
            cuda.KernelDevice.Launch("lk_ew_fill_f32", new Dim3(64), new Dim3(256), 0, args);
            Console.WriteLine("FAIL: the launch on an unmapped address did not fail");
            return 1;
        }
        catch (CudaDeviceLostException e)
        {
            lost = e;
        }
        Console.WriteLine($"lost: {lost.Message}");
        bool named = lost.Message.Contains("lk_ew_fill_f32", StringComparison.Ordinal);
        bool reported = !cuda.IsUsable && ReferenceEquals(cuda.LostReason, lost);
        bool refused;
        try
        {
            cuda.Synchronize();
            refused = false;
        }
        catch (CudaDeviceLostException later)
        {
            refused = ReferenceEquals(later, lost);
        }
        Console.WriteLine($"named: {named}, reported: {reported}, later call refused: {refused}");
        return named && reported && refused ? 0 : 1;
    }
}
