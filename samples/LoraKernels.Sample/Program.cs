// A user's first LoraKernels program, built against the NuGet package: a LoRA layer on the CPU, its
// forward pass checked against the formula y = x·W0ᵀ + b + s·(x·Aᵀ)·Bᵀ computed here by hand, its
// adapter saved as a PEFT adapter and read back, and LoRA, QLoRA and DoRA layers trained on a small
// task (Training.cs). Prints one line per check; exits 1 if any fails.
using LoraKernels;
using LoraKernels.IO.Peft;
using LoraKernels.Layers;

const int tokens = 3, inFeatures = 8, outFeatures = 6, rank = 2;
const float alpha = 4f;
var random = new Random(42);
float[] Values(int count) => Enumerable.Range(0, count).Select(_ => (float)(random.NextDouble() - 0.5)).ToArray();
float[] w0 = Values(outFeatures * inFeatures), bias = Values(outFeatures), x = Values(tokens * inFeatures);
float[] a = Values(rank * inFeatures), b = Values(outFeatures * rank);

Device device = Device.Cpu;
Console.WriteLine($"LoraKernels from the NuGet package on {device.Name}");
using var weight = Tensor.FromArray(device, w0, outFeatures, inFeatures);
using var biasTensor = Tensor.FromArray(device, bias, outFeatures);
using var layer = new LoraLinear(device, weight, biasTensor, rank, alpha) { Training = false };
layer.A.Value.CopyFrom(a);
layer.B.Value.CopyFrom(b);
using var input = Tensor.FromArray(device, x, tokens, inFeatures);
using Tensor output = layer.Forward(input);
float[] y = output.ToArray();

double worst = 0;
double scale = alpha / rank;
for (int t = 0; t < tokens; t++)
    for (int o = 0; o < outFeatures; o++)
    {
        double expected = bias[o];
        for (int i = 0; i < inFeatures; i++) expected += (double)x[t * inFeatures + i] * w0[o * inFeatures + i];
        for (int k = 0; k < rank; k++)
        {
            double u = 0;
            for (int i = 0; i < inFeatures; i++) u += (double)x[t * inFeatures + i] * a[k * inFeatures + i];
            expected += scale * u * b[o * rank + k];
        }
        worst = Math.Max(worst, Math.Abs(expected - y[t * outFeatures + o]));
    }
bool forwardOk = worst < 1e-5 && y.Any(v => v != 0);
Console.WriteLine($"LoRA forward [{tokens}, {inFeatures}] -> [{tokens}, {outFeatures}]: max |error| = {worst:E2} {(forwardOk ? "ok" : "FAILED")}");

string folder = Path.Combine(Path.GetTempPath(), $"lorakernels-sample-{Environment.ProcessId}");
PeftAdapter.FromLayers([new("model.layers.0.self_attn.q_proj", layer)]).Save(folder);
PeftAdapter reloaded = PeftAdapter.Load(folder);
bool peftOk = reloaded.Module("model.layers.0.self_attn.q_proj")?["lora_B.weight"]?.Values.SequenceEqual(b) == true;
Console.WriteLine($"PEFT adapter saved and read back ({reloaded.Variant}, r = {reloaded.Config.Rank}): {(peftOk ? "ok" : "FAILED")}");
Directory.Delete(folder, recursive: true);

bool opsOk = OpsSample.Run();
bool trainingOk = TrainingSample.Run();
bool allOk = forwardOk && peftOk && opsOk && trainingOk;
Console.WriteLine(allOk ? "sample: OK" : "sample: FAILED");
return allOk ? 0 : 1;
