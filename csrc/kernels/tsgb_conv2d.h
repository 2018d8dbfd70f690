#pragma once

// The TSGB-Conv backward rule (docs/design.md) for one image and one group, on raw pointers.
//
// With A = sum over the group's input channels of |X| ([H, W]), R = sum over its output channels
// of G * Z ([H', W']), S = the sum of A over each output position's receptive field, and
// V = R / (S + 1e-10), every input position collects U = the sum of V over the output positions
// whose window covers it, and grad_X[c] = sign(X[c]) * U.
//
// Without dilation both window sums are box sums, read from summed-area tables in O(1) per
// position (double accumulators, so differences of large prefix sums stay exact enough); with
// dilation they are direct sums over the kernel.
//
// V is set to 0 where S == 0: such a window covers only inputs with X == 0 (or padding), whose
// gradient sign(X) * U is 0 whatever V is, while R / 1e-10 there would be huge and swamp the
// prefix sums of the second table.

#include "vec_helpers.h"

#include <c10/macros/Macros.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace torchcam_ops::kernels {

inline constexpr double kTSGBEps = 1e-10;

struct Conv2dGeometry {
  int64_t in_h, in_w, out_h, out_w;
  int64_t kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w;

  bool dilated() const {
    return dilation_h != 1 || dilation_w != 1;
  }
};

namespace tsgb_detail {

inline int64_t floor_div(int64_t a, int64_t b) {
  return a >= 0 ? a / b : -((-a + b - 1) / b);
}

inline int64_t ceil_div_signed(int64_t a, int64_t b) {
  return -floor_div(-a, b);
}

// table[(r + 1) * (w + 1) + (c + 1)] = sum of values[0..r][0..c].
template <typename T>
void summed_area_table(const T* values, int64_t h, int64_t w, double* table) {
  std::fill(table, table + (w + 1), 0.0);
  for (int64_t r = 0; r < h; ++r) {
    double row = 0.0;
    table[(r + 1) * (w + 1)] = 0.0;
    for (int64_t c = 0; c < w; ++c) {
      row += static_cast<double>(values[r * w + c]);
      table[(r + 1) * (w + 1) + c + 1] = table[r * (w + 1) + c + 1] + row;
    }
  }
}

// Sum over rows [r0, r1] x columns [c0, c1], clipped to the table's h x w; 0 when empty.
inline double box_sum(const double* table, int64_t h, int64_t w, int64_t r0, int64_t r1, int64_t c0, int64_t c1) {
  r0 = std::max<int64_t>(r0, 0);
  c0 = std::max<int64_t>(c0, 0);
  r1 = std::min<int64_t>(r1, h - 1);
  c1 = std::min<int64_t>(c1, w - 1);
  if (r0 > r1 || c0 > c1) {
    return 0.0;
  }
  const int64_t stride = w + 1;
  return table[(r1 + 1) * stride + c1 + 1] - table[r0 * stride + c1 + 1] - table[(r1 + 1) * stride + c0] +
         table[r0 * stride + c0];
}

// torch.sign: -1, 0 or 1, and NaN for NaN.
template <typename T>
C10_HOST_DEVICE inline T sign_of(T x) {
  return x != x ? x : static_cast<T>((x > T(0)) - (x < T(0)));
}

// V = R / (S + eps) for a window of activation sum S: 0 where S == 0 (see the header comment), and
// NaN where S is NaN, as the rule computes it.
template <typename T>
C10_HOST_DEVICE inline T relevance_ratio(T relevance, T window) {
  return window > T(0) ? relevance / (window + static_cast<T>(kTSGBEps)) : (window == T(0) ? T(0) : window);
}

template <typename T>
bool all_finite(const T* values, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    if (!std::isfinite(static_cast<double>(values[i]))) {
      return false;
    }
  }
  return true;
}

} // namespace tsgb_detail

inline int64_t tsgb_conv2d_backward_workspace_size(const Conv2dGeometry& geo) {
  // A and U ([H, W]) and V ([H', W']) as opmath; two summed-area tables as double, counted in
  // opmath-sized slots by the caller's allocation of `doubles`.
  return 2 * geo.in_h * geo.in_w + geo.out_h * geo.out_w;
}

inline int64_t tsgb_conv2d_backward_table_size(const Conv2dGeometry& geo) {
  return std::max((geo.in_h + 1) * (geo.in_w + 1), (geo.out_h + 1) * (geo.out_w + 1));
}

template <typename scalar_t>
void tsgb_conv2d_backward_group(const scalar_t* input,       // [in_channels, H, W] of this group
                                const scalar_t* output,      // [out_channels, H', W'] of this group
                                const scalar_t* grad_output, // [out_channels, H', W']
                                scalar_t* grad_input,        // [in_channels, H, W]
                                int64_t in_channels, int64_t out_channels, const Conv2dGeometry& geo,
                                opmath_t<scalar_t>* workspace, double* table) {
  using T = opmath_t<scalar_t>;
  using namespace tsgb_detail;
  const int64_t in_pixels = geo.in_h * geo.in_w;
  const int64_t out_pixels = geo.out_h * geo.out_w;
  T* activation = workspace;         // A
  T* ratio = workspace + in_pixels;  // V
  T* collected = ratio + out_pixels; // U

  std::fill(activation, activation + in_pixels, T(0));
  for (int64_t c = 0; c < in_channels; ++c) {
    const scalar_t* x = input + c * in_pixels;
    for (int64_t i = 0; i < in_pixels; ++i) {
      activation[i] += std::abs(static_cast<T>(x[i]));
    }
  }
  std::fill(ratio, ratio + out_pixels, T(0));
  for (int64_t c = 0; c < out_channels; ++c) {
    const scalar_t* z = output + c * out_pixels;
    const scalar_t* g = grad_output + c * out_pixels;
    for (int64_t o = 0; o < out_pixels; ++o) {
      ratio[o] += static_cast<T>(g[o]) * static_cast<T>(z[o]);
    }
  }

  // V = R / (S + eps), S the window sum of A. A NaN or inf in a summed-area table would reach
  // every box sum taken after it (inf - inf = NaN), so such planes use the direct window sums,
  // where a non-finite value reaches the windows that contain it only.
  const bool box_sums = !geo.dilated() && all_finite(activation, in_pixels);
  if (box_sums) {
    summed_area_table(activation, geo.in_h, geo.in_w, table);
  }
  for (int64_t oy = 0; oy < geo.out_h; ++oy) {
    for (int64_t ox = 0; ox < geo.out_w; ++ox) {
      const int64_t top = oy * geo.stride_h - geo.pad_h;
      const int64_t left = ox * geo.stride_w - geo.pad_w;
      double window = 0.0;
      if (box_sums) {
        window = box_sum(table, geo.in_h, geo.in_w, top, top + geo.kernel_h - 1, left, left + geo.kernel_w - 1);
      } else {
        for (int64_t ky = 0; ky < geo.kernel_h; ++ky) {
          const int64_t iy = top + ky * geo.dilation_h;
          if (iy < 0 || iy >= geo.in_h) {
            continue;
          }
          for (int64_t kx = 0; kx < geo.kernel_w; ++kx) {
            const int64_t ix = left + kx * geo.dilation_w;
            if (ix >= 0 && ix < geo.in_w) {
              window += static_cast<double>(activation[iy * geo.in_w + ix]);
            }
          }
        }
      }
      T& v = ratio[oy * geo.out_w + ox];
      v = static_cast<T>(relevance_ratio(static_cast<double>(v), window));
    }
  }

  // U: each input position collects V over the output positions whose window covers it
  if (!geo.dilated() && all_finite(ratio, out_pixels)) {
    summed_area_table(ratio, geo.out_h, geo.out_w, table);
    for (int64_t iy = 0; iy < geo.in_h; ++iy) {
      // oy * stride - pad <= iy <= oy * stride - pad + kernel - 1
      const int64_t oy0 = ceil_div_signed(iy + geo.pad_h - geo.kernel_h + 1, geo.stride_h);
      const int64_t oy1 = floor_div(iy + geo.pad_h, geo.stride_h);
      for (int64_t ix = 0; ix < geo.in_w; ++ix) {
        const int64_t ox0 = ceil_div_signed(ix + geo.pad_w - geo.kernel_w + 1, geo.stride_w);
        const int64_t ox1 = floor_div(ix + geo.pad_w, geo.stride_w);
        collected[iy * geo.in_w + ix] = static_cast<T>(box_sum(table, geo.out_h, geo.out_w, oy0, oy1, ox0, ox1));
      }
    }
  } else {
    std::fill(collected, collected + in_pixels, T(0));
    for (int64_t oy = 0; oy < geo.out_h; ++oy) {
      for (int64_t ox = 0; ox < geo.out_w; ++ox) {
        const T v = ratio[oy * geo.out_w + ox];
        for (int64_t ky = 0; ky < geo.kernel_h; ++ky) {
          const int64_t iy = oy * geo.stride_h - geo.pad_h + ky * geo.dilation_h;
          if (iy < 0 || iy >= geo.in_h) {
            continue;
          }
          for (int64_t kx = 0; kx < geo.kernel_w; ++kx) {
            const int64_t ix = ox * geo.stride_w - geo.pad_w + kx * geo.dilation_w;
            if (ix >= 0 && ix < geo.in_w) {
              collected[iy * geo.in_w + ix] += v;
            }
          }
        }
      }
    }
  }

  for (int64_t c = 0; c < in_channels; ++c) {
    const scalar_t* x = input + c * in_pixels;
    scalar_t* gx = grad_input + c * in_pixels;
    for (int64_t i = 0; i < in_pixels; ++i) {
      gx[i] = static_cast<scalar_t>(sign_of(static_cast<T>(x[i])) * collected[i]);
    }
  }
}

} // namespace torchcam_ops::kernels
