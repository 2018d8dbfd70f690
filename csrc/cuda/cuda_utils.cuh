#pragma once

// Warp and block reductions shared by the CUDA kernels. All results are bitwise reproducible:
// the butterfly (xor) exchange adds the same pairs in every lane, whatever the scheduling.

#include "../kernels/nan_semantics.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace torchcam_ops::cuda {

constexpr int kWarpSize = 32;

// Sum over the warp, the total in every lane.
template <typename T>
__device__ __forceinline__ T warp_all_sum(T value) {
#pragma unroll
  for (int mask = kWarpSize / 2; mask > 0; mask >>= 1) {
    value += __shfl_xor_sync(0xffffffffu, value, mask);
  }
  return value;
}

using kernels::max_keep_nan;
using kernels::min_keep_nan;
using kernels::relu_keep_nan;

// Min and max over the block, NaN-propagating, the result in every thread. `scratch` holds
// 2 * (blockDim.x / 32) values.
template <typename T>
__device__ __forceinline__ void block_min_max(T& lo, T& hi, T* scratch) {
#pragma unroll
  for (int mask = kWarpSize / 2; mask > 0; mask >>= 1) {
    lo = min_keep_nan(lo, __shfl_xor_sync(0xffffffffu, lo, mask));
    hi = max_keep_nan(hi, __shfl_xor_sync(0xffffffffu, hi, mask));
  }
  const int warp = threadIdx.x / kWarpSize;
  const int warps = blockDim.x / kWarpSize;
  if (threadIdx.x % kWarpSize == 0) {
    scratch[warp] = lo;
    scratch[warps + warp] = hi;
  }
  __syncthreads();
  lo = scratch[0];
  hi = scratch[warps];
  for (int w = 1; w < warps; ++w) {
    lo = min_keep_nan(lo, scratch[w]);
    hi = max_keep_nan(hi, scratch[warps + w]);
  }
  __syncthreads(); // scratch may be reused by the caller
}

inline int64_t ceil_div(int64_t a, int64_t b) {
  return (a + b - 1) / b;
}

// Blocks for a grid-stride loop over `count` elements: one element per thread up to a cap, past
// which each thread takes several (the loop covers the rest).
inline int64_t grid_stride_blocks(int64_t count, int threads) {
  return std::max<int64_t>(1, std::min<int64_t>(ceil_div(count, threads), 65535 * 16));
}

} // namespace torchcam_ops::cuda
