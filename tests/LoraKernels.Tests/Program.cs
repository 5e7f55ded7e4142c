using Microsoft.Testing.Platform.Builder;

namespace LoraKernels.Tests;

/// <summary>
/// The test program's entry point. By default it runs the NUnit tests through
/// Microsoft.Testing.Platform, as the generated entry point would (this is what `dotnet test`
/// launches). With "benchmarks" as the first argument it runs the BenchmarkDotNet benchmarks with
/// the remaining arguments instead, so the GPU bundle ships a single self-contained program whose
/// one trimmed runtime serves both. With "gc-stress", "train-digest", "wait-policy" or "paged-memory" first
/// it runs the child programs that GcStressTests, DeterminismTests, OpenMpWaitPolicyTests and PagedStateTests
/// start (Safety/*Program.cs, Optim/PagedMemoryProgram.cs); with "cuda-fault" the one CudaHealthTests starts
/// (Runtime/CudaFaultProgram.cs); with "gpu-compare" the GPU bundle's lean comparison against cuBLAS
/// (benchmarks' GpuComparison).
/// </summary>
internal static class Program
{
    public static async Task<int> Main(string[] args)
    {
        if (args.Length > 0 && args[0] == "benchmarks")
            return LoraKernels.Benchmarks.BenchmarkProgram.Run(args[1..]);
        if (args.Length > 0 && args[0] == "gc-stress")
            return Safety.GcStressProgram.Run(args[1..]);
        if (args.Length > 0 && args[0] == "train-digest")
            return Safety.TrainingDigestProgram.Run(args[1..]);
        if (args.Length > 0 && args[0] == "wait-policy")
            return Safety.WaitPolicyProgram.Run(args[1..]);
        if (args.Length > 0 && args[0] == "paged-memory")
            return Optim.PagedMemoryProgram.Run(args[1..]);
        if (args.Length > 0 && args[0] == Runtime.CudaFaultProgram.Command)
            return Runtime.CudaFaultProgram.Run();
        if (args.Length > 0 && args[0] == LoraKernels.Benchmarks.GpuComparison.GpuComparisonProgram.Command)
            return LoraKernels.Benchmarks.GpuComparison.GpuComparisonProgram.Run(args[1..]);

        ITestApplicationBuilder builder = await TestApplication.CreateBuilderAsync(args);
        builder.AddSelfRegisteredExtensions(args);
        using ITestApplication app = await builder.BuildAsync();
        return await app.RunAsync();
    }
}
