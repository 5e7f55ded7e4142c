namespace LoraKernels.Tests.Parity;

/// <summary>LoRA ops on the CPU kernels and on kernels/lora.cu under the SIMT emulator, each against the double-precision reference and against each other.</summary>
[TestFixture]
public sealed class LoraParityTests
{
    [TestCaseSource(typeof(LoraCaseSources), nameof(LoraCaseSources.Forward))]
    public void Forward(LoraCase c) => LoraParity.Forward(c, Device.Cpu, Device.Simt);

    [TestCaseSource(typeof(LoraCaseSources), nameof(LoraCaseSources.Backward))]
    public void Backward(LoraCase c) => LoraParity.Backward(c, LoraGradients.All, Device.Cpu, Device.Simt);

    [TestCaseSource(typeof(LoraCaseSources), nameof(LoraCaseSources.BackwardSingleOutput))]
    public void BackwardSingleOutput(LoraCase c, LoraGradients output) => LoraParity.Backward(c, output, Device.Cpu, Device.Simt);

    [TestCaseSource(typeof(LoraCaseSources), nameof(LoraCaseSources.Merge))]
    public void MergeUnmerge(LoraCase c) => LoraParity.MergeUnmerge(c, Device.Cpu, Device.Simt);
}
