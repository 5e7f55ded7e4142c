using System.Text;
using System.Text.Json.Nodes;
using LoraKernels.Autograd;
using LoraKernels.Layers;
using LoraKernels.Optim;
using LoraKernels.Tests.IO;

namespace LoraKernels.Tests.Optim;

/// <summary>
/// Checkpoints: a resumed run takes the same next steps, bit for bit, as one that never stopped (AdamW and 8-bit
/// AdamW, with groups, clipping, a schedule and a BF16 parameter; paged and resident state read each other's); a
/// save that fails between any two files leaves the previous checkpoint current and loadable; truncated, corrupt
/// and mismatched checkpoints are refused with errors that name the file and what is wrong.
/// </summary>
[TestFixture]
[NonParallelizable]
public sealed class CheckpointTests
{
    private const int Total = 8, Saved = 3;

    public static IEnumerable<TestCaseData> ResumeCases() =>
        from kind in new[] { DeviceKind.Cpu, DeviceKind.Simt }
        from name in new[] { "AdamW", "AdamW8bit" }
        select new TestCaseData(kind, name).SetName($"{name}_{kind}");


    /// <summary>An optimizer with every setting a checkpoint restores: two groups, clipping, cosine warm-up schedule.</summary>
    private static Optimizer Create(string name, OptimizerProblem problem, StatePaging? paging = null)
    {
        Optimizer optimizer = name == "AdamW"
            ? new AdamW(problem.TwoGroups(1e-2f), paging: paging)
            : new AdamW8bit(problem.TwoGroups(1e-2f), minimum8bitSize: 1000, paging: paging);
        optimizer.MaxGradNorm = 30f;
        optimizer.Schedule = LearningRateSchedule.Cosine(totalSteps: Total, warmupSteps: 2, minimumFactor: 0.1);
        return optimizer;
    }

    [TestCaseSource(nameof(ResumeCases))]
    public void ResumingTakesTheSameStepsAsNeverStopping(DeviceKind kind, string name)
    {
        Device device = OptimizerProblem.On(kind);
        using var folder = SafeTensorsFiles.NewFolder("resume");
        using var straight = new OptimizerProblem(device, "Resume");
        using (Optimizer optimizer = Create(name, straight)) straight.Train(optimizer, 1, Total);

        using (var first = new OptimizerProblem(device, "Resume"))
        using (Optimizer optimizer = Create(name, first, new StatePaging(StatePaging.MinimumWorkingBytes)))
        {
            first.Train(optimizer, 1, Saved);
            Checkpoint.Save(folder.Path, first.Named, optimizer, metadata: new Dictionary<string, string> { ["run"] = "resume-test" });
            first.Train(optimizer, Saved + 1, Saved + 2);  // steps after the save do not reach the checkpoint
        }

        // A fresh process's view: new parameters at their initial values, a new optimizer without the settings.
        using var resumed = new OptimizerProblem(device, "Resume");
        Optimizer fresh = name == "AdamW"
            ? new AdamW([new ParameterGroup("slow", resumed.Parameters.Take(2), 1f, 0.1f), new ParameterGroup("fast", resumed.Parameters.Skip(2), 1f, 0f)])
            : new AdamW8bit([new ParameterGroup("slow", resumed.Parameters.Take(2), 1f, 0.1f), new ParameterGroup("fast", resumed.Parameters.Skip(2), 1f, 0f)],
                            minimum8bitSize: 1000);
        using (fresh)
        {
            CheckpointInfo info = Checkpoint.Load(folder.Path, resumed.Named, fresh);
            Assert.That(info.StepCount, Is.EqualTo(Saved));
            Assert.That(info.Metadata["run"], Is.EqualTo("resume-test"));
            Assert.That(fresh.StepCount, Is.EqualTo(Saved));
            Assert.That(fresh.Schedule?.Kind, Is.EqualTo("cosine"));
            Assert.That(fresh.MaxGradNorm, Is.EqualTo(30f));
            Assert.That(fresh.Groups[1].LearningRate, Is.EqualTo(4e-2f));
            Assert.That(fresh.Paging, Is.Null, "paged state restores into a resident optimizer");
            resumed.Train(fresh, Saved + 1, Total);
        }
        OptimizerProblem.ExpectSameBits($"{name} {kind}: resumed at step {Saved} vs never stopped", straight.Values(), resumed.Values());
    }

    // Real training through the tape: two LoRA layers named by module path, a save after 4 steps, new layers and a
    // new optimizer loaded from it, and the next 4 steps equal those of the run that went on.
    [Test]
    public void LayersResumeThroughTheTape_Cpu()
    {
        using var folder = SafeTensorsFiles.NewFolder("resume-layers");
        var data = new TestData(77);
        float[] w1 = data.NonZero(24 * 16, 0.25f), w2 = data.NonZero(8 * 24, 0.25f);
        float[][] batches = Enumerable.Range(0, 8).Select(_ => data.NonZero(5 * 16)).ToArray();
        float[][] targets = Enumerable.Range(0, 8).Select(_ => data.NonZero(5 * 8)).ToArray();

        (Dictionary<string, IAdapterLayer> Layers, AdamW Optimizer) Build()
        {
            using var t1 = Tensor.FromArray(Device.Cpu, w1, 24, 16);
            using var t2 = Tensor.FromArray(Device.Cpu, w2, 8, 24);
            var layers = new Dictionary<string, IAdapterLayer>
            {
                ["mlp.up"] = new LoraLinear(Device.Cpu, t1, null, 4, 8f, seed: 1),
                ["mlp.down"] = new LoraLinear(Device.Cpu, t2, null, 4, 8f, seed: 2, dtype: DType.BF16),
            };
            AdamW optimizer = LoraPlus.CreateOptimizer(layers.Values, 1e-2f, weightDecay: 0.01f);
            optimizer.Schedule = LearningRateSchedule.Linear(totalSteps: 8, warmupSteps: 1);
            return (layers, optimizer);
        }
        void Train((Dictionary<string, IAdapterLayer> Layers, AdamW Optimizer) run, int from, int to)
        {
            using var tape = new Tape();
            for (int s = from; s < to; s++)
            {
                tape.Reset();
                using var x = Tensor.FromArray(Device.Cpu, batches[s], 5, 16);
                using var target = Tensor.FromArray(Device.Cpu, targets[s], 5, 8);
                Variable hidden = tape.Relu(run.Layers["mlp.up"].Forward(tape, new Variable(x)));
                tape.MseLoss(tape.Cast(run.Layers["mlp.down"].Forward(tape, tape.Cast(hidden, DType.BF16)), DType.F32), target);
                tape.Backward();
                run.Optimizer.Step();
                run.Optimizer.ZeroGrad();
            }
        }
        void Dispose((Dictionary<string, IAdapterLayer> Layers, AdamW Optimizer) run)
        {
            run.Optimizer.Dispose();
            foreach (IAdapterLayer layer in run.Layers.Values) layer.Dispose();
        }

        var straight = Build();
        var first = Build();
        var resumed = Build();
        try
        {
            Train(straight, 0, 8);
            Train(first, 0, 4);
            Checkpoint.Save(folder.Path, Checkpoint.NamedParameters(first.Layers), first.Optimizer);
            Checkpoint.Load(folder.Path, Checkpoint.NamedParameters(resumed.Layers), resumed.Optimizer);
            Train(resumed, 4, 8);
            foreach (var (path, layer) in straight.Layers)
            {
                float[][] expected = layer.Parameters().Select(p => p.Value.ToArray()).ToArray();
                float[][] actual = resumed.Layers[path].Parameters().Select(p => p.Value.ToArray()).ToArray();
                OptimizerProblem.ExpectSameBits($"{path} resumed", expected, actual);
            }
            Assert.That(Checkpoint.NamedParameters(resumed.Layers).Keys, Does.Contain("mlp.up.lora_A").And.Contain("mlp.down.lora_B"));
        }
        finally
        {
            Dispose(straight);
            Dispose(first);
            Dispose(resumed);
        }
    }

    public static IEnumerable<TestCaseData> FailurePoints() =>
        new[] { Checkpoint.AdapterFile, Checkpoint.OptimizerFile, Checkpoint.ManifestFile, "folder" }.Select(f => new TestCaseData(f).SetName($"FailAfter_{f}"));

    [TestCaseSource(nameof(FailurePoints))]
    public void ASaveThatFailsLeavesThePreviousCheckpointLoadable(string failAfter)
    {
        using var folder = SafeTensorsFiles.NewFolder("interrupted");
        using var problem = new OptimizerProblem(Device.Cpu, "Interrupted");
        using var optimizer = new AdamW(problem.TwoGroups(1e-2f));
        problem.Train(optimizer, 1, 2);
        string first = Checkpoint.Save(folder.Path, problem.Named, optimizer);
        float[][] atFirst = problem.Values();
        problem.Train(optimizer, 3, 4);

        Checkpoint.AfterWrite = written =>
        {
            if (written == failAfter || (failAfter == "folder" && written.StartsWith("step-", StringComparison.Ordinal)))
                throw new IOException($"simulated crash after {written}");
        };
        try
        {
            Assert.That(() => Checkpoint.Save(folder.Path, problem.Named, optimizer), Throws.InstanceOf<IOException>().With.Message.Contains("simulated crash"));
        }
        finally
        {
            Checkpoint.AfterWrite = null;
        }
        Assert.That(File.ReadAllText(Path.Combine(folder.Path, Checkpoint.PointerFile)).Trim(), Is.EqualTo(Path.GetFileName(first)), "LATEST still names the first checkpoint");

        using var reloaded = new OptimizerProblem(Device.Cpu, "Other");
        using var fresh = new AdamW([new ParameterGroup("slow", reloaded.Parameters.Take(2), 1f, 0.1f), new ParameterGroup("fast", reloaded.Parameters.Skip(2), 1f, 0f)]);
        Assert.That(Checkpoint.Load(folder.Path, reloaded.Named, fresh).StepCount, Is.EqualTo(2));
        OptimizerProblem.ExpectSameBits("the previous checkpoint's parameters", atFirst, reloaded.Values());

        // The next save succeeds and cleans up what the failed one left.
        string next = Checkpoint.Save(folder.Path, problem.Named, optimizer);
        Assert.That(Directory.GetDirectories(folder.Path).Select(Path.GetFileName).Where(n => n!.StartsWith('.')), Is.Empty, "no partial folder is left");
        Assert.That(File.ReadAllText(Path.Combine(folder.Path, Checkpoint.PointerFile)).Trim(), Is.EqualTo(Path.GetFileName(next)));
    }

    [Test]
    public void OldCheckpointsArePrunedToKeep()
    {
        using var folder = SafeTensorsFiles.NewFolder("prune");
        using var problem = new OptimizerProblem(Device.Cpu, "Prune");
        using var optimizer = new AdamW(problem.Parameters, 1e-2f);
        var saved = new List<string>();
        for (int step = 1; step <= 4; step++)
        {
            problem.Train(optimizer, step, step);
            saved.Add(Path.GetFileName(Checkpoint.Save(folder.Path, problem.Named, optimizer, keep: 2)));
        }
        saved.Add(Path.GetFileName(Checkpoint.Save(folder.Path, problem.Named, optimizer, keep: 2)));  // the same step again
        Assert.That(saved[^1], Is.EqualTo("step-0000000004.1"), "a second save of one step gets a suffix");
        Assert.That(Directory.GetDirectories(folder.Path).Select(Path.GetFileName).Order(), Is.EqualTo(new[] { "step-0000000004", "step-0000000004.1" }));
    }

    public static IEnumerable<TestCaseData> Damage() =>
    [
        new TestCaseData(Checkpoint.OptimizerFile, "flip", "SHA-256").SetName("CorruptOptimizerState"),
        new TestCaseData(Checkpoint.AdapterFile, "flip", "SHA-256").SetName("CorruptAdapter"),
        new TestCaseData(Checkpoint.AdapterFile, "truncate", "truncated").SetName("TruncatedAdapter"),
        new TestCaseData(Checkpoint.OptimizerFile, "delete", "missing").SetName("MissingOptimizerState"),
        new TestCaseData(Checkpoint.ManifestFile, "truncate", "not valid JSON").SetName("TruncatedManifest"),
        new TestCaseData(Checkpoint.ManifestFile, "drop step_count", "\"step_count\": is missing").SetName("ManifestWithoutStepCount"),
        new TestCaseData(Checkpoint.ManifestFile, "negative skipped_steps", "\"skipped_steps\": is -1, not an integer >= 0").SetName("ManifestNegativeCount"),
        new TestCaseData(Checkpoint.PointerFile, "delete", "no checkpoint here").SetName("MissingPointer"),
        new TestCaseData(Checkpoint.PointerFile, "garbage", "not a checkpoint folder").SetName("PointerToNothing"),
    ];

    [TestCaseSource(nameof(Damage))]
    public void DamagedCheckpointsAreRefusedByName(string file, string damage, string message)
    {
        using var folder = SafeTensorsFiles.NewFolder("damaged");
        using var problem = new OptimizerProblem(Device.Cpu, "Damaged");
        using var optimizer = new AdamW(problem.Parameters, 1e-2f);
        problem.Train(optimizer, 1, 2);
        string saved = Checkpoint.Save(folder.Path, problem.Named, optimizer);
        string path = file == Checkpoint.PointerFile ? Path.Combine(folder.Path, file) : Path.Combine(saved, file);
        byte[] bytes = File.Exists(path) ? File.ReadAllBytes(path) : [];
        switch (damage)
        {
            case "flip":
                bytes[bytes.Length - 3] ^= 0x40;
                File.WriteAllBytes(path, bytes);
                break;
            case "truncate":
                File.WriteAllBytes(path, bytes[..(bytes.Length / 2)]);
                break;
            case "delete":
                File.Delete(path);
                break;
            case "garbage":
                File.WriteAllText(path, "../../etc\n");
                break;
            default:
                JsonNode manifest = JsonNode.Parse(bytes)!;
                if (damage == "drop step_count") manifest.AsObject().Remove("step_count");
                else manifest["skipped_steps"] = -1;
                File.WriteAllText(path, manifest.ToJsonString());
                break;
        }
        float[][] before = problem.Values();
        Assert.That(() => Checkpoint.Load(folder.Path, problem.Named, optimizer),
                    Throws.InstanceOf<InvalidFileException>().With.Message.Contains(message).And.Message.Contains(file));
        OptimizerProblem.ExpectSameBits("a refused load changes nothing", before, problem.Values());
        Assert.That(optimizer.StepCount, Is.EqualTo(2));
    }

    [Test]
    public void MismatchedOptimizersAndParametersAreRefused()
    {
        using var folder = SafeTensorsFiles.NewFolder("mismatch");
        using var problem = new OptimizerProblem(Device.Cpu, "Mismatch");
        using var optimizer = new AdamW(problem.Parameters, 1e-2f);
        problem.Train(optimizer, 1, 1);
        Checkpoint.Save(folder.Path, problem.Named, optimizer);

        using var other = new OptimizerProblem(Device.Cpu, "Mismatch");
        using (var eightBit = new AdamW8bit(other.Parameters))
            Assert.That(() => Checkpoint.Load(folder.Path, other.Named, eightBit),
                        Throws.ArgumentException.With.Message.Contains("holds AdamW state; the optimizer is AdamW8bit"));
        using (var betas = new AdamW(other.Parameters, beta2: 0.99f))
            Assert.That(() => Checkpoint.Load(folder.Path, other.Named, betas), Throws.ArgumentException.With.Message.Contains("beta2"));
        (string, int, DType)[] shapes = [.. OptimizerProblem.DefaultShapes.Select(s => s.Name == "p251" ? (s.Name, 250, s.DType) : s)];
        using var reshaped = new OptimizerProblem(Device.Cpu, "Mismatch", shapes);
        using (var adam = new AdamW(reshaped.Parameters))
            Assert.That(() => Checkpoint.Load(folder.Path, reshaped.Named, adam), Throws.ArgumentException.With.Message.Contains("p251 is F32[251]"));

        Assert.That(() => Checkpoint.Save(folder.Path, new Dictionary<string, Parameter> { ["p1"] = problem.Parameters[0] }, optimizer),
                    Throws.ArgumentException.With.Message.Contains("p251").And.Message.Contains("has no name"));
        optimizer.AccumulationSteps = 2;
        problem.SetGradients(problem.Gradients(2));
        optimizer.Step();
        Assert.That(() => Checkpoint.Save(folder.Path, problem.Named, optimizer),
                    Throws.InvalidOperationException.With.Message.Contains("accumulated"));
    }
}
