// The GC stress program behind GcStressTests, run as a child process of the test program
// ("gc-stress DEVICE SECONDS MODE") so that tiered compilation can be switched off
// (DOTNET_TieredCompilation=0, what Native AOT always runs): optimised code lets the JIT drop a
// temporary's last reference before the native call that uses its memory returns, which tier-0
// code never does. A second thread forces collections and finalizers the whole time.
//
// Modes:
//   temporaries  layer.Forward(Tensor.FromArray(...)) and Ops on never-disposed temporaries, in a loop;
//                every result must equal, bit for bit, the one computed with live tensors.
//   dispose      a tensor disposed on another thread while an op uses it: the op either completes
//                with the right values or throws ObjectDisposedException; never a crash or wrong values.
// Exit codes: 0 passed, 2 a wrong value, 3 an unexpected exception, 64 bad arguments.
using System.Diagnostics;
using System.Globalization;
using System.Runtime.CompilerServices;
using LoraKernels.Layers;

namespace LoraKernels.Tests.Safety;

internal static class GcStressProgram
{
    // x is [Tokens, In] fp32 = 256 KiB: above glibc's mmap threshold, so a freed input is unmapped
    // and a read after free faults instead of reading stale bytes.
    private const int Tokens = 128, In = 512, Out = 192, Rank = 8;

    public static int Run(string[] args)
    {
        if (args.Length != 3 || !double.TryParse(args[1], NumberStyles.Float, CultureInfo.InvariantCulture, out double seconds))
        {
            Console.Error.WriteLine("usage: gc-stress cpu|simt SECONDS temporaries|dispose");
            return 64;
        }
        Device device = Device.FromName(args[0]);
        var data = new Support.TestData(11);
        float[] w0Values = data.NonZero(Out * In, 0.05f);
        float[] bValues = data.NonZero(Out * Rank, 0.5f);
        float[] x = data.NonZero(Tokens * In);

        using var w0 = Tensor.FromArray(device, w0Values, Out, In);
        using var layer = new LoraLinear(device, w0, bias: null, r: Rank, alpha: 16f, seed: 5) { Training = false };
        layer.B.Value.CopyFrom(bValues);
        float[] expected;
        using (var live = Tensor.FromArray(device, x, Tokens, In))
        using (Tensor y = layer.Forward(live))
            expected = y.ToArray();

        using var stop = new CancellationTokenSource();
        var collector = new Thread(() =>
        {
            while (!stop.IsCancellationRequested)
            {
                GC.Collect();
                GC.WaitForPendingFinalizers();
            }
        }) { IsBackground = true, Name = "gc-stress collector" };
        collector.Start();
        try
        {
            return args[2] switch
            {
                "temporaries" => Temporaries(device, layer, x, expected, seconds),
                "dispose" => CrossThreadDispose(device, layer, x, expected, seconds),
                _ => 64,
            };
        }
        catch (Exception e)
        {
            Console.Error.WriteLine($"unexpected exception: {e}");
            return 3;
        }
        finally
        {
            stop.Cancel();
            collector.Join();
        }
    }

    private static int Temporaries(Device device, LoraLinear layer, float[] x, float[] expected, double seconds)
    {
        var clock = Stopwatch.StartNew();
        long calls = 0;
        while (clock.Elapsed.TotalSeconds < seconds)
        {
            if (!Same(ForwardOfTemporary(device, layer, x), expected, "layer.Forward(temporary)")) return 2;
            if (!Same(OpOfTemporaries(device, layer, x), expected, "Lora.Forward(temporaries)")) return 2;
            calls += 2;
        }
        Console.WriteLine($"gc-stress temporaries on {device}: {calls} calls, all bit-identical to the live-tensor result");
        return 0;
    }

    private static int CrossThreadDispose(Device device, LoraLinear layer, float[] x, float[] expected, double seconds)
    {
        var clock = Stopwatch.StartNew();
        long completed = 0, refused = 0;
        var random = new Random(3);
        while (clock.Elapsed.TotalSeconds < seconds)
        {
            var input = Tensor.FromArray(device, x, Tokens, In);
            int delay = random.Next(0, 2000);
            var disposer = new Thread(() =>
            {
                Thread.SpinWait(delay);
                input.Dispose();
            });
            disposer.Start();
            try
            {
                using Tensor y = layer.Forward(input);
                if (!Same(y.ToArray(), expected, "layer.Forward(input disposed on another thread)")) return 2;
                completed++;
            }
            catch (ObjectDisposedException)
            {
                refused++;
            }
            disposer.Join();
        }
        Console.WriteLine($"gc-stress dispose on {device}: {completed} calls completed with the right values, {refused} refused with ObjectDisposedException");
        return 0;
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static float[] ForwardOfTemporary(Device device, LoraLinear layer, float[] x)
    {
        using Tensor y = layer.Forward(Tensor.FromArray(device, x, Tokens, In));
        return y.ToArray();
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static float[] OpOfTemporaries(Device device, LoraLinear layer, float[] x)
    {
        var (y, u) = Lora.Forward(Tensor.FromArray(device, x, Tokens, In), layer.W0.Clone(), null, layer.A.Value.Clone(),
                                  layer.B.Value.Clone(), layer.Scale);
        u.Dispose();
        using (y) return y.ToArray();
    }

    private static bool Same(float[] actual, float[] expected, string what)
    {
        for (int i = 0; i < expected.Length; i++)
        {
            if (BitConverter.SingleToInt32Bits(actual[i]) != BitConverter.SingleToInt32Bits(expected[i]))
            {
                Console.Error.WriteLine($"{what}: element {i} is {actual[i]:R}, expected {expected[i]:R}");
                return false;
            }
        }
        return true;
    }
}
