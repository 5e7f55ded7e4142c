// A file this library reads (or is about to write) is not what its format requires. Names the
// file and, where one is to blame, the key inside it (a tensor name, a config field), and says
// what is wrong. SafeTensorsFormatException and PeftFormatException narrow it to one format.
namespace LoraKernels;

public class InvalidFileException : LoraKernelsException
{
    public InvalidFileException(string path, string? key, string problem, Exception? innerException = null)
        : base(key is null ? $"{path}: {problem}" : $"{path}: \"{key}\": {problem}", innerException)
    {
        Path = path;
        Key = key;
        Problem = problem;
    }

    /// <summary>The file (or a description of the source when it is not a file).</summary>
    public string Path { get; }

    /// <summary>The tensor key or config field at fault, or null when the fault is in the file as a whole.</summary>
    public string? Key { get; }

    /// <summary>What is wrong, without the file and key.</summary>
    public string Problem { get; }
}
