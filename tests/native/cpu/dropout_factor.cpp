// The one test file that includes kernels/common.cuh: the dropout mask is part of the contract
// (every backend drops the same elements), so the tests take it from the shared header.
#include "common.cuh"
#include "reference.h"

namespace cpu_test {

double dropout_factor(uint64_t seed, uint64_t index, float p) {
    return lk_dropout_factor(seed, index, p);
}

}  // namespace cpu_test
