/* lora_kernels_linalg.h: dense factorizations the SVD-based inits (LoftQ, PiSSA) need on the CPU.
 * Included by lora_kernels.h; same ABI rules. Backed by LAPACK (liblapack.so.3: OpenBLAS's or the
 * reference implementation, whichever the system provides). */
#ifndef LORA_KERNELS_LINALG_H
#define LORA_KERNELS_LINALG_H

#include <stdint.h>

/* Thin SVD of a row-major A[m,n], k = min(m,n): U[m,k], S[k] (descending), Vt[k,n], so that
 * A = U diag(S) Vt. A is not modified. Singular-vector signs are LAPACK's (not unique). */
LK_API lk_status lk_cpu_svd(int64_t m, int64_t n, const float* A, float* U, float* S, float* Vt);

#endif /* LORA_KERNELS_LINALG_H */
