// Which modules an adapter config selects, as PEFT decides it (tuners_utils.check_target_module_exists,
// get_pattern_key): exclude_modules first; then target_modules as one regular expression matched
// against the whole module path, or as a list of names each matching the path exactly or as its
// last dotted components; with a list and layers_to_transform, the layer index found by
// layers_pattern (default: the number after any component) must be in the list. rank_pattern and
// alpha_pattern keys match a path exactly, or as a regular expression for its dotted tail.
// Python's `re` and .NET's regular expressions agree on the syntax PEFT configs use (classes,
// groups, alternation, quantifiers); every expression runs with a timeout.
using System.Text.RegularExpressions;

namespace LoraKernels.IO.Peft;

/// <summary>target_modules or exclude_modules: one regular expression, or a list of module names.</summary>
public sealed class PeftModuleSelector
{
    private readonly Regex? _regex;

    private PeftModuleSelector(string? regex, Regex? compiled, IReadOnlyList<string>? names)
    {
        RegexText = regex;
        _regex = compiled;
        Names = names;
    }

    /// <summary>The regular expression (matched against the whole path), or null for a list.</summary>
    public string? RegexText { get; }

    /// <summary>The module names (exact path or dotted suffix), or null for a regular expression.</summary>
    public IReadOnlyList<string>? Names { get; }

    /// <summary>PEFT's special value that adapts every linear layer but the output layer.</summary>
    public bool IsAllLinear => RegexText == "all-linear" || (Names is [var only] && only == "all-linear");

    public static PeftModuleSelector FromNames(IReadOnlyList<string> names) => new(null, null, names);

    internal static PeftModuleSelector FromRegex(string regex, PeftConfig config, string field)
    {
        if (regex == "all-linear") return new PeftModuleSelector(regex, null, null);
        return new PeftModuleSelector(regex, PeftTargeting.Compile($"^(?:{regex})$", config, field, regex), null);
    }

    /// <summary>Whether <paramref name="module"/> is selected (regex: a full match; names: equal, or ending with ".name").</summary>
    public bool Matches(string module)
    {
        ArgumentNullException.ThrowIfNull(module);
        if (IsAllLinear) return true;
        if (_regex is not null) return _regex.IsMatch(module);
        return Names!.Any(name => module == name || module.EndsWith("." + name, StringComparison.Ordinal));
    }

    /// <summary>Whether the match came from a list entry matched as a dotted suffix (the case layers_to_transform filters).</summary>
    internal bool MatchesBySuffix(string module) =>
        Names is not null && !Names.Contains(module) && Names.Any(name => module.EndsWith("." + name, StringComparison.Ordinal));

    public override string ToString() => RegexText is not null ? $"\"{RegexText}\"" : $"[{string.Join(", ", Names!.Select(n => $"\"{n}\""))}]";
}

public static class PeftTargeting
{
    private static readonly TimeSpan RegexTimeout = TimeSpan.FromSeconds(1);

    /// <summary>Whether <paramref name="config"/> adapts the module at <paramref name="module"/> (a dotted path in the base model).</summary>
    public static bool IsTargeted(PeftConfig config, string module)
    {
        ArgumentNullException.ThrowIfNull(config);
        ArgumentNullException.ThrowIfNull(module);
        try
        {
            return Targeted(config, module);
        }
        catch (RegexMatchTimeoutException)
        {
            throw config.Error("target_modules", $"a pattern matching \"{module}\" took longer than {RegexTimeout.TotalSeconds} s (a pathological regular expression?)");
        }
    }

    private static bool Targeted(PeftConfig config, string module)
    {
        if (config.ExcludeModules is { } exclude && exclude.Matches(module)) return false;
        if (config.TargetModules is not { } target) return false;
        if (!target.Matches(module)) return false;
        if (!target.MatchesBySuffix(module) || config.LayersToTransform is not { Count: > 0 } indices) return true;
        int? index = LayerIndex(config, module);
        return index is int found && indices.Contains(found);
    }

    /// <summary>The layer index PEFT reads from a module path for layers_to_transform, or null.</summary>
    internal static int? LayerIndex(PeftConfig config, string module)
    {
        IEnumerable<string> patterns = config.LayersPattern is { Count: > 0 } names
            ? names.Select(name => $"^.*\\.{name}\\.(\\d+)\\.")
            : [@"^.*\.[^.]*\.(\d+)\."];
        foreach (string pattern in patterns)
        {
            Match match = Compile(pattern, config, "layers_pattern", pattern).Match(module);
            if (match.Success && int.TryParse(match.Groups[1].ValueSpan, out int index)) return index;
        }
        return null;
    }

    /// <summary>PEFT's get_pattern_key: an exact key, else the first key matching the path's dotted tail as a regular expression.</summary>
    internal static T? PatternValue<T>(PeftConfig config, string field, IReadOnlyDictionary<string, T> patterns, string module) where T : struct
    {
        if (patterns.Count == 0) return null;
        if (patterns.TryGetValue(module, out T exact)) return exact;
        foreach (var (key, value) in patterns)
            if (Compile($"^(?:.*\\.)?(?:{key})$", config, field, key).IsMatch(module)) return value;
        return null;
    }

    internal static Regex Compile(string pattern, PeftConfig config, string field, string original)
    {
        try
        {
            return new Regex(pattern, RegexOptions.CultureInvariant, RegexTimeout);
        }
        catch (ArgumentException e)
        {
            throw config.Error(field, $"\"{original}\" is not a valid regular expression: {e.Message}");
        }
    }
}
