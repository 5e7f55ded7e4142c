using System.Diagnostics;
using System.Text.Json;

namespace LoraKernels.Tests.GpuBundle;

/// <summary>
/// The GPU bundle's Python side (benchmarks/gpu-bundle/peft_compare.py) on this machine: its --dry-run builds
/// the PEFT layer at a tiny shape on the CPU and checks imports, shapes and values where PyTorch and PEFT are
/// installed (skipped with the reason where not); its --merge, standard library only, joins the C# side's
/// lorakernels.json with a peft.json into one table, and says so when PEFT did not run. Then the C# side's
/// comparison program runs on the emulator (the same cases and CPU checks as on a GPU, at 96 x 80) and writes
/// the JSON the merge reads, and without a GPU it exits 2 saying why.
/// </summary>
[TestFixture]
public sealed class PeftCompareScriptTests
{
    private static string Script()
    {
        foreach (string start in new[] { AppContext.BaseDirectory, TestContext.CurrentContext.TestDirectory })
            for (DirectoryInfo? folder = new(start); folder is not null; folder = folder.Parent)
            {
                foreach (string candidate in new[] { Path.Combine(folder.FullName, "benchmarks", "gpu-bundle", "peft_compare.py"),
                                                     Path.Combine(folder.FullName, "peft_compare.py") })
                    if (File.Exists(candidate)) return candidate;
            }
        Assert.Fail("peft_compare.py not found above the test program");
        return "";
    }

    private static (int ExitCode, string Output) Python(params string[] arguments)
    {
        var start = new ProcessStartInfo("python3") { UseShellExecute = false, RedirectStandardOutput = true, RedirectStandardError = true };
        start.ArgumentList.Add(Script());
        foreach (string argument in arguments) start.ArgumentList.Add(argument);
        Process? process;
        try
        {
            process = Process.Start(start);
        }
        catch (System.ComponentModel.Win32Exception e)
        {
            Assert.Ignore($"python3 cannot be started here: {e.Message}");
            return (-1, "");
        }
        using Process running = process ?? throw new InvalidOperationException("python3 did not start");
        Task<string> output = running.StandardOutput.ReadToEndAsync(), errors = running.StandardError.ReadToEndAsync();
        if (!running.WaitForExit(TimeSpan.FromSeconds(120)))
        {
            running.Kill(entireProcessTree: true);
            Assert.Fail($"peft_compare.py {string.Join(' ', arguments)} did not finish in 120 s");
        }
        return (running.ExitCode, output.Result + errors.Result);
    }

    [Test]
    public void DryRunChecksImportsAndShapesWherePyTorchIsInstalled()
    {
        var (exitCode, output) = Python("--dry-run");
        TestContext.Out.WriteLine(output);
        if (exitCode == 3) Assert.Ignore($"PyTorch or PEFT is not installed here: {output.Trim()}");
        Assert.That(exitCode, Is.Zero, output);
        Assert.That(output, Does.Contain("dry run: ok"));
    }

    /// <summary>Runs <paramref name="body"/> with a fresh temporary folder, deleted afterwards.</summary>
    private static void InTemporaryFolder(Action<string> body)
    {
        string folder = Directory.CreateTempSubdirectory("lk-gpu-bundle").FullName;
        try
        {
            body(folder);
        }
        finally
        {
            Directory.Delete(folder, recursive: true);
        }
    }

    [Test]
    public void MergeJoinsBothSidesIntoOneTable() => InTemporaryFolder(folder =>
    {
        {
            File.WriteAllText(Path.Combine(folder, "lorakernels.json"), """
                {"device": "test GPU", "results": [
                  {"op": "forward", "M": 512, "in": 4096, "out": 4096, "impl": "lorakernels", "median_ms": 0.5, "check_passed": true},
                  {"op": "forward", "M": 512, "in": 4096, "out": 4096, "impl": "cublas", "median_ms": 0.75, "check_passed": true},
                  {"op": "nf4_decode", "M": 1, "in": 4096, "out": 4096, "impl": "lorakernels", "median_ms": 0.02, "check_passed": true},
                  {"op": "nf4_decode", "M": 1, "in": 4096, "out": 4096, "impl": "cublas_bf16", "median_ms": null, "check_passed": false}]}
                """);
            File.WriteAllText(Path.Combine(folder, "peft.json"), """
                {"device": "test GPU", "versions": {"torch": "2.x"}, "notes": ["bitsandbytes 4-bit skipped: not importable"], "results": [
                  {"op": "forward", "M": 512, "in": 4096, "out": 4096, "impl": "peft", "median_ms": 1.0, "check_passed": true}]}
                """);
            var (exitCode, output) = Python("--merge", folder);
            Assert.That(exitCode, Is.Zero, output);
            string table = File.ReadAllText(Path.Combine(folder, "comparison.md"));
            Assert.That(table, Does.Contain("| forward | 512 | 4096x4096 | 0.5000 | 0.7500 | 1.0000 | - | 1.5000 | 2.0000 | - |"));
            Assert.That(table, Does.Contain("| nf4_decode | 1 | 4096x4096 | 0.0200 | - |"), "a failed check reports no time");
            Assert.That(table, Does.Contain("note: bitsandbytes 4-bit skipped"));
            using JsonDocument json = JsonDocument.Parse(File.ReadAllText(Path.Combine(folder, "comparison.json")));
            Assert.That(json.RootElement.GetProperty("rows").GetArrayLength(), Is.EqualTo(2));

            File.Delete(Path.Combine(folder, "peft.json"));
            (exitCode, output) = Python("--merge", folder);
            Assert.That(exitCode, Is.Zero, output);
            Assert.That(File.ReadAllText(Path.Combine(folder, "comparison.md")), Does.Contain("PyTorch/PEFT: not run"));
        }
    });

    [Test]
    public void TheComparisonProgramRunsItsCasesAndChecksOnTheEmulator() => InTemporaryFolder(folder =>
    {
        {
            var (exitCode, output, errors) = ChildProgram.Run(ChildProgram.StartInfo("gpu-compare", "--device", "simt", "--out", folder),
                                                              TimeSpan.FromSeconds(300));
            TestContext.Out.WriteLine(output + errors);
            Assert.That(exitCode, Is.Zero, "every case checked against the CPU");
            using JsonDocument json = JsonDocument.Parse(File.ReadAllText(Path.Combine(folder, "lorakernels.json")));
            JsonElement[] results = json.RootElement.GetProperty("results").EnumerateArray().ToArray();
            // Forward and backward, ours and cuBLAS's, at M = 1, 16, 40; the 4-bit decode, ours and cuBLAS's, at M = 1, 16.
            Assert.That(results, Has.Length.EqualTo(3 * 4 + 2 * 2));
            Assert.That(results.Select(r => r.GetProperty("check_passed").GetBoolean()), Is.All.True);
            foreach (JsonElement r in results)
                Assert.That(r.GetProperty("check_worst_ratio").GetDouble(), Is.GreaterThan(0.0).And.LessThanOrEqualTo(1.0),
                            $"{r}: each check measured a real, bounded difference");
            var (mergeExit, mergeOutput) = Python("--merge", folder);
            Assert.That(mergeExit, Is.Zero, mergeOutput);
            Assert.That(File.ReadAllText(Path.Combine(folder, "comparison.md")), Does.Contain("| backward | 40 | 96x80 |"));
        }
    });

    [Test]
    public void WithoutAGpuTheComparisonProgramSaysSoAndExits2()
    {
        if (Device.IsCudaAvailable) Assert.Ignore("a GPU is present here");
        var (exitCode, output, errors) = ChildProgram.Run(ChildProgram.StartInfo("gpu-compare", "--probe"), TimeSpan.FromSeconds(60));
        Assert.That(exitCode, Is.EqualTo(2));
        Assert.That(output + errors, Does.Contain("no usable CUDA device"));
    }
}
