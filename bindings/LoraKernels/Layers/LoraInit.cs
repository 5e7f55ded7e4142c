// How a low-rank delta's A and B start: PEFT's init_lora_weights, one value per option it offers
// that this library implements. REFERENCE.md section 1 gives the distributions.
namespace LoraKernels.Layers;

public enum LoraInit
{
    /// <summary>init_lora_weights=True: A ~ U(±1/√in) (kaiming-uniform, a = √5), B = 0.</summary>
    Default,
    /// <summary>init_lora_weights="gaussian": A ~ N(0, (1/r)²), B = 0.</summary>
    Gaussian,
    /// <summary>
    /// init_lora_weights="pissa" / "pissa_niter_K": A and B from W0's top-r singular triplets and the base
    /// replaced by the residual (Pissa.CreateLayer builds such a layer; a constructor cannot).
    /// </summary>
    Pissa,
}
