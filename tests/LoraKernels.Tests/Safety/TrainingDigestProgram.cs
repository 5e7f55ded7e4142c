// "train-digest DEVICE": trains a small LoRA MLP layer for a few steps and prints the SHA-256 of
// the final parameters' bits and the last loss's bits. DeterminismTests runs it in child processes
// with different LORAKERNELS_CPU_ISA values, since the ISA is chosen once per process.
using System.Security.Cryptography;
using LoraKernels.Autograd;
using LoraKernels.Layers;
using LoraKernels.Optim;

namespace LoraKernels.Tests.Safety;

internal static class TrainingDigestProgram
{
    public static int Run(string[] args)
    {
        if (args.Length != 1)
        {
            Console.Error.WriteLine("usage: train-digest cpu|simt");
            return 64;
        }
        Console.WriteLine($"digest {Digest(Device.FromName(args[0]))}");
        return 0;
    }

    /// <summary>Eight AdamW steps of LoRA (dropout on) then ReLU and MSE on fixed data; the hex digest of A, B and the losses.</summary>
    public static string Digest(Device device)
    {
        const int m = 37, inFeatures = 300, outFeatures = 70, r = 8;
        var data = new Support.TestData(77);
        using Tensor w0 = Tensor.FromArray(device, data.NonZero(outFeatures * inFeatures, 0.05f), outFeatures, inFeatures);
        using Tensor x = Tensor.FromArray(device, data.NonZero(m * inFeatures), m, inFeatures);
        using Tensor target = Tensor.FromArray(device, data.NonZero(m * outFeatures), m, outFeatures);
        using var layer = new LoraLinear(device, w0, null, r, 16f, dropout: 0.1f, seed: 9);
        using var optimizer = new AdamW(layer.Parameters(), lr: 1e-2f);
        using var tape = new Tape();
        var bits = new List<byte>();
        for (int step = 0; step < 8; step++)
        {
            tape.Reset();
            float loss = tape.MseLoss(tape.Relu(layer.Forward(tape, new Variable(x))), target);
            bits.AddRange(BitConverter.GetBytes(loss));
            tape.Backward();
            optimizer.Step();
            optimizer.ZeroGrad();
        }
        foreach (float v in layer.A.Value.ToArray().Concat(layer.B.Value.ToArray())) bits.AddRange(BitConverter.GetBytes(v));
        return Convert.ToHexString(SHA256.HashData(bits.ToArray()));
    }
}
