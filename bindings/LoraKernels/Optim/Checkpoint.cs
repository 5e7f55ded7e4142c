// Training checkpoints that survive a crash. A checkpoint is a folder step-<StepCount> holding
//   adapter.safetensors     the parameters' values, by name, in their own dtype (F32 or BF16)
//   optimizer.safetensors   every state buffer as "<parameter>/<buffer>" (F32, or U8 for 8-bit codes)
//   manifest.json           the optimizer's settings, counts, schedule and groups, each parameter's
//                           dtype, shape and step count, and the size and SHA-256 of both files
// and the folder LATEST names is the current one. A save writes a new folder under a temporary name
// (each file through AtomicFile: temporary file, fsync, rename), renames the folder into place, then
// replaces LATEST atomically; a crash or failure at any point before that leaves LATEST naming the
// previous, complete checkpoint, and the next save deletes the leftovers. A load follows LATEST,
// checks the manifest, both files' sizes and hashes, and every name, dtype and shape against the live
// parameters and optimizer before it changes anything, then restores values, state, counts, rates and
// the schedule, so the next steps are bit for bit those of a run that never stopped. Paged and resident
// optimizers read each other's checkpoints (the state is the same bits either way). Not saved: the
// layers' dropout seed streams and the data order, which belong to the caller.
using System.Globalization;
using System.Security.Cryptography;
using System.Text;
using System.Text.RegularExpressions;
using LoraKernels.Autograd;
using LoraKernels.IO;
using LoraKernels.Layers;
using LoraKernels.Runtime;

namespace LoraKernels.Optim;

/// <summary>What <see cref="Checkpoint.Load"/> restored.</summary>
public sealed record CheckpointInfo(string Folder, long StepCount, IReadOnlyDictionary<string, string> Metadata);

public static partial class Checkpoint
{
    public const string PointerFile = "LATEST";
    public const string ManifestFile = "manifest.json";
    public const string AdapterFile = "adapter.safetensors";
    public const string OptimizerFile = "optimizer.safetensors";
    private const string PartialMarker = ".partial-";
    private const int CopyChunkBytes = 4 << 20;

    /// <summary>
    /// Test hook: called with each file's name once it is written in the new folder, then with the folder's
    /// name once it is renamed into place (before LATEST switches); a throw there simulates a crash.
    /// </summary>
    internal static Action<string>? AfterWrite { get; set; }

    /// <summary>
    /// Saves <paramref name="parameters"/> (named; every parameter of <paramref name="optimizer"/> must be among
    /// them) and the optimizer's state into a new checkpoint folder of <paramref name="directory"/>, makes it the
    /// current one and deletes all but the newest <paramref name="keep"/>. Returns the new folder's path.
    /// </summary>
    public static string Save(string directory, IReadOnlyDictionary<string, Parameter> parameters, Optimizer optimizer, int keep = 2,
                              IReadOnlyDictionary<string, string>? metadata = null)
    {
        ArgumentException.ThrowIfNullOrEmpty(directory);
        ArgumentNullException.ThrowIfNull(parameters);
        ArgumentNullException.ThrowIfNull(optimizer);
        ArgumentOutOfRangeException.ThrowIfLessThan(keep, 1);
        if (optimizer.PendingAccumulation > 0)
            throw new InvalidOperationException(
                $"Checkpoint.Save: {optimizer.PendingAccumulation} gradient(s) are accumulated; save at a step boundary (they are not part of a checkpoint).");
        Dictionary<Parameter, string> names = NamesOf(parameters, optimizer);

        Directory.CreateDirectory(directory);
        string folder = NewFolderName(directory, optimizer.StepCount);
        string partial = Path.Combine(directory, $".{folder}{PartialMarker}{Guid.NewGuid():N}");
        Directory.CreateDirectory(partial);
        try
        {
            var files = new Dictionary<string, CheckpointFile>(StringComparer.Ordinal)
            {
                [AdapterFile] = WriteHashed(Path.Combine(partial, AdapterFile), AdapterWriter(parameters).WriteTo),
            };
            AfterWrite?.Invoke(AdapterFile);
            files[OptimizerFile] = WriteHashed(Path.Combine(partial, OptimizerFile), StateWriter(optimizer, names).WriteTo);
            AfterWrite?.Invoke(OptimizerFile);
            AtomicFile.WriteAllBytes(Path.Combine(partial, ManifestFile), ManifestOf(parameters, optimizer, names, files, metadata).ToJson());
            AfterWrite?.Invoke(ManifestFile);
            Directory.Move(partial, Path.Combine(directory, folder));
        }
        catch
        {
            TryDeleteFolder(partial);
            throw;
        }
        AfterWrite?.Invoke(folder);
        AtomicFile.WriteAllBytes(Path.Combine(directory, PointerFile), Encoding.UTF8.GetBytes(folder + "\n"));
        Prune(directory, keep, folder);
        return Path.Combine(directory, folder);
    }

    /// <summary>
    /// Restores the checkpoint LATEST names in <paramref name="directory"/> into <paramref name="parameters"/> and
    /// <paramref name="optimizer"/> (of the same kind, hyper-parameters, groups and parameter shapes).
    /// </summary>
    /// <exception cref="InvalidFileException">A file is missing, truncated, corrupt or not what the manifest says.</exception>
    /// <exception cref="ArgumentException">The checkpoint does not fit the given parameters or optimizer.</exception>
    public static CheckpointInfo Load(string directory, IReadOnlyDictionary<string, Parameter> parameters, Optimizer optimizer)
    {
        ArgumentException.ThrowIfNullOrEmpty(directory);
        ArgumentNullException.ThrowIfNull(parameters);
        ArgumentNullException.ThrowIfNull(optimizer);
        Dictionary<Parameter, string> names = NamesOf(parameters, optimizer);
        string folder = Path.Combine(directory, CurrentFolder(directory));
        string manifestPath = Path.Combine(folder, ManifestFile);
        CheckpointManifest manifest = CheckpointManifest.Read(manifestPath);
        foreach (string file in new[] { AdapterFile, OptimizerFile })
        {
            if (!manifest.Files.TryGetValue(file, out CheckpointFile? expected))
                throw new InvalidFileException(manifestPath, "files", $"does not list {file}");
            VerifyFile(Path.Combine(folder, file), expected);
        }
        CheckFits(manifest, parameters, optimizer, names);

        using SafeTensorsFile adapter = SafeTensorsFile.Open(Path.Combine(folder, AdapterFile));
        using SafeTensorsFile state = SafeTensorsFile.Open(Path.Combine(folder, OptimizerFile));
        foreach (var (name, parameter) in parameters) CheckTensor(adapter, name, parameter.Value);
        if (adapter.Tensors.Count != parameters.Count)
            throw new InvalidFileException(adapter.Path, null, $"holds {adapter.Tensors.Count} tensors; the manifest lists {parameters.Count} parameters");
        var restored = new List<ParameterState>();
        try
        {
            foreach (var (name, recorded) in manifest.Parameters)
            {
                Parameter parameter = parameters[name];
                if (recorded.Steps is not long steps || !names.ContainsKey(parameter)) continue;
                ParameterState fresh = optimizer.NewState(parameter);
                restored.Add(fresh);
                fresh.Steps = steps;
                foreach (StateBuffer buffer in fresh.Buffers) CheckStateTensor(state, $"{name}/{buffer.Name}", buffer);
            }
            int expectedTensors = restored.Sum(s => s.Buffers.Count);
            if (state.Tensors.Count != expectedTensors)
                throw new InvalidFileException(state.Path, null, $"holds {state.Tensors.Count} state tensors; the manifest's parameters need {expectedTensors}");

            foreach (var (name, parameter) in parameters) CopyIn(adapter, name, parameter.Value.Device, parameter.Value.Buffer);
            foreach (ParameterState fresh in restored)
                foreach (StateBuffer buffer in fresh.Buffers) CopyIn(state, $"{names[fresh.Parameter]}/{buffer.Name}", optimizer.Device, buffer.Buffer);
        }
        catch
        {
            foreach (ParameterState fresh in restored) fresh.Dispose();
            throw;
        }
        foreach (Parameter parameter in optimizer.Parameters) optimizer.State.Remove(parameter);
        foreach (ParameterState fresh in restored) optimizer.State.Add(fresh);
        Restore(manifest, optimizer);
        return new CheckpointInfo(folder, manifest.StepCount, manifest.Metadata);
    }

    /// <summary>The trainable parameters of <paramref name="layers"/> named "&lt;module path&gt;.&lt;parameter name&gt;".</summary>
    public static IReadOnlyDictionary<string, Parameter> NamedParameters(IReadOnlyDictionary<string, IAdapterLayer> layers)
    {
        ArgumentNullException.ThrowIfNull(layers);
        var named = new Dictionary<string, Parameter>(StringComparer.Ordinal);
        foreach (var (path, layer) in layers)
        {
            ArgumentNullException.ThrowIfNull(layer, $"{nameof(layers)}[{path}]");
            foreach (Parameter parameter in layer.Parameters())
                if (!named.TryAdd($"{path}.{parameter.Name}", parameter))
                    throw new ArgumentException($"Checkpoint: two parameters are named \"{path}.{parameter.Name}\".", nameof(layers));
        }
        return named;
    }

    // ---- saving ----------------------------------------------------------------------------------

    /// <summary>The name of each parameter; every optimizer parameter must have one, and names may not hold '/'.</summary>
    private static Dictionary<Parameter, string> NamesOf(IReadOnlyDictionary<string, Parameter> parameters, Optimizer optimizer)
    {
        var names = new Dictionary<Parameter, string>(ReferenceEqualityComparer.Instance);
        foreach (var (name, parameter) in parameters)
        {
            if (string.IsNullOrEmpty(name) || name.Contains('/'))
                throw new ArgumentException($"Checkpoint: parameter name \"{name}\" must be non-empty and hold no '/'.", nameof(parameters));
            ArgumentNullException.ThrowIfNull(parameter, $"{nameof(parameters)}[{name}]");
            if (!names.TryAdd(parameter, name))
                throw new ArgumentException($"Checkpoint: one parameter is named both \"{names[parameter]}\" and \"{name}\".", nameof(parameters));
        }
        foreach (Parameter parameter in optimizer.Parameters)
            if (!names.ContainsKey(parameter))
                throw new ArgumentException($"Checkpoint: the optimizer's parameter {parameter.Name} ({parameter.Value.Describe()}) has no name in {nameof(parameters)}.", nameof(parameters));
        return names;
    }

    private static SafeTensorsWriter AdapterWriter(IReadOnlyDictionary<string, Parameter> parameters)
    {
        var writer = new SafeTensorsWriter(new Dictionary<string, string> { ["format"] = CheckpointManifest.Format });
        foreach (var (name, parameter) in parameters) writer.Add(name, parameter.Value);
        return writer;
    }

    private static SafeTensorsWriter StateWriter(Optimizer optimizer, Dictionary<Parameter, string> names)
    {
        var writer = new SafeTensorsWriter(new Dictionary<string, string> { ["format"] = CheckpointManifest.Format, ["optimizer"] = optimizer.Name });
        foreach (Parameter parameter in optimizer.Parameters)
        {
            if (!optimizer.State.TryGet(parameter, out ParameterState state)) continue;
            foreach (StateBuffer buffer in state.Buffers)
            {
                SafeTensorDType dtype = buffer.Element == StateElement.F32 ? SafeTensorDType.F32 : SafeTensorDType.U8;
                writer.Add($"{names[parameter]}/{buffer.Name}", dtype, [buffer.Units], stream => CopyOut(optimizer.Device, buffer.Buffer, stream));
            }
        }
        return writer;
    }

    private static CheckpointManifest ManifestOf(IReadOnlyDictionary<string, Parameter> parameters, Optimizer optimizer, Dictionary<Parameter, string> names,
                                                 Dictionary<string, CheckpointFile> files, IReadOnlyDictionary<string, string>? metadata) =>
        new(optimizer.StepCount, optimizer.SkippedSteps, optimizer.Name, optimizer.Hyperparameters, optimizer.Paging is not null,
            optimizer.AccumulationSteps, optimizer.MaxGradNorm, optimizer.OnNonFiniteGradients,
            optimizer.Schedule is { } s ? new CheckpointSchedule(s.Kind, s.WarmupSteps, s.TotalSteps, s.MinimumFactor) : null,
            optimizer.Groups.Select(g => new CheckpointGroup(g.Name, g.LearningRate, g.WeightDecay, g.Parameters.Select(p => names[p]).ToArray())).ToArray(),
            parameters.ToDictionary(
                p => p.Key,
                p => new CheckpointParameter(p.Value.Value.DType, p.Value.Value.Shape.ToArray(),
                                             optimizer.State.TryGet(p.Value, out ParameterState state) ? state.Steps : null),
                StringComparer.Ordinal),
            files,
            metadata ?? new Dictionary<string, string>());

    /// <summary>Writes <paramref name="path"/> atomically and returns its size and SHA-256 (read back from the disk's copy).</summary>
    private static CheckpointFile WriteHashed(string path, Action<Stream, string> write)
    {
        AtomicFile.Write(path, stream => write(stream, path));
        return new CheckpointFile(new FileInfo(path).Length, Sha256Of(path));
    }

    private static string Sha256Of(string path)
    {
        using FileStream stream = File.OpenRead(path);
        return Convert.ToHexStringLower(SHA256.HashData(stream));
    }

    private static void CopyOut(Device device, DeviceBuffer buffer, Stream stream)
    {
        byte[] chunk = new byte[(int)Math.Min(CopyChunkBytes, Math.Max(buffer.SizeInBytes, 1))];
        for (long done = 0; done < buffer.SizeInBytes; done += chunk.Length)
        {
            Span<byte> part = chunk.AsSpan(0, (int)Math.Min(chunk.Length, buffer.SizeInBytes - done));
            device.Download(buffer, done, part);
            stream.Write(part);
        }
    }

    /// <summary>step-NNNNNNNNNN, or with a suffix .K when that step was saved before.</summary>
    private static string NewFolderName(string directory, long step)
    {
        string name = $"step-{step.ToString("D10", CultureInfo.InvariantCulture)}";
        int suffix = Folders(directory).Where(f => f.Step == step).Select(f => f.Suffix + 1).DefaultIfEmpty(0).Max();
        return suffix == 0 ? name : $"{name}.{suffix.ToString(CultureInfo.InvariantCulture)}";
    }

    /// <summary>Deletes leftover partial folders and all complete ones but the newest <paramref name="keep"/> and <paramref name="current"/>.</summary>
    private static void Prune(string directory, int keep, string current)
    {
        foreach (string leftover in Directory.EnumerateDirectories(directory, $".step-*{PartialMarker}*")) TryDeleteFolder(leftover);
        foreach (var (name, _, _) in Folders(directory).OrderByDescending(f => f.Step).ThenByDescending(f => f.Suffix).Skip(keep))
            if (name != current) TryDeleteFolder(Path.Combine(directory, name));
    }

    private static IEnumerable<(string Name, long Step, int Suffix)> Folders(string directory)
    {
        foreach (string path in Directory.EnumerateDirectories(directory, "step-*"))
        {
            string name = Path.GetFileName(path);
            Match match = FolderName().Match(name);
            if (!match.Success) continue;
            int suffix = match.Groups[2].Success ? int.Parse(match.Groups[2].Value, CultureInfo.InvariantCulture) : 0;
            yield return (name, long.Parse(match.Groups[1].Value, CultureInfo.InvariantCulture), suffix);
        }
    }

    private static void TryDeleteFolder(string path)
    {
        try
        {
            if (Directory.Exists(path)) Directory.Delete(path, recursive: true);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            // Best effort: a leftover is deleted by the next save.
        }
    }

    [GeneratedRegex(@"^step-(\d{10})(?:\.(\d{1,9}))?$", RegexOptions.CultureInvariant, matchTimeoutMilliseconds: 1000)]
    private static partial Regex FolderName();

    // ---- loading ---------------------------------------------------------------------------------

    /// <summary>The folder LATEST names, checked to be a checkpoint folder that exists.</summary>
    private static string CurrentFolder(string directory)
    {
        string pointer = Path.Combine(directory, PointerFile);
        if (!File.Exists(pointer)) throw new InvalidFileException(pointer, null, "there is no checkpoint here: the pointer file is missing");
        if (new FileInfo(pointer).Length > 256) throw new InvalidFileException(pointer, null, "is longer than a checkpoint folder's name");
        string folder = File.ReadAllText(pointer, Encoding.UTF8).Trim();
        if (!FolderName().IsMatch(folder)) throw new InvalidFileException(pointer, null, $"names \"{folder}\", which is not a checkpoint folder (step-NNNNNNNNNN)");
        if (!Directory.Exists(Path.Combine(directory, folder))) throw new InvalidFileException(pointer, null, $"names {folder}, which does not exist");
        return folder;
    }

    private static void VerifyFile(string path, CheckpointFile expected)
    {
        var info = new FileInfo(path);
        if (!info.Exists) throw new InvalidFileException(path, null, "is missing from the checkpoint");
        if (info.Length != expected.Bytes)
            throw new InvalidFileException(path, null, $"is {info.Length} bytes; the manifest says {expected.Bytes} (truncated or overwritten)");
        string hash = Sha256Of(path);
        if (hash != expected.Sha256)
            throw new InvalidFileException(path, null, $"its SHA-256 is {hash}; the manifest says {expected.Sha256} (the file is corrupt)");
    }

    /// <summary>Throws ArgumentException unless the checkpoint was made by an optimizer like this one over these parameters.</summary>
    private static void CheckFits(CheckpointManifest manifest, IReadOnlyDictionary<string, Parameter> parameters, Optimizer optimizer,
                                  Dictionary<Parameter, string> names)
    {
        void Fail(string problem) => throw new ArgumentException($"Checkpoint.Load: {problem}", nameof(optimizer));
        if (manifest.Optimizer != optimizer.Name) Fail($"the checkpoint holds {manifest.Optimizer} state; the optimizer is {optimizer.Name}.");
        foreach (var (key, value) in optimizer.Hyperparameters)
            if (!manifest.Hyperparameters.TryGetValue(key, out double saved) || saved != value)
                Fail($"the checkpoint's {key} is {(manifest.Hyperparameters.TryGetValue(key, out double s) ? s.ToString(CultureInfo.InvariantCulture) : "missing")}; the optimizer's is {value.ToString(CultureInfo.InvariantCulture)}.");
        if (manifest.Groups.Count != optimizer.Groups.Count)
            Fail($"the checkpoint has {manifest.Groups.Count} parameter groups; the optimizer has {optimizer.Groups.Count}.");
        for (int g = 0; g < manifest.Groups.Count; g++)
        {
            CheckpointGroup saved = manifest.Groups[g];
            ParameterGroup live = optimizer.Groups[g];
            if (saved.Name != live.Name || !saved.Parameters.SequenceEqual(live.Parameters.Select(p => names[p])))
                Fail($"group {g} is '{saved.Name}' of [{string.Join(", ", saved.Parameters)}] in the checkpoint and '{live.Name}' of [{string.Join(", ", live.Parameters.Select(p => names[p]))}] here.");
            if (saved.WeightDecay != live.WeightDecay)
                Fail($"group '{live.Name}' has weight decay {saved.WeightDecay.ToString(CultureInfo.InvariantCulture)} in the checkpoint and {live.WeightDecay.ToString(CultureInfo.InvariantCulture)} here.");
        }
        if (manifest.Parameters.Count != parameters.Count || manifest.Parameters.Keys.Any(k => !parameters.ContainsKey(k)))
            Fail($"the checkpoint holds parameters [{string.Join(", ", manifest.Parameters.Keys)}]; given [{string.Join(", ", parameters.Keys)}].");
        foreach (var (name, saved) in manifest.Parameters)
        {
            Tensor value = parameters[name].Value;
            if (saved.DType != value.DType || !saved.Shape.SequenceEqual(value.Shape))
                Fail($"{name} is {saved.DType}[{string.Join(", ", saved.Shape)}] in the checkpoint and {value.Describe()} here.");
        }
    }

    private static void CheckTensor(SafeTensorsFile file, string name, Tensor value)
    {
        if (!file.Contains(name)) throw new InvalidFileException(file.Path, name, "is missing");
        SafeTensorInfo info = file[name];
        SafeTensorDType dtype = value.DType == DType.BF16 ? SafeTensorDType.BF16 : SafeTensorDType.F32;
        if (info.DType != dtype || !info.Shape.SequenceEqual(value.Shape))
            throw new InvalidFileException(file.Path, name, $"is {info.Describe()}; the parameter is {value.Describe()}");
    }

    private static void CheckStateTensor(SafeTensorsFile file, string name, StateBuffer buffer)
    {
        if (!file.Contains(name)) throw new InvalidFileException(file.Path, name, "is missing");
        SafeTensorInfo info = file[name];
        SafeTensorDType dtype = buffer.Element == StateElement.F32 ? SafeTensorDType.F32 : SafeTensorDType.U8;
        if (info.DType != dtype || info.Shape.Count != 1 || info.Shape[0] != buffer.Units)
            throw new InvalidFileException(file.Path, name, $"is {info.Describe()}; the optimizer's state needs {dtype}[{buffer.Units}]");
    }

    private static void CopyIn(SafeTensorsFile file, string name, Device device, DeviceBuffer buffer)
    {
        byte[] chunk = new byte[(int)Math.Min(CopyChunkBytes, Math.Max(buffer.SizeInBytes, 1))];
        for (long done = 0; done < buffer.SizeInBytes; done += chunk.Length)
        {
            Span<byte> part = chunk.AsSpan(0, (int)Math.Min(chunk.Length, buffer.SizeInBytes - done));
            file.ReadBytes(name, done, part);
            device.Upload(buffer, done, part);
        }
    }

    private static void Restore(CheckpointManifest manifest, Optimizer optimizer)
    {
        optimizer.PendingAccumulation = 0;
        optimizer.StepCount = manifest.StepCount;
        optimizer.SkippedSteps = manifest.SkippedSteps;
        optimizer.AccumulationSteps = Math.Max(1, manifest.AccumulationSteps);
        optimizer.MaxGradNorm = manifest.MaxGradNorm is double max ? (float)max : null;
        optimizer.OnNonFiniteGradients = manifest.OnNonFiniteGradients;
        optimizer.Schedule = manifest.Schedule is { } s
            ? LearningRateSchedule.FromParts(s.Kind, s.WarmupSteps, s.TotalSteps, s.MinimumFactor)
            : null;
        for (int g = 0; g < manifest.Groups.Count; g++) optimizer.Groups[g].LearningRate = (float)manifest.Groups[g].LearningRate;
    }
}
