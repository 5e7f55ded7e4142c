using LoraKernels.Runtime;

namespace LoraKernels.Tests.Runtime;

/// <summary>
/// A CUDA device after a sticky error: the first such status marks it lost, every later call throws
/// CudaDeviceLostException naming the first failure and the kernel launched last, and ordinary errors
/// (out of memory, a bad value) leave it usable. The bookkeeping runs anywhere; the GPU test then
/// makes a kernel fault on purpose, in a child process so that the lost context cannot touch the
/// other tests' device.
/// </summary>
[TestFixture]
public sealed class CudaHealthTests
{
    private static CudaException Error(string function, int status, string name) =>
        new(CudaLibrary.Driver, function, status, name, "test");

    [TestCase(700, true, TestName = "Sticky_IllegalAddress")]
    [TestCase(719, true, TestName = "Sticky_LaunchFailed")]
    [TestCase(716, true, TestName = "Sticky_MisalignedAddress")]
    [TestCase(710, true, TestName = "Sticky_DeviceAssert")]
    [TestCase(2, false, TestName = "NotSticky_OutOfMemory")]
    [TestCase(1, false, TestName = "NotSticky_InvalidValue")]
    [TestCase(701, false, TestName = "NotSticky_LaunchOutOfResources")]
    public void ClassifiesStatuses(int status, bool sticky) => Assert.That(CudaHealth.IsSticky(status), Is.EqualTo(sticky));

    [Test]
    public void AnOrdinaryErrorLeavesTheDeviceUsable()
    {
        var health = new CudaHealth("cuda:0");
        CudaException oom = Error("cuMemAlloc", 2, "CUDA_ERROR_OUT_OF_MEMORY");
        Assert.That(health.Failed(oom), Is.SameAs(oom));
        Assert.That(health.Lost, Is.Null);
        Assert.DoesNotThrow(health.ThrowIfLost);
    }

    [Test]
    public void AStickyErrorLosesTheDeviceAndNamesTheFirstFailureAndTheLastKernel()
    {
        var health = new CudaHealth("cuda:3");
        health.Launched("lk_lora_forward_tiled_bf16 with grid 2x2x1");
        CudaException first = health.Failed(Error("cuMemcpyDtoH", 700, "CUDA_ERROR_ILLEGAL_ADDRESS"));

        var lost = (CudaDeviceLostException)first;
        Assert.That(lost.Message, Does.Contain("cuda:3 is unusable").And.Contain("cuMemcpyDtoH").And.Contain("CUDA_ERROR_ILLEGAL_ADDRESS")
                                      .And.Contain("lk_lora_forward_tiled_bf16").And.Contain("LORAKERNELS_SYNC_LAUNCHES=1"));
        Assert.That(lost.Status, Is.EqualTo(700));
        Assert.That(health.Lost, Is.SameAs(lost));
        Assert.That(Assert.Throws<CudaDeviceLostException>(health.ThrowIfLost), Is.SameAs(lost), "every later call throws the first failure");

        health.Launched("lk_ew_fill_f32");
        CudaException second = health.Failed(Error("cuStreamSynchronize", 719, "CUDA_ERROR_LAUNCH_FAILED"));
        Assert.That(second, Is.SameAs(lost), "a later sticky status does not replace the first");
    }

    [Test]
    [Category("Cuda")]
    public void AFaultingKernelIsNamedAndTheDeviceReportsItselfLost()
    {
        Devices.CudaOrIgnore();
        var (exitCode, output, errors) = ChildProgram.Run(ChildProgram.StartInfo(CudaFaultProgram.Command), TimeSpan.FromSeconds(120));
        TestContext.Out.WriteLine(output + errors);
        Assert.That(exitCode, Is.Zero, $"the child program's checks failed:\n{output}\n{errors}");
        Assert.That(output, Does.Contain("lk_ew_fill_f32").And.Contain("CUDA_ERROR_ILLEGAL_ADDRESS"));
    }
}
