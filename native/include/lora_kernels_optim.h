/* lora_kernels_optim.h: the optimizers' CPU kernels (native/cpu/optim.cpp), the same multi-tensor
 * steps as kernels/optim.cu. The segment layouts (lk_adamw_segment, lk_adamw8bit_segment,
 * lk_grad_span) are kernels/optim_segments.cuh's, shared with the GPU kernels; first_block is
 * ignored here. Each call updates every segment of its list; segments must not overlap.
 * Coefficients and forms: kernels/optim_segments.cuh and kernels/adamw_math.cuh. */
#ifndef LORA_KERNELS_OPTIM_H
#define LORA_KERNELS_OPTIM_H

#include "optim_segments.cuh"

/* AdamW over `count` segments with fp32 moments. bnb_form = 0: torch.optim.AdamW (decay first,
 * eps outside the bias-corrected root); 1: bitsandbytes' 32-bit Adam (decay after the step).
 * Every gradient is multiplied by grad_scale first (gradient clipping, accumulation; 1 leaves it
 * exact). Element-wise, so any thread count gives the same bits. beta1, beta2 in [0, 1). */
LK_API lk_status lk_cpu_adamw(const lk_adamw_segment* segments, int64_t count, float beta1, float beta2,
                              float grad_scale, int32_t bnb_form);

/* bitsandbytes' blockwise 8-bit AdamW (REFERENCE.md §8.7) over `count` segments: blocks of 256
 * elements, m in the signed and v in the unsigned dynamic map, fp32 absmax per block. */
LK_API lk_status lk_cpu_adamw8bit(const lk_adamw8bit_segment* segments, int64_t count, float beta1,
                                  float beta2, float grad_scale);

/* sum[0] = Σ g² over every span, in double: each run of 4096 elements of a span summed in a fixed
 * (vectorized) order, the runs added in order, so any thread count gives the same bits. Not finite iff a
 * gradient is NaN or ±Inf (squares of finite floats cannot overflow a double). */
LK_API lk_status lk_cpu_grad_sumsq(const lk_grad_span* spans, int64_t count, double* sum);

/* Page hints for paged optimizer state in a shared file mapping (MemoryKind.MappedFile), over the
 * whole pages [address, address + bytes) touches. readahead starts reading them from the file without
 * waiting (MADV_WILLNEED), for a positioned read that follows; release drops them from the process
 * (MADV_DONTNEED), so pages mapped by other uses of the buffer do not stay resident: a shared file
 * mapping keeps the data in the file. release must only be given shared file mappings: on private or anonymous
 * memory MADV_DONTNEED discards the contents. All return LK_OK where the OS has no such call (not
 * Linux); a failed madvise is LK_ERR_INTERNAL. */
LK_API lk_status lk_cpu_pages_readahead(void* address, int64_t bytes);
LK_API lk_status lk_cpu_pages_release(void* address, int64_t bytes);

/* One positioned transfer between a file and memory: `bytes` bytes at `file_offset` of the open file
 * descriptor `fd` and at `memory`. */
typedef struct lk_file_run {
    int64_t file_offset;
    void* memory;
    int64_t bytes;
    int32_t fd;
    int32_t reserved; /* 0 */
} lk_file_run;

/* Reads (lk_cpu_file_read: file -> memory) or writes (lk_cpu_file_write: memory -> file) every run of
 * the list with pread/pwrite, the runs spread over the library's threads; runs must not overlap in
 * memory (nor, for writes, in a file). Paged optimizer state moves through its resident window this
 * way: the kernel copies through its own mapping of the page cache, so no page table of the process
 * changes. A short file (a read past its end) or a failed call is LK_ERR_INTERNAL naming the run and
 * errno's text; not available (LK_ERR_UNSUPPORTED) where the OS has no pread/pwrite. */
LK_API lk_status lk_cpu_file_read(const lk_file_run* runs, int64_t count);
LK_API lk_status lk_cpu_file_write(const lk_file_run* runs, int64_t count);

#endif /* LORA_KERNELS_OPTIM_H */
