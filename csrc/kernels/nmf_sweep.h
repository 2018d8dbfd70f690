#pragma once

// One coordinate-descent sweep of non-negative matrix factorisation over the rows of one factor, on
// raw pointers: scikit-learn's "cd" solver (_update_cdnmf_fast), the same arithmetic in the same order.

#include <c10/macros/Macros.h>

#include <cstdint>

namespace torchcam_ops::kernels {

// X ~ F S with F >= 0 the factor being updated ([rows, components], a row per sample) and S the other
// factor, fixed for the sweep through gram = S S^T [components, components] and products = X S^T
// [rows, components]. Rows are independent. Within a row the components are updated in order, each
// gradient seeing the components already updated (Gauss-Seidel); a component whose curvature
// gram[t][t] is 0 is left as it is. Updates `row` in place and returns the summed absolute projected
// gradient, each taken before its update (the solver's stopping test). Shared by the CPU kernel and
// the CUDA kernel (a thread per row).
template <typename T>
C10_HOST_DEVICE inline T nmf_sweep_row(T* row, const T* gram, const T* products, int64_t components) {
  T violation = T(0);
  for (int64_t t = 0; t < components; ++t) {
    const T* gram_t = gram + t * components;
    T gradient = -products[t];
    for (int64_t r = 0; r < components; ++r) {
      gradient += gram_t[r] * row[r];
    }
    // at the bound 0 a positive gradient cannot be followed: it is no violation
    const T projected = (row[t] == T(0) && gradient > T(0)) ? T(0) : gradient;
    violation += projected < T(0) ? -projected : projected;
    const T curvature = gram_t[t];
    if (curvature != T(0)) {
      const T moved = row[t] - gradient / curvature;
      row[t] = moved > T(0) ? moved : T(0);
    }
  }
  return violation;
}

} // namespace torchcam_ops::kernels
