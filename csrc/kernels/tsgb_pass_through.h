#pragma once

// The TSGB pass-through backward on raw pointers: relevance passes unchanged,
// grad_X = (G * Y) / X, exactly 0 where X == 0, with Y the layer's value as given.

#include "vec_helpers.h"

#include <cstdint>

namespace torchcam_ops::kernels {

// `n` values. The product G * Y is rounded before the division, as the ATen formula of the other
// devices computes it, so that every device gives the same bits.
template <typename scalar_t>
void tsgb_pass_through_backward_span(const scalar_t* grad_output, const scalar_t* input, const scalar_t* output,
                                     scalar_t* grad_input, int64_t n,
                                     opmath_t<scalar_t>* workspace /* 4 * n when converting */) {
  using T = opmath_t<scalar_t>;
  using Vec = at::vec::Vectorized<T>;
  const T* g = load_opmath(grad_output, n, workspace);
  const T* x = load_opmath(input, n, workspace + n);
  const T* y = load_opmath(output, n, workspace + 2 * n);
  T* out = opmath_target(grad_input, workspace + 3 * n);
  const Vec zero(T(0)), one(T(1));
  vec_apply(
      n, out,
      [&](const Vec& gv, const Vec& xv, const Vec& yv) {
        const Vec nonzero = xv != zero; // a lane mask
        // Divided by 1 where X == 0, then replaced by 0 there: exactly 0 even when G or Y is not finite.
        return Vec::blendv(zero, (gv * yv) / Vec::blendv(one, xv, nonzero), nonzero);
      },
      g, x, y);
  store_opmath(out, n, grad_input);
}

} // namespace torchcam_ops::kernels
