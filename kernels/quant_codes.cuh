// quant_codes.cuh: bitsandbytes' quantization codes, written once for the kernels and the CPU.
//
// The NF4 and FP4 4-bit codes with their encoders (REFERENCE.md §8.1, §8.2) and the dynamic 8-bit
// maps with bnb's nearest-code search (§8.4, §8.6, Appendix B): signed (nested absmax of double
// quantization, the first moment of 8-bit optimizers) and unsigned (the second moment). Every table
// is a float32 bit pattern copied from REFERENCE.md, so no rounding of a decimal literal creeps in.
// kernels/nf4.cu, kernels/optim.cu and native/cpu (nf4_format.cpp, through nf4_format.h) include this
// file; tests keep their own independent copies of the tables.
//
// Under NVRTC/nvcc the tables live in __constant__ memory (each family compiles alone, so one
// definition per module); under the emulator and on the host they are C++17 inline variables.
#pragma once

#include "common.cuh"

#if defined(LK_MODE_CUDA)
#define LK_CODE_TABLE __constant__ const
#define LK_CODE_FN LK_DEVICE  // reads __constant__ tables: device code only
#else
#define LK_CODE_TABLE inline constexpr
#define LK_CODE_FN inline
#endif

constexpr int kLkQuantNf4 = 0;   // lk_quant_stats.quant_type and QuantType.Nf4
constexpr int kLkQuantFp4 = 1;   // QuantType.Fp4
constexpr int kLkNestedBlock = 256;  // first-level absmax values per nested block (bnb's fixed 256)
constexpr int kLkQuantTableWords = 16 + 256;  // fp32 words of a 4-bit code table and a dynamic map in shared memory

// NF4 code values, index = 4-bit code (§8.1).
LK_CODE_TABLE lk_u32 lk_nf4_code_bits[16] = {
    0xbf800000u, 0xbf3239b1u, 0xbf066b30u, 0xbeca32a0u, 0xbe91a24du, 0xbe3d353fu, 0xbdba7871u, 0x00000000u,
    0x3da2faffu, 0x3e24cae3u, 0x3e7c04ddu, 0x3ead033au, 0x3ee1a4b8u, 0x3f1007abu, 0x3f3913b3u, 0x3f800000u,
};
// bnb's NF4 thresholds t0..t14: the float32 midpoints of neighbouring codes.
LK_CODE_TABLE lk_u32 lk_nf4_midpoint_bits[15] = {
    0xbf591cd8u, 0xbf1c5270u, 0xbeeb8480u, 0xbeadea76u, 0xbe703cecu, 0xbe0d38bcu, 0xbd3a7871u, 0x3d22faffu,
    0x3df64862u, 0x3e5067e0u, 0x3e9582d4u, 0x3ec753f9u, 0x3f006d04u, 0x3f248dafu, 0x3f5c89dau,
};
// FP4 (bnb's kernel LUT, §8.2): bit 3 is the sign, bits 0-2 index the magnitudes
// {0, 0.0052083, 0.6667, 1, 0.3333, 0.5, 0.1667, 0.25}; code 8 is -0.0.
LK_CODE_TABLE lk_u32 lk_fp4_code_bits[16] = {
    0x00000000u, 0x3baaaaabu, 0x3f2aaaabu, 0x3f800000u, 0x3eaaaaabu, 0x3f000000u, 0x3e2aaaabu, 0x3e800000u,
    0x80000000u, 0xbbaaaaabu, 0xbf2aaaabu, 0xbf800000u, 0xbeaaaaabu, 0xbf000000u, 0xbe2aaaabu, 0xbe800000u,
};
// create_dynamic_map(signed=True) (Appendix B).
LK_CODE_TABLE lk_u32 lk_dynamic_signed_bits[256] = {
    0xbf7e3333u, 0xbf7a9999u, 0xbf770000u, 0xbf736666u, 0xbf6fccccu, 0xbf6c3333u, 0xbf68999au, 0xbf650000u,
    0xbf616666u, 0xbf5dccccu, 0xbf5a3333u, 0xbf569999u, 0xbf530000u, 0xbf4f6666u, 0xbf4bccccu, 0xbf483333u,
    0xbf44999au, 0xbf410000u, 0xbf3d6667u, 0xbf39cccdu, 0xbf363334u, 0xbf32999au, 0xbf2f0000u, 0xbf2b6667u,
    0xbf27cccdu, 0xbf243333u, 0xbf20999au, 0xbf1d0000u, 0xbf196666u, 0xbf15cccdu, 0xbf123334u, 0xbf0e999au,
    0xbf0b0000u, 0xbf076666u, 0xbf03cccdu, 0xbf003333u, 0xbef93334u, 0xbef20000u, 0xbeeaccccu, 0xbee3999au,
    0xbedc6666u, 0xbed53332u, 0xbece0000u, 0xbec6ccccu, 0xbebf999au, 0xbeb86666u, 0xbeb13332u, 0xbeaa0000u,
    0xbea2ccccu, 0xbe9b999au, 0xbe946666u, 0xbe8d3334u, 0xbe860000u, 0xbe7d999au, 0xbe6f3334u, 0xbe60cccdu,
    0xbe526666u, 0xbe440000u, 0xbe359999u, 0xbe273333u, 0xbe18cccdu, 0xbe0a6666u, 0xbdf80000u, 0xbddb3334u,
    0xbdc9eb85u, 0xbdc428f5u, 0xbdbe6667u, 0xbdb8a3d7u, 0xbdb2e148u, 0xbdad1eb8u, 0xbda75c28u, 0xbda1999au,
    0xbd9bd70au, 0xbd96147bu, 0xbd9051ebu, 0xbd8a8f5du, 0xbd84cccdu, 0xbd7e147au, 0xbd728f5du, 0xbd670a3du,
    0xbd5b851fu, 0xbd500000u, 0xbd447ae1u, 0xbd38f5c3u, 0xbd2d70a3u, 0xbd21eb85u, 0xbd166667u, 0xbd0ae147u,
    0xbcfeb852u, 0xbce7ae13u, 0xbcd0a3d7u, 0xbcb9999au, 0xbca28f5cu, 0xbc8b851fu, 0xbc68f5c3u, 0xbc3ae148u,
    0xbc1f3b64u, 0xbc160418u, 0xbc0ccccdu, 0xbc039581u, 0xbbf4bc6au, 0xbbe24dd3u, 0xbbcfdf3bu, 0xbbbd70a4u,
    0xbbab020du, 0xbb989374u, 0xbb8624ddu, 0xbb676c8au, 0xbb428f5cu, 0xbb1db22du, 0xbaf1a9fcu, 0xbaa7ef9du,
    0xba7765ffu, 0xba59e83eu, 0xba3c6a80u, 0xba1eecc1u, 0xba016f01u, 0xb9c7e283u, 0xb98ce705u, 0xb923d70bu,
    0xb8ba1f4bu, 0xb88aefb3u, 0xb8378034u, 0xb7b24206u, 0xb70205ffu, 0xb65a1a94u, 0xb513a3b7u, 0x00000000u,
    0x3513a3b7u, 0x365a1a94u, 0x370205ffu, 0x37b24206u, 0x38378034u, 0x388aefb3u, 0x38ba1f4bu, 0x3923d70bu,
    0x398ce705u, 0x39c7e283u, 0x3a016f01u, 0x3a1eecc1u, 0x3a3c6a80u, 0x3a59e83eu, 0x3a7765ffu, 0x3aa7ef9du,
    0x3af1a9fcu, 0x3b1db22du, 0x3b428f5cu, 0x3b676c8au, 0x3b8624ddu, 0x3b989374u, 0x3bab020du, 0x3bbd70a4u,
    0x3bcfdf3bu, 0x3be24dd3u, 0x3bf4bc6au, 0x3c039581u, 0x3c0ccccdu, 0x3c160418u, 0x3c1f3b64u, 0x3c3ae148u,
    0x3c68f5c3u, 0x3c8b851fu, 0x3ca28f5cu, 0x3cb9999au, 0x3cd0a3d7u, 0x3ce7ae13u, 0x3cfeb852u, 0x3d0ae147u,
    0x3d166667u, 0x3d21eb85u, 0x3d2d70a3u, 0x3d38f5c3u, 0x3d447ae1u, 0x3d500000u, 0x3d5b851fu, 0x3d670a3du,
    0x3d728f5du, 0x3d7e147au, 0x3d84cccdu, 0x3d8a8f5du, 0x3d9051ebu, 0x3d96147bu, 0x3d9bd70au, 0x3da1999au,
    0x3da75c28u, 0x3dad1eb8u, 0x3db2e148u, 0x3db8a3d7u, 0x3dbe6667u, 0x3dc428f5u, 0x3dc9eb85u, 0x3ddb3334u,
    0x3df80000u, 0x3e0a6666u, 0x3e18cccdu, 0x3e273333u, 0x3e359999u, 0x3e440000u, 0x3e526666u, 0x3e60cccdu,
    0x3e6f3334u, 0x3e7d999au, 0x3e860000u, 0x3e8d3334u, 0x3e946666u, 0x3e9b999au, 0x3ea2ccccu, 0x3eaa0000u,
    0x3eb13332u, 0x3eb86666u, 0x3ebf999au, 0x3ec6ccccu, 0x3ece0000u, 0x3ed53332u, 0x3edc6666u, 0x3ee3999au,
    0x3eeaccccu, 0x3ef20000u, 0x3ef93334u, 0x3f003333u, 0x3f03cccdu, 0x3f076666u, 0x3f0b0000u, 0x3f0e999au,
    0x3f123334u, 0x3f15cccdu, 0x3f196666u, 0x3f1d0000u, 0x3f20999au, 0x3f243333u, 0x3f27cccdu, 0x3f2b6667u,
    0x3f2f0000u, 0x3f32999au, 0x3f363334u, 0x3f39cccdu, 0x3f3d6667u, 0x3f410000u, 0x3f44999au, 0x3f483333u,
    0x3f4bccccu, 0x3f4f6666u, 0x3f530000u, 0x3f569999u, 0x3f5a3333u, 0x3f5dccccu, 0x3f616666u, 0x3f650000u,
    0x3f68999au, 0x3f6c3333u, 0x3f6fccccu, 0x3f736666u, 0x3f770000u, 0x3f7a9999u, 0x3f7e3333u, 0x3f800000u,
};
// create_dynamic_map(signed=False) (Appendix B).
LK_CODE_TABLE lk_u32 lk_dynamic_unsigned_bits[256] = {
    0x00000000u, 0x34ae7baau, 0x35500998u, 0x360e9b38u, 0x3692ccf6u, 0x36de4c51u, 0x3714e5d5u, 0x3783126eu,
    0x37e171a0u, 0x381fe868u, 0x384f1800u, 0x387e479au, 0x3896bb99u, 0x38ae5364u, 0x38c5eb31u, 0x3906594bu,
    0x394154cau, 0x397c5048u, 0x399ba5e4u, 0x39b923a2u, 0x39d6a162u, 0x39f41f22u, 0x3a08ce71u, 0x3a178d50u,
    0x3a264c30u, 0x3a350b10u, 0x3a43c9efu, 0x3a5288d0u, 0x3a6147afu, 0x3a70068eu, 0x3a7ec56eu, 0x3a958106u,
    0x3aba5e35u, 0x3adf3b64u, 0x3b020c49u, 0x3b147ae1u, 0x3b26e978u, 0x3b39580fu, 0x3b4bc6a7u, 0x3b5e353eu,
    0x3b70a3d7u, 0x3b818937u, 0x3b8ac082u, 0x3b93f7cfu, 0x3b9d2f1au, 0x3ba66666u, 0x3baf9db2u, 0x3bb8d4fdu,
    0x3bc20c4au, 0x3bcb4394u, 0x3bd47ae1u, 0x3bddb22eu, 0x3be6e978u, 0x3bf020c5u, 0x3bf9580fu, 0x3c0147aeu,
    0x3c05e353u, 0x3c0a7ef9u, 0x3c0f1aa0u, 0x3c13b645u, 0x3c1851ebu, 0x3c1ced90u, 0x3c218937u, 0x3c2f5c2au,
    0x3c466667u, 0x3c5d70a3u, 0x3c747ae2u, 0x3c85c28fu, 0x3c9147aeu, 0x3c9ccccdu, 0x3ca851ebu, 0x3cb3d70bu,
    0x3cbf5c2au, 0x3ccae148u, 0x3cd66667u, 0x3ce1eb87u, 0x3ced70a3u, 0x3cf8f5c3u, 0x3d023d70u, 0x3d080000u,
    0x3d0dc28fu, 0x3d13851fu, 0x3d1947afu, 0x3d1f0a3du, 0x3d24cccdu, 0x3d2a8f5bu, 0x3d3051ebu, 0x3d36147bu,
    0x3d3bd70au, 0x3d41999au, 0x3d475c2au, 0x3d4d1eb8u, 0x3d52e148u, 0x3d58a3d7u, 0x3d5e6667u, 0x3d6428f7u,
    0x3d69eb87u, 0x3d6fae15u, 0x3d7570a3u, 0x3d7b3333u, 0x3d807ae2u, 0x3d835c29u, 0x3d863d71u, 0x3d891eb9u,
    0x3d8c0000u, 0x3d8ee148u, 0x3d91c290u, 0x3d94a3d7u, 0x3d97851fu, 0x3d9a6667u, 0x3d9d47afu, 0x3da028f6u,
    0x3da30a3du, 0x3da5eb85u, 0x3da8cccdu, 0x3dabae14u, 0x3dae8f5cu, 0x3db170a3u, 0x3db451ebu, 0x3db73333u,
    0x3dba147bu, 0x3dbcf5c3u, 0x3dbfd70au, 0x3dc2b852u, 0x3dc5999au, 0x3dc87ae1u, 0x3dcb5c29u, 0x3dd40000u,
    0x3de26666u, 0x3df0cccdu, 0x3dff3333u, 0x3e06ccccu, 0x3e0e0000u, 0x3e153334u, 0x3e1c6666u, 0x3e23999au,
    0x3e2accccu, 0x3e320000u, 0x3e393334u, 0x3e406666u, 0x3e47999au, 0x3e4eccccu, 0x3e560000u, 0x3e5d3334u,
    0x3e646666u, 0x3e6b999au, 0x3e72ccceu, 0x3e7a0000u, 0x3e80999au, 0x3e843333u, 0x3e87cccdu, 0x3e8b6667u,
    0x3e8f0000u, 0x3e92999au, 0x3e963334u, 0x3e99cccdu, 0x3e9d6667u, 0x3ea10000u, 0x3ea4999au, 0x3ea83333u,
    0x3eabccccu, 0x3eaf6666u, 0x3eb30000u, 0x3eb69999u, 0x3eba3333u, 0x3ebdccccu, 0x3ec16666u, 0x3ec50000u,
    0x3ec8999au, 0x3ecc3333u, 0x3ecfccccu, 0x3ed36666u, 0x3ed70000u, 0x3eda9999u, 0x3ede3333u, 0x3ee1cccdu,
    0x3ee56666u, 0x3ee90000u, 0x3eec999au, 0x3ef03333u, 0x3ef3cccdu, 0x3ef76666u, 0x3efb0000u, 0x3efe9999u,
    0x3f01199au, 0x3f02e666u, 0x3f04b332u, 0x3f068000u, 0x3f084cccu, 0x3f0a199au, 0x3f0be666u, 0x3f0db334u,
    0x3f0f8000u, 0x3f114ccdu, 0x3f13199au, 0x3f14e666u, 0x3f16b334u, 0x3f188000u, 0x3f1a4ccdu, 0x3f1c199au,
    0x3f1de666u, 0x3f1fb333u, 0x3f218000u, 0x3f234cccu, 0x3f25199au, 0x3f26e666u, 0x3f28b334u, 0x3f2a8000u,
    0x3f2c4cceu, 0x3f2e199au, 0x3f2fe666u, 0x3f31b334u, 0x3f338000u, 0x3f354cceu, 0x3f37199au, 0x3f38e666u,
    0x3f3ab334u, 0x3f3c8000u, 0x3f3e4cccu, 0x3f40199au, 0x3f41e666u, 0x3f43b334u, 0x3f458000u, 0x3f474cccu,
    0x3f49199au, 0x3f4ae666u, 0x3f4cb332u, 0x3f4e8000u, 0x3f504cccu, 0x3f52199au, 0x3f53e666u, 0x3f55b334u,
    0x3f578000u, 0x3f594ccdu, 0x3f5b199au, 0x3f5ce666u, 0x3f5eb334u, 0x3f608000u, 0x3f624ccdu, 0x3f64199au,
    0x3f65e666u, 0x3f67b333u, 0x3f698000u, 0x3f6b4cccu, 0x3f6d199au, 0x3f6ee666u, 0x3f70b334u, 0x3f728000u,
    0x3f744cceu, 0x3f76199au, 0x3f77e666u, 0x3f79b334u, 0x3f7b8000u, 0x3f7d4cceu, 0x3f7f199au, 0x3f800000u,
};

// NF4: the number of float32 midpoints x strictly exceeds; a value on a midpoint takes the lower
// code and NaN takes code 0 (every comparison is false), as bnb's decision tree.
LK_CODE_FN int lk_nf4_encode(float x) {
    int code = 0;
    for (int i = 0; i < 15; ++i) code += x > lk_bits_f32(lk_nf4_midpoint_bits[i]) ? 1 : 0;
    return code;
}

// FP4: bnb's decision tree on |x| with its float32 literals (§8.2), sign bit 8 iff x < 0.
LK_CODE_FN int lk_fp4_encode(float x) {
    const float a = x < 0.0f ? -x : x;
    int bits;
    if (a > lk_bits_f32(0x3e955555u))                  // 0.29166667: the upper half
        bits = a > lk_bits_f32(0x3f155550u)            // 0.583333
                   ? (a > lk_bits_f32(0x3f555555u) ? 3 : 2)   // 0.8333333: 1.0 or 0.6667
                   : (a > lk_bits_f32(0x3ed55556u) ? 5 : 4);  // 0.4166667: 0.5 or 0.3333
    else
        bits = a > lk_bits_f32(0x3db00000u)            // 0.0859375
                   ? (a > lk_bits_f32(0x3e555555u) ? 7 : 6)   // 0.20833333: 0.25 or 0.1667
                   : (a > lk_bits_f32(0x3b2aaab9u) ? 1 : 0);  // 0.00260417: 0.0052 or 0
    return x < 0.0f ? bits | 8 : bits;
}

LK_CODE_FN int lk_encode_4bit(float x, int quant_type) {
    return quant_type == kLkQuantFp4 ? lk_fp4_encode(x) : lk_nf4_encode(x);
}

// The code of 0.0: what pads an odd tail and what an all-zero block encodes (REFERENCE.md §11).
LK_CODE_FN int lk_zero_code(int quant_type) { return quant_type == kLkQuantNf4 ? 7 : 0; }

// The value of 4-bit code `code` of quant_type.
LK_CODE_FN float lk_code_4bit(int code, int quant_type) {
    return lk_bits_f32(quant_type == kLkQuantFp4 ? lk_fp4_code_bits[code] : lk_nf4_code_bits[code]);
}

// bnb's dQuantize<0> (csrc/kernels.cu) over a sorted 256-entry code, step for step: binary search
// from pivot 127 with steps 64..1, then the pivot or its bracketing neighbour by the midpoint ('>'
// mid goes up, '<' mid goes down, exactly on it stays at the pivot), so ties resolve as bnb's do.
// code(i) returns entry i (a table in constant, shared or host memory).
template <class Code>
LK_CODE_FN int lk_dynamic_encode(float x, const Code& code) {
    int pivot = 127, upper_pivot = 255, lower_pivot = 0;
    float lower = -1.0f, upper = 1.0f;
    float value = code(pivot);
    for (int step = 64; step > 0; step >>= 1) {
        if (x > value) {
            lower_pivot = pivot;
            lower = value;
            pivot += step;
        } else {
            upper_pivot = pivot;
            upper = value;
            pivot -= step;
        }
        value = code(pivot);
    }
    if (upper_pivot == 255) upper = code(255);
    if (lower_pivot == 0) lower = code(0);
    if (x > value) return x > (upper + value) * 0.5f ? upper_pivot : pivot;
    return x < (lower + value) * 0.5f ? lower_pivot : pivot;
}

// A dynamic map read straight from its bit table.
struct LkDynamicBits {
    const lk_u32* bits;
    LK_CODE_FN float operator()(int i) const { return lk_bits_f32(bits[i]); }
};

// A dynamic map copied into floats (a kernel's shared-memory copy of a table).
struct LkDynamicFloats {
    const float* values;
    LK_CODE_FN float operator()(int i) const { return values[i]; }
};
