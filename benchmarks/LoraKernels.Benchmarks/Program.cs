// LoraKernels benchmarks: `dotnet run -c Release -- [BenchmarkDotNet args]` (default: every
// benchmark). See BenchmarkProgram for what a run does.
return LoraKernels.Benchmarks.BenchmarkProgram.Run(args);
