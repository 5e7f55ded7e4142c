// optim_segments.cuh: the tensor lists of the multi-tensor optimizer kernels, written once for the
// GPU kernels (kernels/optim.cu) and the CPU kernels (native/cpu/optim.cpp, through
// native/include/lora_kernels_optim.h); the C# launcher mirrors them field for field
// (bindings/LoraKernels/Optim/OptimizerSegments.cs, whose test checks the sizes).
//
// A segment is a contiguous run of one parameter's elements with its gradient and optimizer state:
// a whole parameter, or the slice that a paged optimizer moves through memory at once. One launch
// (one CPU call) updates a whole list of segments. On the GPU, segment s owns the grid's blocks
// first_block .. first_block + blocks(n) - 1, where blocks(n) = ceil(n / elements per block);
// the launcher fills first_block as the running sum, so a block finds its segment by a binary search.
//
// Parameters: `param` is the fp32 value updated in place (the parameter itself, or the fp32 master
// copy of a bf16 parameter) and `param_bf16`, when non-null, receives it rounded to bf16 after the
// update. With `param` null, `param_bf16` is read, updated in fp32 and rounded back (bitsandbytes'
// 8-bit optimizers update a bf16 parameter directly). The scalar coefficients are computed on the
// host in double and rounded once, so the CPU, the emulator and the GPU start from the same floats.
//
// Plain C (no C++ feature, no include): the CPU library's C ABI includes this file.
#pragma once

// AdamW with fp32 state m, v (lk_optim_adamw_f32, lk_cpu_adamw).
typedef struct lk_adamw_segment {
    float* param;                 // [n] fp32 value, or null (see above)
    unsigned short* param_bf16;   // [n] bf16 parameter, or null
    const float* grad;            // [n]
    float* m;                     // [n] first moment
    float* v;                     // [n] second moment
    long long n;
    long long first_block;        // GPU: this segment's first block in the grid
    float decay;                  // 1 - lr·weight_decay
    float step_size;              // torch form: -lr / (1 - β1^t); bitsandbytes form: -lr·√(1 - β2^t) / (1 - β1^t)
    float bias_correction2_sqrt;  // torch form: √(1 - β2^t); bitsandbytes form: 1
    float eps;                    // torch form: eps; bitsandbytes form: eps·√(1 - β2^t)
} lk_adamw_segment;

// bitsandbytes' 8-bit AdamW: m and v as 8-bit codes of the signed and unsigned dynamic maps with
// one fp32 absmax per block of 256 elements (lk_optim_adamw8bit_f32, lk_cpu_adamw8bit). A segment
// starts at a block boundary of its parameter.
typedef struct lk_adamw8bit_segment {
    float* param;                 // [n] fp32 value, or null
    unsigned short* param_bf16;   // [n] bf16 parameter, or null
    const float* grad;            // [n]
    unsigned char* m_codes;       // [n] signed dynamic map codes
    unsigned char* v_codes;       // [n] unsigned dynamic map codes
    float* m_absmax;              // [ceil(n / 256)]
    float* v_absmax;              // [ceil(n / 256)]
    long long n;
    long long first_block;        // GPU: this segment's first block (one block per 256 elements)
    float decay;                  // 1 - lr·weight_decay, applied after the step (bitsandbytes)
    float step_size;              // -lr·√(1 - β2^t) / (1 - β1^t)
    float eps;                    // eps·√(1 - β2^t)
    float unused;                 // keeps the size a multiple of 8 on every ABI
} lk_adamw8bit_segment;

// A gradient for the global-norm pass (lk_optim_grad_sumsq_f32, lk_cpu_grad_sumsq).
typedef struct lk_grad_span {
    const float* grad;
    long long n;
    long long first_block;        // GPU: this span's first block
} lk_grad_span;
