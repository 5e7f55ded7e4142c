// Training from a user's project: LoRA, QLoRA and DoRA layers fine-tuned on a synthetic classification
// task (a frozen random base; the labels come from the base plus a hidden rank-2 change), each for the
// same number of AdamW steps. Each must cut its cross-entropy by at least 30%, or the sample fails
// (DoRA moves slowest here: its rows keep the norms its magnitude vector says, so the logits can only
// grow as fast as the optimizer moves the magnitudes, where LoRA's can grow with B·A).
// The quick-start region below is README.md's C# example, word for word (a test keeps them equal).
using LoraKernels;
using LoraKernels.Autograd;
using LoraKernels.Layers;
using LoraKernels.Ops;
using LoraKernels.Optim;
using LoraKernels.Variants;

internal static class TrainingSample
{
    private const int Tokens = 64, InFeatures = 32, OutFeatures = 10, Steps = 60;

    public static bool Run()
    {
        var random = new Random(7);
        float[] Values(int count, double bound) => Enumerable.Range(0, count).Select(_ => (float)((random.NextDouble() * 2 - 1) * bound)).ToArray();
        float[] baseWeights = Values(OutFeatures * InFeatures, 0.2), inputs = Values(Tokens * InFeatures, 1.0);
        int[] labels = TeacherLabels(baseWeights, inputs, Values(OutFeatures * 2, 1.5), Values(2 * InFeatures, 1.0));

        bool ok = true;
        (float first, float last) = QuickStart(baseWeights, inputs, labels, Tokens, InFeatures, OutFeatures, Steps);
        ok &= Report("LoRA (quick start)", first, last);
        using (var w0 = Tensor.FromArray(Device.Cpu, baseWeights, OutFeatures, InFeatures))
        {
            var options = new AdapterOptions { Rank = 8, Alpha = 16 };
            using (var qlora = new QloraLinear(Device.Cpu, w0, null, options))
                ok &= Report("QLoRA (NF4 base, double quant)", Train(qlora, inputs, labels));
            using (var dora = new DoraLinear(Device.Cpu, w0, null, options))
                ok &= Report("DoRA, own loss via Backward(y, dy)", Train(dora, inputs, labels, ownLoss: true));
            using (var lora = new LoraLinear(Device.Cpu, w0, null, options))
                ok &= Report("LoRA+, 8-bit AdamW, paged state", Train(lora, inputs, labels, PagedEightBit(lora, 4 * Steps), accumulation: 4));
        }
        return ok;
    }

    private static (float First, float Last) QuickStart(float[] baseWeights, float[] inputs, int[] labels,
                                                        int tokens, int inFeatures, int outFeatures, int steps)
    {
        #region quickstart
        var device = Device.Select();                                    // LORAKERNELS_DEVICE, else cuda, else cpu
        using var w0 = Tensor.FromArray(device, baseWeights, outFeatures, inFeatures);   // frozen W0 [out, in]
        using var layer = new LoraLinear(device, w0, bias: null, new AdapterOptions { Rank = 8, Alpha = 16 });  // s = alpha/r
        using var optimizer = new AdamW(layer.Parameters(), lr: 1e-2f);
        using var x = Tensor.FromArray(device, inputs, tokens, inFeatures);             // [tokens, in]
        float first = 0, last = 0;
        for (int step = 0; step < steps; step++)
        {
            using var tape = new Tape();
            Variable logits = layer.Forward(tape, new Variable(x));                     // x W0ᵀ + s·(x Aᵀ) Bᵀ
            last = tape.CrossEntropyLoss(logits, labels);                               // or MseLoss, or Backward(y, dy)
            if (step == 0) first = last;
            tape.Backward();                                                            // fills layer.A.Grad, layer.B.Grad
            optimizer.Step();
            optimizer.ZeroGrad();
        }
        layer.Merge();                                                                  // W0 += s·B·A for inference
        #endregion
        return (first, last);
    }

    // The same loop for any adapter layer; ownLoss computes the loss and its gradient outside the tape
    // (as a user with a loss of their own would) and starts the backward pass from it.
    private static (float First, float Last) Train(IAdapterLayer layer, float[] inputs, int[] labels, bool ownLoss = false) =>
        Train(layer, inputs, labels, new AdamW(layer.Parameters(), lr: 1e-2f), accumulation: 1, ownLoss);

    // README.md's optimizer example, word for word (the "optimizer" region).
    private static Optimizer PagedEightBit(IAdapterLayer layer, int steps)
    {
        #region optimizer
        var optimizer = new AdamW8bit(LoraPlus.Groups(layer.Parameters(), lr: 2e-3f), paging: new StatePaging(256L << 20))
        {
            MaxGradNorm = 1f, AccumulationSteps = 4, Schedule = LearningRateSchedule.Cosine(totalSteps: steps / 4, warmupSteps: 2),
        };
        #endregion
        return optimizer;
    }

    private static (float First, float Last) Train(IAdapterLayer layer, float[] inputs, int[] labels, Optimizer optimizer, int accumulation,
                                                   bool ownLoss = false)
    {
        using Optimizer owned = optimizer;
        using var x = Tensor.FromArray(layer.Device, inputs, Tokens, InFeatures);
        float first = 0, last = 0;
        for (int step = 0; step < Steps * accumulation; step++)
        {
            using var tape = new Tape();
            Variable logits = layer.Forward(tape, new Variable(x));
            if (ownLoss)
            {
                using LossResult loss = Losses.CrossEntropy(logits.Value, labels);
                last = loss.Loss;
                tape.Backward(logits, loss.Gradient!);
            }
            else
            {
                last = tape.CrossEntropyLoss(logits, labels);
                tape.Backward();
            }
            if (step == 0) first = last;
            if (optimizer.Step()) optimizer.ZeroGrad();  // false while gradients accumulate
        }
        return (first, last);
    }

    // argmax over classes of x·(W0 + U·V)ᵀ, in double.
    private static int[] TeacherLabels(float[] w0, float[] x, float[] u, float[] v)
    {
        var labels = new int[Tokens];
        for (int t = 0; t < Tokens; t++)
        {
            double best = double.NegativeInfinity;
            for (int o = 0; o < OutFeatures; o++)
            {
                double logit = 0;
                for (int i = 0; i < InFeatures; i++)
                {
                    double weight = w0[o * InFeatures + i] + u[o * 2] * v[i] + u[o * 2 + 1] * v[InFeatures + i];
                    logit += x[t * InFeatures + i] * weight;
                }
                if (logit > best) (best, labels[t]) = (logit, o);
            }
        }
        return labels;
    }

    private static bool Report(string what, (float First, float Last) loss) => Report(what, loss.First, loss.Last);

    private static bool Report(string what, float first, float last)
    {
        bool ok = float.IsFinite(last) && last < 0.7f * first;
        Console.WriteLine($"{what}: cross-entropy {first:F3} → {last:F3} in {Steps} steps {(ok ? "ok" : "FAILED (expected at least 30% lower)")}");
        return ok;
    }
}
