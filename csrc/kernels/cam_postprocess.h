#pragma once

// cam_postprocess on one map, on raw pointers: ReLU, bilinear resize with half-pixel centres
// (F.interpolate(mode="bilinear", align_corners=False)), then min-max normalisation.
//
// The resize is separable: each source row is first resized horizontally (in_h x out_w values),
// then every output row blends two of those rows, vectorised over the output width. Blends are
// written a + w1 (b - a) rather than PyTorch's w0 a + w1 b: the same value up to rounding, and
// exact where a == b, so a constant map stays exactly constant and normalises to zeros.
//
// Min and max need no pass over the output: along each axis the output positions that share a
// source cell have monotone blend weights, so a bilinear map's extremes over the output grid lie
// on the first or last position of some cell in each axis (the "extreme" rows and columns, at
// most 2 per source pixel). Normalisation is affine and commutes with the blends, so it is
// applied to the in_h x out_w horizontally resized rows instead of the out_h x out_w output.

#include "nan_semantics.h"
#include "normalize.h"
#include "vec_helpers.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

namespace torchcam_ops::kernels {

template <typename T>
struct BilinearTap {
  int64_t index0;
  int64_t index1;
  T weight0;
  T weight1;
};

// Source indices and weights of each output position along one axis, half-pixel centres.
template <typename T>
void compute_bilinear_taps(int64_t in_size, int64_t out_size, BilinearTap<T>* taps) {
  const T scale = static_cast<T>(in_size) / static_cast<T>(out_size);
  for (int64_t dst = 0; dst < out_size; ++dst) {
    T src = scale * (static_cast<T>(dst) + T(0.5)) - T(0.5);
    src = src < T(0) ? T(0) : src;
    const int64_t index0 = std::min(static_cast<int64_t>(std::floor(src)), in_size - 1);
    const int64_t index1 = index0 < in_size - 1 ? index0 + 1 : index0;
    const T weight1 = std::min(std::max(src - static_cast<T>(index0), T(0)), T(1));
    taps[dst] = {index0, index1, T(1) - weight1, weight1};
  }
}

// The first and last output position of each source cell along one axis (taps grouped by
// index0), where a bilinear map's extremes along that axis are. Returns how many were written
// to `positions` (room for 2 * in_size is enough).
template <typename T>
int64_t collect_extreme_positions(const BilinearTap<T>* taps, int64_t out_size, int64_t* positions) {
  int64_t count = 0;
  for (int64_t i = 0; i < out_size; ++i) {
    const bool first = i == 0 || taps[i - 1].index0 != taps[i].index0;
    const bool last = i == out_size - 1 || taps[i + 1].index0 != taps[i].index0;
    if (first || last) {
      positions[count++] = i;
    }
  }
  return count;
}

// Everything about a resize that does not depend on the map: shared by all maps of a batch.
template <typename T>
struct ResizePlan {
  int64_t in_h, in_w, out_h, out_w;
  const BilinearTap<T>* row_taps; // out_h
  const BilinearTap<T>* col_taps; // out_w
  const int64_t* extreme_rows;    // see collect_extreme_positions
  int64_t num_extreme_rows;
  const int64_t* extreme_cols;
  int64_t num_extreme_cols;
};

// Owns the arrays a ResizePlan points to. Not copyable or movable: the plan points into it.
template <typename T>
class ResizePlanStorage {
 public:
  ResizePlanStorage(int64_t in_h, int64_t in_w, int64_t out_h, int64_t out_w)
      : row_taps_(out_h), col_taps_(out_w), extreme_rows_(2 * in_h), extreme_cols_(2 * in_w) {
    compute_bilinear_taps(in_h, out_h, row_taps_.data());
    compute_bilinear_taps(in_w, out_w, col_taps_.data());
    plan_ = {in_h,
             in_w,
             out_h,
             out_w,
             row_taps_.data(),
             col_taps_.data(),
             extreme_rows_.data(),
             collect_extreme_positions(row_taps_.data(), out_h, extreme_rows_.data()),
             extreme_cols_.data(),
             collect_extreme_positions(col_taps_.data(), out_w, extreme_cols_.data())};
  }
  ResizePlanStorage(const ResizePlanStorage&) = delete;
  ResizePlanStorage& operator=(const ResizePlanStorage&) = delete;

  const ResizePlan<T>& plan() const {
    return plan_;
  }

 private:
  std::vector<BilinearTap<T>> row_taps_, col_taps_;
  std::vector<int64_t> extreme_rows_, extreme_cols_;
  ResizePlan<T> plan_{};
};

namespace postprocess_detail {

using kernels::max_keep_nan;
using kernels::min_keep_nan;
using kernels::relu_keep_nan;

template <typename T>
inline T lerp(T a, T b, T weight1) {
  return blend(a, b, weight1);
}

// blend() on vectors.
template <typename T>
inline at::vec::Vectorized<T> lerp(const at::vec::Vectorized<T>& a, const at::vec::Vectorized<T>& b,
                                   const at::vec::Vectorized<T>& weight1) {
  using Vec = at::vec::Vectorized<T>;
  const Vec difference = b - a;
  const Vec usual = a + weight1 * difference;
  // difference - difference is 0 for finite differences, NaN for overflowed (inf) ones
  const Vec overflowed = (difference - difference != Vec(T(0))) & (difference == difference);
  return Vec::blendv(usual, a * (Vec(T(1)) - weight1) + b * weight1, overflowed);
}

// resized_rows[r * out_w + x]: source row r resized to out_w, ReLU applied to the source first.
template <typename scalar_t>
void resize_rows_horizontally(const scalar_t* cam, const ResizePlan<opmath_t<scalar_t>>& plan, bool relu,
                              opmath_t<scalar_t>* resized_rows) {
  using T = opmath_t<scalar_t>;
  for (int64_t r = 0; r < plan.in_h; ++r) {
    const scalar_t* src = cam + r * plan.in_w;
    T* dst = resized_rows + r * plan.out_w;
    for (int64_t x = 0; x < plan.out_w; ++x) {
      const auto& tap = plan.col_taps[x];
      T v0 = static_cast<T>(src[tap.index0]);
      T v1 = static_cast<T>(src[tap.index1]);
      if (relu) {
        v0 = relu_keep_nan(v0);
        v1 = relu_keep_nan(v1);
      }
      dst[x] = lerp(v0, v1, tap.weight1);
    }
  }
}

// The output value at (y, x) from the horizontally resized rows.
template <typename T>
inline T resized_value(const T* resized_rows, const ResizePlan<T>& plan, int64_t y, int64_t x) {
  const auto& tap = plan.row_taps[y];
  return lerp(resized_rows[tap.index0 * plan.out_w + x], resized_rows[tap.index1 * plan.out_w + x], tap.weight1);
}

// Min and max of the resized map, from its extreme rows and columns only.
template <typename T>
void resized_min_max(const T* resized_rows, const ResizePlan<T>& plan, T& lo, T& hi) {
  lo = std::numeric_limits<T>::infinity();
  hi = -std::numeric_limits<T>::infinity();
  for (int64_t i = 0; i < plan.num_extreme_rows; ++i) {
    for (int64_t j = 0; j < plan.num_extreme_cols; ++j) {
      const T u = resized_value(resized_rows, plan, plan.extreme_rows[i], plan.extreme_cols[j]);
      lo = min_keep_nan(lo, u);
      hi = max_keep_nan(hi, u);
    }
  }
}

} // namespace postprocess_detail

inline int64_t cam_postprocess_forward_workspace_size(int64_t in_h, int64_t out_w) {
  return in_h * out_w + out_w; // horizontally resized rows + one output row
}

template <typename scalar_t>
void cam_postprocess_forward(const scalar_t* cam, scalar_t* out, const ResizePlan<opmath_t<scalar_t>>& plan, bool relu,
                             bool normalize, opmath_t<scalar_t>* workspace) {
  using T = opmath_t<scalar_t>;
  using Vec = at::vec::Vectorized<T>;
  const int64_t out_w = plan.out_w;
  T* resized_rows = workspace;
  T* row = workspace + plan.in_h * out_w;
  postprocess_detail::resize_rows_horizontally(cam, plan, relu, resized_rows);

  if (normalize) {
    T lo, hi;
    postprocess_detail::resized_min_max(resized_rows, plan, lo, hi);
    const T prescale = normalization_prescale(lo, hi);
    const T range = normalization_range(lo * prescale, hi * prescale);
    const Vec lo_vec(lo * prescale), range_vec(range), prescale_vec(prescale);
    if (range == T(0)) {
      std::fill(resized_rows, resized_rows + plan.in_h * out_w, T(0)); // a constant map
    } else {
      vec_apply(
          plan.in_h * out_w, resized_rows, [&](const Vec& u) { return (u * prescale_vec - lo_vec) / range_vec; },
          resized_rows);
    }
  }
  const Vec zero(T(0)), one(T(1));
  for (int64_t y = 0; y < plan.out_h; ++y) {
    const auto& tap = plan.row_taps[y];
    const Vec w1(tap.weight1);
    T* dst = opmath_target(out + y * out_w, row);
    const T* top = resized_rows + tap.index0 * out_w;
    const T* bottom = resized_rows + tap.index1 * out_w;
    if (normalize) {
      // Blending normalised rows can land an ulp outside [0, 1]; keep every map inside it.
      vec_apply(
          out_w, dst,
          [&](const Vec& a, const Vec& b) { return at::vec::minimum(at::vec::maximum(a + w1 * (b - a), zero), one); },
          top, bottom);
    } else {
      // Raw values may be near the largest finite value, where b - a overflows: the safe blend.
      vec_apply(
          out_w, dst, [&](const Vec& a, const Vec& b) { return postprocess_detail::lerp(a, b, w1); }, top, bottom);
    }
    store_opmath(dst, out_w, out + y * out_w);
  }
}

inline int64_t cam_postprocess_backward_workspace_size(int64_t in_h, int64_t in_w, int64_t out_w) {
  // resized rows and their gradient (in_h x out_w each), the source gradient (in_h x in_w).
  return 2 * in_h * out_w + in_h * in_w;
}

// grad_cam from grad_out for one map. Ties at the min or max share their gradient equally,
// as torch.amin / torch.amax do.
template <typename scalar_t>
void cam_postprocess_backward(const scalar_t* grad_out, const scalar_t* cam, scalar_t* grad_cam,
                              const ResizePlan<opmath_t<scalar_t>>& plan, bool relu, bool normalize,
                              opmath_t<scalar_t>* workspace) {
  using T = opmath_t<scalar_t>;
  const int64_t in_h = plan.in_h, in_w = plan.in_w, out_h = plan.out_h, out_w = plan.out_w;
  T* resized_rows = workspace;
  T* grad_rows = resized_rows + in_h * out_w;
  T* grad_source = grad_rows + in_h * out_w;
  postprocess_detail::resize_rows_horizontally(cam, plan, relu, resized_rows);
  const auto resized = [&](int64_t y, int64_t x) {
    return postprocess_detail::resized_value(resized_rows, plan, y, x);
  };

  // y = (u - lo) / range with range = hi - lo (normalization_range):
  // dy_i/du_i = 1 / range, dy_i/dlo = (y_i - 1) / range, dy_i/dhi = -y_i / range. A constant map's
  // output is all zeros whatever the input nearby: no gradient.
  T lo = T(0), hi = T(0), range = T(1), grad_lo_each = T(0), grad_hi_each = T(0);
  if (normalize) {
    postprocess_detail::resized_min_max(resized_rows, plan, lo, hi);
    range = normalization_range(lo, hi);
    if (range == T(0)) {
      std::fill(grad_cam, grad_cam + in_h * in_w, static_cast<scalar_t>(0));
      return;
    }
    T grad_lo = T(0), grad_hi = T(0);
    int64_t lo_count = 0, hi_count = 0;
    for (int64_t y = 0; y < out_h; ++y) {
      for (int64_t x = 0; x < out_w; ++x) {
        const T u = resized(y, x);
        const T go = static_cast<T>(grad_out[y * out_w + x]);
        const T normalized = (u - lo) / range;
        grad_lo += go * (normalized - T(1));
        grad_hi -= go * normalized;
        lo_count += u == lo;
        hi_count += u == hi;
      }
    }
    grad_lo_each = lo_count > 0 ? grad_lo / range / static_cast<T>(lo_count) : T(0);
    grad_hi_each = hi_count > 0 ? grad_hi / range / static_cast<T>(hi_count) : T(0);
  }

  std::fill(grad_rows, grad_rows + in_h * out_w, T(0));
  for (int64_t y = 0; y < out_h; ++y) {
    const auto& tap = plan.row_taps[y];
    for (int64_t x = 0; x < out_w; ++x) {
      T grad_u = static_cast<T>(grad_out[y * out_w + x]);
      if (normalize) {
        const T u = resized(y, x);
        grad_u = grad_u / range + (u == lo ? grad_lo_each : T(0)) + (u == hi ? grad_hi_each : T(0));
      }
      grad_rows[tap.index0 * out_w + x] += tap.weight0 * grad_u;
      grad_rows[tap.index1 * out_w + x] += tap.weight1 * grad_u;
    }
  }

  std::fill(grad_source, grad_source + in_h * in_w, T(0));
  for (int64_t r = 0; r < in_h; ++r) {
    for (int64_t x = 0; x < out_w; ++x) {
      const auto& tap = plan.col_taps[x];
      const T g = grad_rows[r * out_w + x];
      grad_source[r * in_w + tap.index0] += tap.weight0 * g;
      grad_source[r * in_w + tap.index1] += tap.weight1 * g;
    }
  }
  for (int64_t i = 0; i < in_h * in_w; ++i) {
    const bool passes = !relu || static_cast<T>(cam[i]) > T(0);
    grad_cam[i] = static_cast<scalar_t>(passes ? grad_source[i] : T(0));
  }
}

} // namespace torchcam_ops::kernels
