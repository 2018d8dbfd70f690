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

// The primitives the formulas of cam_formulas.h are written with, for a value type V. This
// primary template is for scalars (the CUDA kernels, one value at a time); vec_helpers.h
// specialises it for at::vec::Vectorized (the CPU kernels, a vector at a time).
template <typename V>
struct ValueOps {
  C10_HOST_DEVICE static V relu(V x) {
    return relu_keep_nan(x);
  }
  // 1 where x > 0, else 0 (also for NaN).
  C10_HOST_DEVICE static V positive_indicator(V x) {
    return x > V(0) ? V(1) : V(0);
  }
  // value where condition > 0, else 0 (also where condition is NaN, whatever value is).
  C10_HOST_DEVICE static V where_positive(V condition, V value) {
    return condition > V(0) ? value : V(0);
  }
};

} // namespace torchcam_ops::kernels
