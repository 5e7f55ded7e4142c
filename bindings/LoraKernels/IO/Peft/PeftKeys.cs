// PEFT's tensor keys (REFERENCE.md §9.2). Saved keys are base_model.model.<module path>.<component>
// with the adapter name removed; PEFT's loader also accepts the in-memory forms that still carry it
// (…lora_A.default.weight, …vera_lambda_b.default, …lora_magnitude_vector.default.weight), so this
// parser does too and returns the saved form. Keys of no adapter parameter are full tensors saved
// beside the adapter (modules_to_save, bias="all"), returned under their base-model name.
namespace LoraKernels.IO.Peft;

internal enum PeftKeyKind { ModuleTensor, Shared, Saved }

/// <summary>A parsed key: the module path and saved component (module tensors), the saved key (shared), or the base-model name (saved tensors).</summary>
internal readonly record struct PeftKey(PeftKeyKind Kind, string Module, string Component);

internal static class PeftKeys
{
    /// <summary>The saved key of <paramref name="component"/> of <paramref name="module"/>.</summary>
    public static string Format(string module, string component) => $"{PeftFormats.ModulePrefix}{module}.{component}";

    /// <summary>Parses <paramref name="key"/> of a <paramref name="format"/> checkpoint; throws PeftFormatException naming it when it is not PEFT's naming.</summary>
    public static PeftKey Parse(string key, PeftFormat format, string adapterName, string source)
    {
        foreach (PeftModuleTensor shared in format.SharedTensors)
            if (key == shared.Component || key == $"{shared.Component}.{adapterName}")
                return new PeftKey(PeftKeyKind.Shared, "", shared.Component);
        if (!key.StartsWith(PeftFormats.ModulePrefix, StringComparison.Ordinal))
            throw new PeftFormatException(source, key, $"is not a PEFT adapter key: every key starts with \"{PeftFormats.ModulePrefix}\" and the module path");
        string[] parts = key[PeftFormats.ModulePrefix.Length..].Split('.');
        if (parts.Any(p => p.Length == 0))
            throw new PeftFormatException(source, key, "has an empty path component");
        var parameters = format.Parameters.ToHashSet(StringComparer.Ordinal);
        int at = Array.FindIndex(parts, parameters.Contains);
        if (at < 0)
        {
            foreach (PeftFormat other in PeftFormats.All.Where(f => f != format))
                if (parts.Any(p => other.Parameters.Contains(p) && !parameters.Contains(p)))
                    throw new PeftFormatException(source, key, $"is a {other.PeftType} tensor, but adapter_config.json says peft_type {format.PeftType}");
            if (parts[^1] is not ("weight" or "bias") || parts.Length < 2)
                throw new PeftFormatException(source, key,
                    $"names no {format.PeftType} parameter ({string.Join(", ", parameters)}) and is not a saved module's weight or bias");
            // modules_to_save (…score.modules_to_save.<adapter>.weight in memory) and bias="all"/"lora_only" (…base_layer.bias).
            var path = parts.ToList();
            int wrapped = path.IndexOf("modules_to_save");
            if (wrapped >= 0 && wrapped + 1 < path.Count - 1) path.RemoveRange(wrapped, 2);
            path.Remove("base_layer");
            return new PeftKey(PeftKeyKind.Saved, string.Join('.', path.Take(path.Count - 1)), string.Join('.', path));
        }
        if (at == 0)
            throw new PeftFormatException(source, key, "has no module path before the adapter parameter");
        string module = string.Join('.', parts.Take(at));
        var tail = parts.Skip(at + 1).ToList();
        if (tail.Count > 0 && tail[0] == adapterName) tail.RemoveAt(0);
        string component = parts[at] + (tail.Count > 0 ? "." + string.Join('.', tail) : "");
        // DoRA's magnitude: saved without ".weight", which PEFT strips (and re-adds on load).
        if (component == "lora_magnitude_vector.weight") component = "lora_magnitude_vector";
        if (format.Find(component) is null)
            throw new PeftFormatException(source, key,
                $"component \"{component}\" is not one of {format.PeftType}'s ({string.Join(", ", format.ModuleTensors.Select(t => t.Component))})");
        return new PeftKey(PeftKeyKind.ModuleTensor, module, component);
    }
}
