// Paged optimizer state (QLoRA's third idea): the state lives outside the memory the parameters use
// and moves through a small working window of it each step, so a state larger than that memory still
// trains. On CUDA (and the emulator, which runs the same code) the state is in pinned host memory and
// moves through two device staging buffers, the copy of the next chunk overlapping the update of this
// one; on the CPU it is in files, and each chunk is read into a resident window of the RAM budget,
// updated there and written back, so only the window stays resident. Paged and resident state give
// the same bits.
namespace LoraKernels.Optim;

public sealed record StatePaging
{
    /// <summary>The smallest working window: a few 8-bit blocks or fp32 elements of every state buffer.</summary>
    public const long MinimumWorkingBytes = 64 << 10;

    /// <param name="workingBytes">
    /// Bytes of working memory the state moves through: device memory for the two staging buffers on a
    /// GPU (half each), or the RAM budget on the CPU (one window the state's chunks are read into and written back from).
    /// </param>
    public StatePaging(long workingBytes)
    {
        if (workingBytes < MinimumWorkingBytes)
            throw new ArgumentOutOfRangeException(nameof(workingBytes), workingBytes,
                $"StatePaging: the working window must be at least {MinimumWorkingBytes} bytes.");
        WorkingBytes = workingBytes;
    }

    public long WorkingBytes { get; }

    /// <summary>The memory paged state lives in on <paramref name="device"/>: a paging file on the CPU, pinned host memory on a GPU.</summary>
    public static MemoryKind KindOn(Device device) => device.Kind == DeviceKind.Cpu ? MemoryKind.MappedFile : MemoryKind.PinnedHost;
}
