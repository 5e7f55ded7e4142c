using LoraKernels.Autograd;
using LoraKernels.Layers;
using LoraKernels.Optim;

namespace LoraKernels.Tests.Api;

/// <summary>After every object is disposed, a device's live allocations are back where they started.</summary>
[TestFixture(DeviceKind.Cpu)]
[TestFixture(DeviceKind.Simt)]
public sealed class LeakTests(DeviceKind kind)
{
    private Device Device => kind == DeviceKind.Cpu ? Device.Cpu : Device.Simt;

    [Test]
    public void OpsLayersTapeAndOptimizerFreeEverything()
    {
        Device device = Device;
        long allocationsBefore = device.LiveAllocations, bytesBefore = device.LiveBytes;
        long peak;
        var data = new TestData(7);
        const int m = 5, inFeatures = 24, outFeatures = 19, r = 4;
        {
            using var x = Tensor.FromArray(device, data.NonZero(m * inFeatures), m, inFeatures);
            using var target = Tensor.FromArray(device, data.NonZero(m * outFeatures), m, outFeatures);
            using var w0 = Tensor.FromArray(device, data.NonZero(outFeatures * inFeatures), outFeatures, inFeatures);
            using var layer = new LoraLinear(device, w0, bias: null, r, alpha: 8f, dropout: 0.1f, seed: 3);
            using var optimizer = new AdamW(layer.Parameters(), lr: 1e-2f);
            using var tape = new Tape();
            for (int step = 0; step < 2; step++)
            {
                tape.Reset();
                Variable y = tape.Relu(layer.Forward(tape, new Variable(x)));
                tape.MseLoss(y, target);
                tape.Backward();
                optimizer.Step();
                optimizer.ZeroGrad();
            }
            var (yPlain, u) = Lora.Forward(x, w0, null, layer.A.Value, layer.B.Value, layer.Scale, 0.1f, 3);
            using (yPlain)
            using (u)
            using (Tensor dy = yPlain.Clone())
            {
                var (dx, dA, dB) = Lora.Backward(x, w0, layer.A.Value, layer.B.Value, u, dy, layer.Scale);
                dx?.Dispose();
                dA?.Dispose();
                dB?.Dispose();
            }
            using var casted = Elementwise.Cast(x, DType.BF16);
            layer.Training = false;
            layer.Merge();
            using var merged = layer.Forward(x);
            layer.Unmerge();
            peak = device.LiveAllocations;
        }
        Assert.That(peak, Is.GreaterThan(allocationsBefore), "the test allocated (the counter counts)");
        Assert.That(device.LiveAllocations, Is.EqualTo(allocationsBefore), "live allocations after disposing everything");
        Assert.That(device.LiveBytes, Is.EqualTo(bytesBefore), "live bytes after disposing everything");
    }
}
