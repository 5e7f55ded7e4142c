// activations.cuh: the scalar activations the MoE experts (kernels/moe.cu: SwiGLU) and the Mamba block
// (kernels/ssm.cu: SiLU, softplus) share, one copy for the GPU kernels and the CPU library
// (native/cpu/moe.cpp, ssm.cpp include it in host mode), so every backend computes them alike.
#pragma once

#include "common.cuh"

#if defined(LK_MODE_HOST)
#include <math.h>
#endif

// σ(x) = 1 / (1 + e^-x), from e^-|x| so that no exponential overflows for either sign.
LK_HD float lk_sigmoid(float x) {
    const float e = expf(-fabsf(x));
    return x >= 0.0f ? 1.0f / (1.0f + e) : e / (1.0f + e);
}

// silu(x) = x·σ(x) (PyTorch's F.silu, Mamba's and SwiGLU's activation).
LK_HD float lk_silu(float x) { return x * lk_sigmoid(x); }

// d silu / dx = σ(x)·(1 + x·(1 - σ(x))).
LK_HD float lk_silu_grad(float x) {
    const float s = lk_sigmoid(x);
    return s * (1.0f + x * (1.0f - s));
}

// softplus(x) = log(1 + e^x), and x itself past 20 (PyTorch's F.softplus threshold, which Mamba's
// selective-scan kernel uses for Δ: `delta <= 20 ? log1pf(expf(delta)) : delta`).
LK_HD float lk_softplus(float x) { return x <= 20.0f ? log1pf(expf(x)) : x; }
