using LoraKernels.Runtime;

namespace LoraKernels.Tests.Runtime;

/// <summary>
/// On a GPU whose driver has memory pools (CUDA 11.2+, every H100/H200 driver), buffers come from the
/// stream-ordered pool, and a buffer freed while its kernel is still queued keeps its contents for
/// that kernel while a new buffer of the same size (reusing the pool's memory in stream order) gets its own.
/// </summary>
[TestFixture]
[Category("Cuda")]
public sealed class CudaAllocationTests
{
    [Test]
    public void TemporariesComeFromTheStreamOrderedPoolAndFreesKeepStreamOrder()
    {
        var cuda = (CudaDevice)Devices.CudaOrIgnore();
        TestContext.Out.WriteLine($"driver {CudaDevice.DriverVersion}, stream-ordered allocation: {cuda.StreamOrderedAllocation}");
        if (CudaDevice.DriverVersion >= 11020) Assert.That(cuda.StreamOrderedAllocation, Is.True, "a CUDA 11.2+ driver with memory pools");

        const int n = 1 << 22;  // 16 MiB of fp32: long enough that the frees below are queued behind running fills
        long before = cuda.LiveAllocations;
        var results = new float[8][];
        for (int round = 0; round < results.Length; round++)
        {
            using var target = Tensor.Zeros(cuda, DType.F32, n);
            var source = Tensor.Zeros(cuda, DType.F32, n);
            Elementwise.Fill(source, round + 1);
            Elementwise.Axpy(2f, source, target);  // queued behind the fill
            source.Dispose();                      // freed in stream order, after the axpy reads it
            using var reuse = Tensor.Zeros(cuda, DType.F32, n);  // may get source's memory back from the pool
            Elementwise.Fill(reuse, -1f);          // must not reach the axpy's input
            results[round] = target.ToArray();
        }
        for (int round = 0; round < results.Length; round++)
            Assert.That(results[round], Is.All.EqualTo(2f * (round + 1)), $"round {round}");
        Assert.That(cuda.LiveAllocations, Is.EqualTo(before), "every buffer went back");
    }
}
