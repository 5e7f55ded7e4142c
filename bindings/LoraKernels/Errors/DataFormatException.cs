// Raised when outside data (a serialised state, a file) cannot be read: malformed JSON, a missing
// or null key, a value of the wrong type, sizes that disagree with the data present, non-finite
// statistics. The message names the source, the key and what is wrong; nothing has been allocated
// or changed when it is thrown.
namespace LoraKernels;

public sealed class DataFormatException : LoraKernelsException
{
    public DataFormatException(string source, string key, string problem, Exception? innerException = null)
        : base($"{source}: {key} {problem}", innerException)
    {
        DataSource = source;
        Key = key;
        Problem = problem;
    }

    /// <summary>What was being read, e.g. "Nf4.ImportState (bitsandbytes 4-bit state)" or a file path.</summary>
    public string DataSource { get; }

    /// <summary>The key, entry or field that is wrong.</summary>
    public string Key { get; }

    /// <summary>What is wrong with it.</summary>
    public string Problem { get; }
}
