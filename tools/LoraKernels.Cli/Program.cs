// lora: PEFT adapters and safetensors models from the command line, with LoraKernels.
//
//   lora variants [--json]                                   the variant catalogue
//   lora inspect <adapter dir | file.safetensors> [--json]   tensors, shapes, dtypes, variant, rank, parameters
//   lora merge <base.safetensors> <adapter> -o <out> [--device cpu|simt|cuda] [--json]
//   lora quantize <in.safetensors> -o <out> --nf4|--fp4 [--double-quant] [--block-size 64] [--json]
//   lora demo [--device ...] [--json]                        train, save as PEFT, inspect, merge, quantize, in a temp folder
//   lora bench [--size-mib 256] [--json]                     safetensors and merge throughput on a generated file
//
// Exit codes (stable, for scripts): 0 success; 2 usage error; 3 invalid input file (malformed
// safetensors or PEFT files); 4 adapter does not fit the model (AdapterMismatchException);
// 5 not supported in this build (e.g. LoKr); 6 file system error (missing file,
// permission); 1 any other failure. Errors go to stderr as "lora: <message>"; with --json, stdout
// holds only the JSON result.
using LoraKernels.Cli;

return Cli.Run(args);

namespace LoraKernels.Cli
{
    internal static class ExitCodes
    {
        public const int Success = 0, Failure = 1, Usage = 2, InvalidInput = 3, Mismatch = 4, NotSupported = 5, FileSystem = 6;
    }

    /// <summary>A command-line mistake: reported with the usage, exit code 2.</summary>
    internal sealed class UsageException(string message) : Exception(message);

    /// <summary>Positional arguments and --options of one command, checked against what it accepts.</summary>
    internal sealed class Arguments
    {
        private readonly Dictionary<string, string?> _options = new(StringComparer.Ordinal);

        public Arguments(IEnumerable<string> args, IReadOnlySet<string> flags, IReadOnlySet<string> valued)
        {
            var list = args.ToList();
            for (int i = 0; i < list.Count; i++)
            {
                string arg = list[i];
                if (arg == "-o") arg = "--output";
                if (!arg.StartsWith("--", StringComparison.Ordinal) || arg == "--")
                {
                    Positional.Add(arg);
                    continue;
                }
                string name = arg, value = "";
                int equals = arg.IndexOf('=');
                if (equals > 0) (name, value) = (arg[..equals], arg[(equals + 1)..]);
                if (flags.Contains(name) && equals < 0) _options[name] = null;
                else if (valued.Contains(name))
                {
                    if (equals < 0)
                    {
                        if (i + 1 >= list.Count) throw new UsageException($"{name} needs a value");
                        value = list[++i];
                    }
                    _options[name] = value;
                }
                else throw new UsageException($"unknown option {name}");
            }
        }

        public List<string> Positional { get; } = new();
        public bool Has(string name) => _options.ContainsKey(name);
        public string? Value(string name) => _options.TryGetValue(name, out string? value) ? value : null;
        public bool Json => Has("--json");

        public int Int(string name, int fallback) =>
            Value(name) is not { } text ? fallback
            : int.TryParse(text, System.Globalization.NumberStyles.Integer, System.Globalization.CultureInfo.InvariantCulture, out int value) && value > 0
                ? value : throw new UsageException($"{name} must be a positive integer, got '{text}'");

        public string Required(int index, string what) =>
            index < Positional.Count ? Positional[index] : throw new UsageException($"missing {what}");

        public void NoMorePositional(int count)
        {
            if (Positional.Count > count) throw new UsageException($"unexpected argument '{Positional[count]}'");
        }

        public Device Device()
        {
            string? name = Value("--device");
            try
            {
                return LoraKernels.Device.Select(name);
            }
            catch (ArgumentException e)
            {
                throw new UsageException(e.Message);
            }
        }
    }

    internal static class Cli
    {
        public const string Usage = """
            usage: lora <command> [arguments]

              variants [--json]                                      the catalogue of LoRA variants
              inspect <adapter dir | file.safetensors> [--json]      tensors, shapes, dtypes, variant, rank, parameter count
              merge <base.safetensors> <adapter dir> -o <out.safetensors> [--device cpu|simt|cuda] [--json]
                                                                     merge_and_unload into a new safetensors (4-bit bases requantized)
              quantize <in.safetensors> -o <out.safetensors> --nf4|--fp4 [--double-quant] [--block-size N] [--device D] [--json]
                                                                     bitsandbytes 4-bit linear weights (embeddings and lm_head stay dense)
              demo [--device D] [--json]                             train a LoRA, save it as PEFT, inspect, merge and quantize it
              bench [--size-mib N] [--json]                          safetensors read/write and merge throughput on a generated model

            exit codes: 0 ok, 1 failure, 2 usage, 3 invalid input file, 4 adapter does not fit the model,
                        5 not supported in this build, 6 file system error
            """;

        public static int Run(string[] args)
        {
            if (args.Length == 0 || args[0] is "-h" or "--help" or "help")
            {
                Console.Out.WriteLine(Usage);
                return args.Length == 0 ? ExitCodes.Usage : ExitCodes.Success;
            }
            string command = args[0];
            string[] rest = args[1..];
            try
            {
                return command switch
                {
                    "variants" => Commands.Variants(new Arguments(rest, Set("--json"), Set())),
                    "inspect" => Commands.Inspect(new Arguments(rest, Set("--json"), Set())),
                    "merge" => Commands.Merge(new Arguments(rest, Set("--json"), Set("--output", "--device"))),
                    "quantize" => Commands.Quantize(new Arguments(rest, Set("--json", "--nf4", "--fp4", "--double-quant"), Set("--output", "--block-size", "--device"))),
                    "demo" => Commands.Demo(new Arguments(rest, Set("--json"), Set("--device"))),
                    "bench" => Commands.Bench(new Arguments(rest, Set("--json"), Set("--size-mib"))),
                    _ => throw new UsageException($"unknown command '{command}'"),
                };
            }
            catch (UsageException e)
            {
                Console.Error.WriteLine($"lora: {e.Message}\n\n{Usage}");
                return ExitCodes.Usage;
            }
            catch (InvalidFileException e)
            {
                return Fail(ExitCodes.InvalidInput, e.Message);
            }
            catch (AdapterMismatchException e)
            {
                return Fail(ExitCodes.Mismatch, e.Message);
            }
            catch (NotSupportedException e)
            {
                return Fail(ExitCodes.NotSupported, e.Message);
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                return Fail(ExitCodes.FileSystem, e.Message);
            }
            catch (Exception e) when (e is ArgumentException or LoraKernelsException or InvalidOperationException)
            {
                return Fail(ExitCodes.Failure, e.Message);
            }
        }

        private static int Fail(int code, string message)
        {
            Console.Error.WriteLine($"lora: {message}");
            return code;
        }

        private static HashSet<string> Set(params string[] names) => new(names, StringComparer.Ordinal);
    }
}
