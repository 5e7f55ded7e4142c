using LoraKernels.Autograd;
using LoraKernels.Layers;
using LoraKernels.Optim;

namespace LoraKernels.Tests.Optim;

/// <summary>
/// Paged optimizer state: on the CPU in memory-mapped files updated in place a window at a time, under the
/// emulator in pinned host memory moved through two staging buffers (the CUDA code path). Paged and resident
/// runs give the same bits; the state's memory is reported where it lives; and on the CPU the resident set
/// stays within the RAM budget (a child process, PagedMemoryProgram).
/// </summary>
[TestFixture]
public sealed class PagedStateTests
{
    // The smallest window: 64 KiB, so every parameter above a few thousand elements is cut into several chunks
    // and the chunks cross parameters; 8-bit chunks fall on 256-element blocks.
    private static readonly StatePaging SmallWindow = new(StatePaging.MinimumWorkingBytes);

    private static readonly (string, int, DType)[] Shapes =
        [("p1", 1, DType.F32), ("p30011", 30011, DType.F32), ("bf16_9001", 9001, DType.BF16), ("p300", 300, DType.F32), ("p4099", 4099, DType.F32)];

    public static IEnumerable<TestCaseData> Cases() =>
        from kind in new[] { DeviceKind.Cpu, DeviceKind.Simt }
        from optimizer in new[] { "AdamW", "AdamW8bit" }
        select new TestCaseData(kind, optimizer).SetName($"{optimizer}_{kind}");

    private static Optimizer Create(string name, IEnumerable<ParameterGroup> groups, StatePaging? paging) => name == "AdamW"
        ? new AdamW(groups, paging: paging)
        : new AdamW8bit(groups, paging: paging);

    [TestCaseSource(nameof(Cases))]
    public void PagedEqualsResidentBitForBit(DeviceKind kind, string name)
    {
        Device device = OptimizerProblem.On(kind);
        using var resident = new OptimizerProblem(device, "Paged", Shapes);
        using var paged = new OptimizerProblem(device, "Paged", Shapes);
        using Optimizer a = Create(name, resident.TwoGroups(1e-2f), null);
        using Optimizer b = Create(name, paged.TwoGroups(1e-2f), SmallWindow);
        a.MaxGradNorm = b.MaxGradNorm = 20f;
        resident.Train(a, 1, 4);
        paged.Train(b, 1, 4);
        OptimizerProblem.ExpectSameBits($"{name} {kind} paged vs resident", resident.Values(), paged.Values());
        for (int i = 0; i < Shapes.Length; i++)
        {
            Assert.That(a.State.TryGet(resident.Parameters[i], out ParameterState residentState), Is.True);
            foreach (StateBuffer buffer in residentState.Buffers)
                Assert.That(AdamW8bitTests.Download(b, paged.Parameters[i], buffer.Name), Is.EqualTo(AdamW8bitTests.Download(a, resident.Parameters[i], buffer.Name)),
                            $"{Shapes[i].Item1}/{buffer.Name}: the same state bytes");
        }
        Assert.That(resident.Values()[1], Is.Not.EqualTo(resident.Initial[1]), "the parameters moved");

        // Where the state lives, measured: all of it paged, none resident; the staging buffers (emulator) within the window.
        MemoryKind expectedKind = kind == DeviceKind.Cpu ? MemoryKind.MappedFile : MemoryKind.PinnedHost;
        Assert.That(b.State.All.SelectMany(s => s.Buffers).Select(s => s.Buffer.Kind).Distinct(), Is.EqualTo(new[] { expectedKind }));
        IReadOnlyList<OptimizerGroupMemory> residentMemory = MemoryReport.Of(a), pagedMemory = MemoryReport.Of(b);
        for (int g = 0; g < 2; g++)
        {
            Assert.That(pagedMemory[g].ResidentBytes, Is.Zero);
            Assert.That(pagedMemory[g].PagedBytes, Is.EqualTo(residentMemory[g].ResidentBytes).And.GreaterThan(0), $"group {g}");
            Assert.That(residentMemory[g].PagedBytes, Is.Zero);
        }
        Assert.That(b.WorkingBytes, Is.InRange(1, SmallWindow.WorkingBytes),
                    kind == DeviceKind.Simt ? "two staging buffers within the window" : "the CPU's one window within the budget");
        Assert.That(a.WorkingBytes, Is.Zero);
    }

    // A layer's report puts paged state apart from the device's memory.
    [Test]
    public void LayerReportSeparatesPagedState_Cpu()
    {
        using var w0 = Tensor.FromArray(Device.Cpu, new TestData(5).NonZero(64 * 48), 64, 48);
        using var layer = new LoraLinear(Device.Cpu, w0, null, 4, 8f);
        using var optimizer = new AdamW(layer.Parameters(), paging: SmallWindow);
        foreach (Parameter p in layer.Parameters()) p.Grad = Tensor.FromArray(Device.Cpu, new TestData(6).NonZero((int)p.Value.ElementCount), [.. p.Value.Shape]);
        optimizer.Step();
        MemoryReport report = MemoryReport.Of(layer, optimizer);
        long state = 8L * (4 * 48 + 64 * 4);
        Assert.That(report.OptimizerPagedBytes, Is.EqualTo(state), "AdamW: 8 bytes an element, measured");
        Assert.That(report.OptimizerStateBytes, Is.Zero);
        Assert.That(report.TotalBytes, Is.EqualTo(report.BaseWeightBytes + report.AdapterBytes + report.GradientBytes));
    }

    // The CPU bound: with a RAM budget of a quarter of the state, the step's peak resident set grows by at
    // most the budget (plus slack for the runtime), while the resident optimizer's grows by the whole state.
    [Test]
    public void CpuPagedStepStaysWithinItsRamBudget()
    {
        if (!File.Exists("/proc/self/clear_refs")) Assert.Ignore("the peak resident set needs /proc (Linux)");
        (int code, string output, string errors) = ChildProgram.Run(ChildProgram.StartInfo("paged-memory"), TimeSpan.FromMinutes(5));
        TestContext.Progress.WriteLine(output.Trim());
        Assert.That(code, Is.EqualTo(0), $"paged-memory failed:\n{output}\n{errors}");
    }
}
