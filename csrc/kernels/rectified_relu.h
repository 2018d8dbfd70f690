#pragma once

// The backward rules of rectified_relu, on raw pointers.

#include "vec_helpers.h"

#include <cstdint>

namespace torchcam_ops {

enum class ReluRectification : int8_t {
  Guided,    // G * (X > 0) * (G > 0)
  Deconvnet, // ReLU(G)
  Plain,     // torch's ReLU gradient: 0 where X <= 0, else G (NaN inputs pass G, as torch does)
};

namespace kernels {

template <typename T>
inline at::vec::Vectorized<T> rectified_relu_grad(ReluRectification rule, const at::vec::Vectorized<T>& g,
                                                  const at::vec::Vectorized<T>& x) {
  using Vec = at::vec::Vectorized<T>;
  const Vec zero(T(0));
  switch (rule) {
    case ReluRectification::Guided:
      return g * x.gt(zero) * g.gt(zero);
    case ReluRectification::Deconvnet:
      return at::vec::maximum(g, zero);
    default:
      return Vec::blendv(g, zero, x <= zero);
  }
}

// grad_input[i] for i < n; arithmetic in opmath_t.
template <typename scalar_t>
void rectified_relu_backward(const scalar_t* grad_output, const scalar_t* input, scalar_t* grad_input, int64_t n,
                             ReluRectification rule, opmath_t<scalar_t>* workspace /* 3 * n when converting */) {
  using T = opmath_t<scalar_t>;
  const T* g = load_opmath(grad_output, n, workspace);
  const T* x = load_opmath(input, n, workspace + n);
  T* out = opmath_target(grad_input, workspace + 2 * n);
  vec_apply(
      n, out,
      [&](const at::vec::Vectorized<T>& gv, const at::vec::Vectorized<T>& xv) {
        return rectified_relu_grad(rule, gv, xv);
      },
      g, x);
  store_opmath(out, n, grad_input);
}

} // namespace kernels
} // namespace torchcam_ops
