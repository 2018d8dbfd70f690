#pragma once

// The TSGB batch-norm backward rule, on raw pointers: relevance passes unchanged,
// grad_X = G * Y / X (0 where X == 0), with Y = scale * X + shift recomputed from the channel's
// inference affine map instead of being read from memory.

#include "vec_helpers.h"

#include <cstdint>

namespace torchcam_ops::kernels {

// One channel plane of `n` values.
template <typename scalar_t>
void tsgb_batch_norm_backward_plane(const scalar_t* grad_output, const scalar_t* input, scalar_t* grad_input, int64_t n,
                                    opmath_t<scalar_t> scale, opmath_t<scalar_t> shift,
                                    opmath_t<scalar_t>* workspace /* 3 * n when converting */) {
  using T = opmath_t<scalar_t>;
  using Vec = at::vec::Vectorized<T>;
  const T* g = load_opmath(grad_output, n, workspace);
  const T* x = load_opmath(input, n, workspace + n);
  T* out = opmath_target(grad_input, workspace + 2 * n);
  const Vec scale_vec(scale), shift_vec(shift), zero(T(0));
  vec_apply(
      n, out,
      [&](const Vec& gv, const Vec& xv) {
        const Vec nonzero = xv.ne(zero); // 1.0 where X != 0
        // Dividing by X where X == 0 would give inf/NaN that the mask cannot cancel; divide by 1 there.
        const Vec safe_x = Vec::blendv(Vec(T(1)), xv, xv != zero);
        return nonzero * gv * (scale_vec * xv + shift_vec) / safe_x;
      },
      g, x);
  store_opmath(out, n, grad_input);
}

} // namespace torchcam_ops::kernels
