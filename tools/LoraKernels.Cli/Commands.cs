// The commands of `lora` (Program.cs lists them and their exit codes). Each prints a table (or
// JSON with --json) and returns its exit code; the library raises the errors Program.cs maps.
using System.Diagnostics;
using System.Text.Json.Nodes;
using LoraKernels.Autograd;
using LoraKernels.IO;
using LoraKernels.IO.Peft;
using LoraKernels.Layers;
using LoraKernels.Optim;
using LoraKernels.Variants;

namespace LoraKernels.Cli;

internal static class Commands
{
    public static int Variants(Arguments args)
    {
        args.NoMorePositional(0);
        if (!args.Json)
        {
            Console.Out.Write(Catalogue.FormatTable());
            Console.Out.WriteLine("PEFT checkpoints: " + string.Join("; ", PeftFormats.All.Select(f =>
                $"{f.PeftType} ({string.Join(", ", f.Variants)}){(f.Available ? "" : " read and inspect only, pending")}")));
            return ExitCodes.Success;
        }
        var list = new JsonArray();
        foreach (VariantInfo info in Catalogue.Variants)
        {
            PeftFormat? peft = PeftFormats.All.FirstOrDefault(f => f.Variants.Contains(info.Name));
            list.Add((JsonNode)new JsonObject
            {
                ["name"] = info.Name, ["display_name"] = info.DisplayName, ["family"] = info.Family.ToString(),
                ["paper"] = info.Paper.Title, ["year"] = info.Paper.Year, ["arxiv"] = info.Paper.ArxivId,
                ["parameters_4096x4096"] = info.TrainableParameters(4096, 4096), ["formula"] = info.ParameterFormula,
                ["backends"] = new JsonArray(info.Backends.Select(b => (JsonNode?)b.ToString().ToLowerInvariant()).ToArray()),
                ["dtypes"] = new JsonArray(info.DTypes.Select(d => (JsonNode?)d.ToString()).ToArray()),
                ["peft_type"] = peft?.PeftType, ["peft_attach_and_merge"] = peft?.Available ?? false,
            });
        }
        Output.Json(list);
        return ExitCodes.Success;
    }

    public static int Inspect(Arguments args)
    {
        string path = args.Required(0, "the adapter folder or .safetensors file to inspect");
        args.NoMorePositional(1);
        bool isAdapter = Directory.Exists(path)
            || File.Exists(Path.Combine(Path.GetDirectoryName(Path.GetFullPath(path))!, PeftConfig.FileName));
        if (!isAdapter && !File.Exists(path)) throw new FileNotFoundException($"No such file or folder: {path}", path);
        string weightsPath = Directory.Exists(path) ? Path.Combine(path, PeftAdapter.WeightsFileName) : path;
        using SafeTensorsFile file = SafeTensorsFile.Open(weightsPath);
        PeftAdapter? adapter = isAdapter ? PeftAdapter.Load(path) : null;
        var tensors = file.Tensors.OrderBy(t => t.Name, StringComparer.Ordinal).ToList();
        long parameters = adapter?.TrainableParameters ?? tensors.Where(t => t.DType.ConvertsToFloat()).Sum(t => t.ElementCount);
        var quantized = tensors.Where(t => t.Name.Contains(".quant_state.bitsandbytes__", StringComparison.Ordinal)).Select(t => t.Name).ToList();
        if (args.Json)
        {
            var json = new JsonObject
            {
                ["path"] = weightsPath, ["kind"] = adapter is null ? "safetensors" : "peft-adapter",
                ["file_bytes"] = file.FileLength, ["header_bytes"] = file.HeaderLength,
                ["metadata"] = new JsonObject(file.Metadata.Select(p => KeyValuePair.Create(p.Key, (JsonNode?)p.Value))),
                ["tensors"] = new JsonArray(tensors.Select(t => (JsonNode?)new JsonObject
                {
                    ["name"] = t.Name, ["dtype"] = t.DType.ToString(), ["shape"] = Output.Array(t.Shape), ["elements"] = t.ElementCount,
                }).ToArray()),
                ["parameters"] = parameters,
                ["bitsandbytes_4bit_weights"] = new JsonArray(quantized.Select(q => (JsonNode?)q[..q.IndexOf(".quant_state", StringComparison.Ordinal)]).ToArray()),
            };
            if (adapter is not null)
            {
                json["peft_type"] = adapter.Config.PeftType;
                json["variant"] = adapter.Variant;
                json["rank"] = adapter.Config.Rank;
                json["alpha"] = adapter.Config.Alpha;
                json["target_modules"] = adapter.Config.TargetModules?.ToString();
                json["attach_and_merge"] = adapter.Format.Available;
                json["modules"] = new JsonArray(adapter.Modules.Select(m => (JsonNode?)new JsonObject
                {
                    ["path"] = m.Path, ["rank"] = m.Rank, ["scale"] = m.Scale, ["out"] = m.OutFeatures, ["in"] = m.InFeatures, ["parameters"] = m.ParameterCount,
                }).ToArray());
            }
            Output.Json(json);
            return ExitCodes.Success;
        }
        Console.Out.WriteLine($"{weightsPath}: {Output.Bytes(file.FileLength)}, header {Output.Bytes(file.HeaderLength)}, {tensors.Count} tensors");
        if (file.Metadata.Count > 0) Console.Out.WriteLine("metadata: " + string.Join(", ", file.Metadata.Select(p => $"{p.Key}={p.Value}")));
        if (adapter is not null)
        {
            Console.Out.WriteLine($"PEFT adapter: peft_type {adapter.Config.PeftType}, variant {adapter.Variant}, r = {adapter.Config.Rank}, " +
                                  $"alpha = {Output.Number(adapter.Config.Alpha)}, target_modules {adapter.Config.TargetModules?.ToString() ?? "(none)"}, " +
                                  $"{adapter.Modules.Count} modules, {Output.Count(parameters)} trainable parameters");
            if (!adapter.Format.Available) Console.Out.WriteLine($"note: {adapter.Format.Pending}");
        }
        else
        {
            Console.Out.WriteLine($"{Output.Count(parameters)} values" + (quantized.Count > 0 ? $", {quantized.Count} bitsandbytes 4-bit weights" : ""));
        }
        Console.Out.WriteLine();
        Console.Out.Write(Output.Table(["tensor", "dtype", "shape", "elements"],
            tensors.Select(t => (IReadOnlyList<string>)[t.Name, t.DType.ToString(), Output.Shape(t.Shape), Output.Count(t.ElementCount)])));
        return ExitCodes.Success;
    }

    public static int Merge(Arguments args)
    {
        string basePath = args.Required(0, "the base model .safetensors");
        string adapterPath = args.Required(1, "the adapter folder");
        args.NoMorePositional(2);
        string output = args.Value("--output") ?? throw new UsageException("merge needs -o <out.safetensors>");
        Device device = args.Device();
        PeftAdapter adapter = PeftAdapter.Load(adapterPath);
        MergeReport report;
        using (var bar = new ProgressBar(args.Json))
            report = AdapterMerge.Merge(basePath, adapter, output, new MergeOptions { Device = device, Progress = bar });
        if (args.Json)
        {
            Output.Json(new JsonObject
            {
                ["output"] = report.Output, ["variant"] = adapter.Variant, ["output_bytes"] = report.OutputBytes,
                ["tensors_copied"] = report.TensorsCopied, ["tensors_replaced"] = report.TensorsReplaced, ["seconds"] = report.Elapsed.TotalSeconds,
                ["modules"] = new JsonArray(report.Modules.Select(m => (JsonNode?)new JsonObject
                {
                    ["module"] = m.Module, ["base"] = m.BaseFormat, ["out"] = m.OutFeatures, ["in"] = m.InFeatures, ["max_change"] = m.MaxChange,
                    ["requantization_rms"] = m.Requantization?.Rms, ["requantization_max_abs"] = m.Requantization?.MaxAbs,
                    ["requantization_relative"] = m.Requantization?.Relative,
                }).ToArray()),
            });
            return ExitCodes.Success;
        }
        Console.Out.Write(Output.Table(["module", "base", "[out, in]", "max |ΔW|", "requant RMS", "requant rel."],
            report.Modules.Select(m => (IReadOnlyList<string>)[m.Module, m.BaseFormat, $"[{m.OutFeatures}, {m.InFeatures}]", Output.Number(m.MaxChange),
                m.Requantization is { } e ? Output.Number(e.Rms) : "-", m.Requantization is { } r ? Output.Number(r.Relative) : "-"])));
        Console.Out.WriteLine($"merged {report.Modules.Count} modules ({adapter.Variant}) into {report.Output} ({Output.Bytes(report.OutputBytes)}; " +
                              $"{report.TensorsCopied} tensors copied, {report.TensorsReplaced} replaced) in {report.Elapsed.TotalSeconds:F1} s");
        return ExitCodes.Success;
    }

    public static int Quantize(Arguments args)
    {
        string input = args.Required(0, "the input .safetensors");
        args.NoMorePositional(1);
        string output = args.Value("--output") ?? throw new UsageException("quantize needs -o <out.safetensors>");
        if (args.Has("--nf4") == args.Has("--fp4")) throw new UsageException("quantize needs exactly one of --nf4 and --fp4");
        var options = new QuantizeOptions
        {
            QuantType = args.Has("--fp4") ? QuantType.Fp4 : QuantType.Nf4, BlockSize = args.Int("--block-size", 64),
            DoubleQuant = args.Has("--double-quant"), Device = args.Device(),
        };
        if ((options.BlockSize & (options.BlockSize - 1)) != 0 || options.BlockSize is < 32 or > 4096)
            throw new UsageException($"--block-size must be a power of two in [32, 4096], got {options.BlockSize}");
        QuantizeReport report;
        using (var bar = new ProgressBar(args.Json))
            report = ModelQuantizer.Quantize(input, output, options with { Progress = bar });
        if (args.Json)
        {
            Output.Json(new JsonObject
            {
                ["output"] = report.Output, ["input_bytes"] = report.InputBytes, ["output_bytes"] = report.OutputBytes,
                ["tensors_copied"] = report.TensorsCopied, ["seconds"] = report.Elapsed.TotalSeconds,
                ["quantized"] = new JsonArray(report.Tensors.Select(t => (JsonNode?)new JsonObject
                {
                    ["name"] = t.Name, ["shape"] = Output.Array(t.Shape), ["source_dtype"] = t.SourceDType.ToString(), ["source_bytes"] = t.SourceBytes,
                    ["quantized_bytes"] = t.QuantizedBytes, ["rms_error"] = t.Error.Rms, ["relative_error"] = t.Error.Relative, ["max_abs_error"] = t.Error.MaxAbs,
                }).ToArray()),
            });
            return ExitCodes.Success;
        }
        Console.Out.Write(Output.Table(["weight", "shape", "from", "bytes before", "bytes after", "RMS error", "relative"],
            report.Tensors.Select(t => (IReadOnlyList<string>)[t.Name, Output.Shape(t.Shape), t.SourceDType.ToString(), Output.Count(t.SourceBytes),
                Output.Count(t.QuantizedBytes), Output.Number(t.Error.Rms), Output.Number(t.Error.Relative)])));
        Console.Out.WriteLine($"{report.Tensors.Count} weights in {options.QuantType.ToString().ToUpperInvariant()} (block {options.BlockSize}" +
                              $"{(options.DoubleQuant ? ", double quantization" : "")}), {report.TensorsCopied} tensors copied: " +
                              $"{Output.Bytes(report.InputBytes)} → {Output.Bytes(report.OutputBytes)} in {report.Elapsed.TotalSeconds:F1} s");
        return ExitCodes.Success;
    }

    /// <summary>
    /// The interop path end to end, in a temporary folder: a small random model saved as safetensors; LoRA
    /// adapters on its q_proj/v_proj trained to a hidden low-rank change; saved as a PEFT adapter, inspected,
    /// reloaded and merged; the merged model's outputs checked against the adapter's; the base quantized to NF4.
    /// </summary>
    public static int Demo(Arguments args)
    {
        args.NoMorePositional(0);
        Device device = args.Device();
        const int hidden = 64, rank = 4, batch = 32, steps = 60;
        string[] modules = ["model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj", "model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.v_proj"];
        string folder = Path.Combine(Path.GetTempPath(), $"lora-demo-{Environment.ProcessId}");
        Directory.CreateDirectory(folder);
        var log = new List<(string Step, string Result)>();
        var clock = Stopwatch.StartNew();
        var random = new Random(7);
        float[] Values(int count, float scale) => Enumerable.Range(0, count).Select(_ => (float)(random.NextDouble() * 2 - 1) * scale).ToArray();
        try
        {
            string basePath = Path.Combine(folder, "model.safetensors");
            var weights = modules.ToDictionary(m => m, _ => Values(hidden * hidden, 0.2f));
            var baseWriter = new SafeTensorsWriter(new Dictionary<string, string> { ["format"] = "pt" });
            foreach (var (module, w) in weights) baseWriter.AddSingles($"{module}.weight", w, [hidden, hidden]);
            baseWriter.AddSingles("model.embed_tokens.weight", Values(100 * hidden, 1f), [100, hidden]);
            baseWriter.Save(basePath);
            log.Add(("base model", $"{modules.Length} linear layers [{hidden}, {hidden}] + embeddings → {Path.GetFileName(basePath)}"));

            var layers = new Dictionary<string, IAdapterLayer>();
            using Tensor zeroA = Tensor.Zeros(device, DType.F32, rank, hidden), zeroB = Tensor.Zeros(device, DType.F32, hidden, rank);
            // x Wᵀ through the LoRA op with a zero adapter: the plain linear layer.
            Tensor Linear(Tensor x, Tensor w)
            {
                var (y, u) = Ops.Lora.Forward(x, w, null, zeroA, zeroB, 0f);
                u.Dispose();
                return y;
            }
            try
            {
                using var baseFile = SafeTensorsFile.Open(basePath);
                foreach (string module in modules)
                {
                    using Tensor w0 = baseFile.ToTensor($"{module}.weight", device);
                    layers[module] = new LoraLinear(device, w0, null, rank, alpha: 8f, seed: (ulong)layers.Count + 1);
                }
                // The teacher: each layer's weight plus a hidden rank-2 change the adapters must learn.
                var teachers = modules.ToDictionary(m => m, m =>
                {
                    float[] a = Values(2 * hidden, 0.3f), b = Values(hidden * 2, 0.3f);
                    return Tensor.FromArray(device, weights[m].Select((v, i) => v + (b[(i / hidden) * 2] * a[i % hidden] + b[(i / hidden) * 2 + 1] * a[hidden + i % hidden])).ToArray(), hidden, hidden);
                });
                using var optimizer = new AdamW(layers.Values.SelectMany(l => l.Parameters()), lr: 2e-2f, weightDecay: 0f);
                using var tape = new Tape();
                float first = 0, last = 0;
                for (int step = 0; step < steps; step++)
                {
                    using Tensor x = Tensor.FromArray(device, Values(batch * hidden, 1f), batch, hidden);
                    float loss = 0;
                    foreach (string module in modules)
                    {
                        tape.Reset();
                        using Tensor target = Linear(x, teachers[module]);
                        Variable prediction = layers[module].Forward(tape, new Variable(x));
                        loss += tape.MseLoss(prediction, target);
                        tape.Backward();
                    }
                    optimizer.Step();
                    optimizer.ZeroGrad();
                    if (step == 0) first = loss;
                    last = loss;
                }
                foreach (Tensor t in teachers.Values) t.Dispose();
                log.Add(("train", $"{steps} AdamW steps of LoRA r={rank} on {modules.Length} layers: loss {first:F4} → {last:F4}"));

                string adapterFolder = Path.Combine(folder, "adapter");
                PeftAdapter.FromLayers(layers, new PeftExportOptions { BaseModelNameOrPath = basePath }).Save(adapterFolder);
                PeftAdapter adapter = PeftAdapter.Load(adapterFolder);
                log.Add(("save as PEFT", $"{adapterFolder}: adapter_config.json (peft_type {adapter.Config.PeftType}, target_modules {adapter.Config.TargetModules}) + adapter_model.safetensors"));
                log.Add(("inspect", $"variant {adapter.Variant}, r = {adapter.Config.Rank}, {adapter.Modules.Count} modules, {Output.Count(adapter.TrainableParameters)} trainable parameters"));

                string mergedPath = Path.Combine(folder, "merged.safetensors");
                MergeReport report = AdapterMerge.Merge(basePath, adapter, mergedPath, new MergeOptions { Device = device });
                double worst = 0;
                using (var merged = SafeTensorsFile.Open(mergedPath))
                using (Tensor x = Tensor.FromArray(device, Values(8 * hidden, 1f), 8, hidden))
                {
                    foreach (string module in modules)
                    {
                        layers[module].Training = false;
                        using Tensor viaAdapter = layers[module].Forward(x);
                        using Tensor w = merged.ToTensor($"{module}.weight", device);
                        using Tensor viaMerged = Linear(x, w);
                        worst = Math.Max(worst, viaAdapter.ToArray().Zip(viaMerged.ToArray(), (p, q) => Math.Abs(p - q)).Max());
                    }
                }
                log.Add(("merge", $"{report.Modules.Count} modules merged → {Path.GetFileName(mergedPath)}; merged model vs base + adapter: max |Δy| = {worst:E2}"));
                if (worst > 1e-3) throw new InvalidOperationException($"The merged model differs from the adapted one by {worst}.");

                string quantizedPath = Path.Combine(folder, "merged-nf4.safetensors");
                QuantizeReport quantized = ModelQuantizer.Quantize(mergedPath, quantizedPath, new QuantizeOptions { DoubleQuant = true, Device = device });
                log.Add(("quantize", $"NF4 + double quantization: {Output.Bytes(quantized.InputBytes)} → {Output.Bytes(quantized.OutputBytes)}, " +
                                     $"mean relative error {quantized.Tensors.Average(t => t.Error.Relative):F4}"));
            }
            finally
            {
                foreach (IAdapterLayer layer in layers.Values) layer.Dispose();
            }
        }
        finally
        {
            DeleteFolder(folder);
        }
        if (args.Json)
        {
            Output.Json(new JsonObject
            {
                ["device"] = device.ToString(), ["seconds"] = clock.Elapsed.TotalSeconds,
                ["steps"] = new JsonArray(log.Select(l => (JsonNode?)new JsonObject { ["step"] = l.Step, ["result"] = l.Result }).ToArray()),
            });
            return ExitCodes.Success;
        }
        Console.Out.WriteLine($"lora demo on {device.Name}: PEFT interop end to end (in a temporary folder)\n");
        Console.Out.Write(Output.Table(["step", "result"], log.Select(l => (IReadOnlyList<string>)[l.Step, l.Result])));
        Console.Out.WriteLine($"\ndone in {clock.Elapsed.TotalSeconds:F1} s");
        return ExitCodes.Success;
    }

    /// <summary>Throughput of the IO paths on a generated model of --size-mib MiB (default 256) in a temporary folder.</summary>
    public static int Bench(Arguments args)
    {
        args.NoMorePositional(0);
        int sizeMib = args.Int("--size-mib", 256);
        const int side = 1024;                                     // [1024, 1024] F32 = 4 MiB per weight
        int count = Math.Max(1, sizeMib / 4);
        string folder = Path.Combine(Path.GetTempPath(), $"lora-bench-{Environment.ProcessId}");
        Directory.CreateDirectory(folder);
        var rows = new List<(string What, double Seconds, long Bytes)>();
        try
        {
            string model = Path.Combine(folder, "model.safetensors");
            float[] values = Enumerable.Range(0, side * side).Select(i => (float)Math.Sin(i * 0.001)).ToArray();
            var writer = new SafeTensorsWriter();
            for (int i = 0; i < count; i++) writer.AddSingles($"model.layers.{i}.mlp.down_proj.weight", values, [side, side]);
            long bytes = (long)count * side * side * 4;
            rows.Add(("write (atomic, fsync)", Time(() => writer.Save(model)), bytes));
            rows.Add(("open + validate header", Time(() => SafeTensorsFile.Open(model).Dispose()), 0));
            rows.Add(("read all as float[]", Time(() =>
            {
                using var file = SafeTensorsFile.Open(model);
                foreach (SafeTensorInfo t in file.Tensors) _ = file.ReadSingles(t.Name);
            }), bytes));
            rows.Add(("map every tensor (CPU view)", Time(() =>
            {
                using var file = SafeTensorsFile.Open(model);
                foreach (SafeTensorInfo t in file.Tensors) file.ToTensor(t.Name, Device.Cpu).Dispose();
            }), 0));
            var layers = new Dictionary<string, IAdapterLayer>();
            using (Tensor w0 = Tensor.FromArray(Device.Cpu, values, side, side))
            {
                for (int i = 0; i < count; i++) layers[$"model.layers.{i}.mlp.down_proj"] = new LoraLinear(Device.Cpu, w0, null, 16, 32f, seed: (ulong)i);
                foreach (IAdapterLayer layer in layers.Values)
                    foreach (Parameter p in layer.Parameters()) p.Value.CopyFrom(Enumerable.Range(0, (int)p.Value.ElementCount).Select(j => 0.01f * ((j % 7) - 3)).ToArray());
            }
            string adapterFolder = Path.Combine(folder, "adapter");
            PeftAdapter.FromLayers(layers).Save(adapterFolder);
            foreach (IAdapterLayer layer in layers.Values) layer.Dispose();
            PeftAdapter adapter = PeftAdapter.Load(adapterFolder);
            rows.Add(("merge LoRA r=16 (dense)", Time(() => AdapterMerge.Merge(model, adapter, Path.Combine(folder, "merged.safetensors"))), bytes));
            string quantized = Path.Combine(folder, "nf4.safetensors");
            rows.Add(("quantize to NF4", Time(() => ModelQuantizer.Quantize(model, quantized)), bytes));
            rows.Add(("merge LoRA r=16 (NF4 base)", Time(() => AdapterMerge.Merge(quantized, adapter, Path.Combine(folder, "merged-nf4.safetensors"))), bytes));
        }
        finally
        {
            DeleteFolder(folder);
        }
        if (args.Json)
        {
            Output.Json(new JsonObject
            {
                ["model_bytes"] = (long)count * side * side * 4, ["tensors"] = count,
                ["results"] = new JsonArray(rows.Select(r => (JsonNode?)new JsonObject
                {
                    ["operation"] = r.What, ["seconds"] = r.Seconds, ["mib_per_second"] = r.Bytes > 0 ? r.Bytes / r.Seconds / (1 << 20) : null,
                }).ToArray()),
            });
            return ExitCodes.Success;
        }
        Console.Out.WriteLine($"lora bench: a {count * 4} MiB model of {count} F32 [{side}, {side}] weights, on {Device.Cpu.Name}\n");
        Console.Out.Write(Output.Table(["operation", "seconds", "MiB/s"],
            rows.Select(r => (IReadOnlyList<string>)[r.What, r.Seconds.ToString("F3", System.Globalization.CultureInfo.InvariantCulture),
                r.Bytes > 0 ? (r.Bytes / r.Seconds / (1 << 20)).ToString("F0", System.Globalization.CultureInfo.InvariantCulture) : "-"])));
        return ExitCodes.Success;
    }

    private static void DeleteFolder(string folder)
    {
        try
        {
            Directory.Delete(folder, recursive: true);
        }
        catch (IOException)
        {
            // A temporary folder left behind is not worth failing the command over.
        }
    }

    private static double Time(Action action)
    {
        var clock = Stopwatch.StartNew();
        action();
        return clock.Elapsed.TotalSeconds;
    }

}
