namespace LoraKernels.Tests.Parity;

/// <summary>Element-wise ops, the MSE loss, casts and AdamW on the CPU kernels and under the SIMT emulator.</summary>
[TestFixture]
public sealed class ElementwiseParityTests
{
    // ReLU, axpy and the loss are fp32 ops (kernels/elementwise.cu); BF16 is rejected (BadInputTests).
    public static IEnumerable<TestCaseData> Relu() => ElementwiseParity.Cases("Relu", bf16: false);
    public static IEnumerable<TestCaseData> ReluBackward() => ElementwiseParity.Cases("ReluBackward", bf16: false);
    public static IEnumerable<TestCaseData> Axpy() => ElementwiseParity.Cases("Axpy", bf16: false);
    public static IEnumerable<TestCaseData> MseLoss() => ElementwiseParity.Cases("MseLoss", bf16: false);
    public static IEnumerable<TestCaseData> Cast() => ElementwiseParity.Cases("Cast", bf16: false);
    public static IEnumerable<TestCaseData> Fill() => ElementwiseParity.Cases("Fill");
    public static IEnumerable<TestCaseData> AdamW() => ElementwiseParity.Cases("AdamW");
    public static IEnumerable<TestCaseData> FirstNonFinite() => ElementwiseParity.Cases("FirstNonFinite");

    [TestCaseSource(nameof(Relu))]
    public void ReluMatches(ElementwiseCase c) => ElementwiseParity.Relu(c, Device.Cpu, Device.Simt);

    [TestCaseSource(nameof(ReluBackward))]
    public void ReluBackwardMatches(ElementwiseCase c) => ElementwiseParity.ReluBackward(c, Device.Cpu, Device.Simt);

    [TestCaseSource(nameof(Axpy))]
    public void AxpyMatches(ElementwiseCase c) => ElementwiseParity.Axpy(c, Device.Cpu, Device.Simt);

    [TestCaseSource(nameof(MseLoss))]
    public void MseLossMatches(ElementwiseCase c) => ElementwiseParity.MseLoss(c, Device.Cpu, Device.Simt);

    [TestCaseSource(nameof(Cast))]
    public void CastMatches(ElementwiseCase c) => ElementwiseParity.Cast(c, Device.Cpu, Device.Simt);

    [TestCaseSource(nameof(Fill))]
    public void FillMatches(ElementwiseCase c) => ElementwiseParity.Fill(c, Device.Cpu, Device.Simt);

    [TestCaseSource(nameof(FirstNonFinite))]
    public void FirstNonFiniteMatches(ElementwiseCase c) => ElementwiseParity.FirstNonFinite(c, Device.Cpu, Device.Simt);

    [TestCaseSource(nameof(AdamW))]
    public void AdamWMatches(ElementwiseCase c) => OptimizerParity.AdamW(c, Device.Cpu, Device.Simt);
}
