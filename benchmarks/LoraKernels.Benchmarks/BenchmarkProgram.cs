using System.Globalization;
using System.Runtime.InteropServices;
using BenchmarkDotNet.Reports;
using BenchmarkDotNet.Running;

namespace LoraKernels.Benchmarks;

/// <summary>
/// The benchmark run: (1) checks that each fused op and its baseline compute the same result;
/// (2) measures the machine's fp32 FMA peak and memory bandwidth; (3) runs BenchmarkDotNet (the CPU
/// LoRA kernels when OpenBLAS loads, the CPU optimizers always; CUDA where a GPU is present, else it
/// says it is skipped); (4) prints a
/// compact table of speed-ups and fractions of the peaks, also written beside BDN's reports.
/// Called by this project's Program and by the test program (`LoraKernels.Tests --benchmarks ...`),
/// so the GPU bundle ships one self-contained program, with one trimmed runtime, for both.
/// </summary>
public static class BenchmarkProgram
{
    public static int Run(string[] args)
    {
        Console.WriteLine($"LoraKernels benchmarks; CPU: {Device.Cpu.Name}");
        var types = new List<Type>();
        if (NativeLibrary.TryLoad("libopenblas.so.0", out _))
        {
            Console.WriteLine($"CPU baseline: {OpenBlas.Describe()}");
            if (!FusedAndBaselineAgree()) return 1;
            types.Add(typeof(CpuLoraBenchmarks));
            types.Add(typeof(Nf4Benchmarks));
            types.Add(typeof(DoraBenchmarks));
            types.Add(typeof(CpuHostSharingBenchmarks));
            types.Add(typeof(KronBenchmarks));
            types.Add(typeof(TuckerConvBenchmarks));
            types.Add(typeof(GatedBenchmarks));
            types.Add(typeof(GatedPruningBenchmarks));
            types.Add(typeof(GatedScalingBenchmarks));
            types.Add(typeof(GatedDenseScalingBenchmarks));
            types.Add(typeof(SegmentedBenchmarks));
        }
        else
        {
            Console.WriteLine("CPU LoRA benchmarks skipped: libopenblas.so.0 (their baseline) cannot be loaded (Debian: libopenblas0-pthread)");
        }
        types.Add(typeof(OptimizerBenchmarks));  // its references are the machine's bandwidth and the library's own steps

        if (Device.IsCudaAvailable)
        {
            types.Add(typeof(GpuLoraBenchmarks));
            Console.WriteLine($"GPU: {Device.Cuda().Name}");
        }
        else
        {
            string reason;
            try
            {
                reason = $"Device.Cuda() returned {Device.Cuda().Name} although IsCudaAvailable is false";
            }
            catch (CudaUnavailableException e)
            {
                reason = e.Message.Split('\n')[0].Trim();
                if (reason.EndsWith("Tried:", StringComparison.Ordinal)) reason = reason[..^"Tried:".Length].TrimEnd();
            }
            Console.WriteLine($"GPU benchmarks skipped: no CUDA device ({reason})");
        }

        bool listingOnly = args.Any(a => a is "--list" or "--help" or "-h" or "--info" or "--version");
        if (!listingOnly)
        {
            MachinePeaks.Current = MachinePeaks.Measure();
            Console.WriteLine($"Machine peaks: {MachinePeaks.Current}");
        }

        string[] bdnArgs = args.Length == 0 ? ["--filter", "*"] : args;
        Summary[] summaries = BenchmarkSwitcher.FromTypes(types.ToArray()).Run(bdnArgs, BenchmarkConfig.Create()).ToArray();
        if (summaries.Length == 0 || summaries.All(s => s.BenchmarksCases.Length == 0)) return 0;  // --list, --help, or a filter matching nothing

        string table = ResultTable.Render(summaries, MachinePeaks.Current) + Nf4Benchmarks.Table(summaries, MachinePeaks.Current)
                       + DoraBenchmarks.Table(summaries) + KronBenchmarks.Table(summaries) + TuckerConvBenchmarks.Table(summaries)
                       + OptimizerBenchmarks.Table(summaries, MachinePeaks.Current) + GatedBenchmarks.Table(summaries)
                       + SegmentedBenchmarks.Table(summaries);
        Console.WriteLine();
        Console.WriteLine(table);
        string tablePath = Path.Combine(summaries[0].ResultsDirectoryPath, "LoraKernels-summary.md");
        Directory.CreateDirectory(summaries[0].ResultsDirectoryPath);
        File.WriteAllText(tablePath, table);
        Console.WriteLine($"(also written to {tablePath})");
        return summaries.Any(s => s.HasCriticalValidationErrors || s.Reports.Any(r => !r.Success)) ? 1 : 0;
    }

    // Each fused op and its baseline must compute the same result, or the comparison means nothing.
    private static bool FusedAndBaselineAgree()
    {
        const double agreement = 1e-4;  // fp32 sums of ≤ 96 terms in different orders differ by far less
        var check = new CpuLoraBenchmarks { M = 7, Features = 96 };
        check.Setup();
        try
        {
            foreach (var (output, error) in check.CompareWithBaseline())
            {
                Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"  fused vs OpenBLAS, {output}: max |difference| / max |value| = {error:E2}"));
                if (!(error <= agreement))
                {
                    Console.Error.WriteLine($"The fused {output} and its OpenBLAS baseline disagree ({error:E2} > {agreement:E0}); not benchmarking different math.");
                    return false;
                }
            }
            return true;
        }
        finally
        {
            check.Cleanup();
        }
    }
}
