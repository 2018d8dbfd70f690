#pragma once

// Scalar helpers with torch's NaN semantics, shared by the CPU kernels and the CUDA kernels.

#include <c10/macros/Macros.h>

namespace torchcam_ops::kernels {

// torch.relu: NaN compares false and passes through.
template <typename T>
C10_HOST_DEVICE inline T relu_keep_nan(T x) {
  return x < T(0) ? T(0) : x;
}

// torch.minimum / torch.maximum: a NaN operand wins.
template <typename T>
C10_HOST_DEVICE inline T min_keep_nan(T a, T b) {
  return (a != a || a < b) ? a : b;
}

template <typename T>
C10_HOST_DEVICE inline T max_keep_nan(T a, T b) {
  return (a != a || a > b) ? a : b;
}

} // namespace torchcam_ops::kernels
