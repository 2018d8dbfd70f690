#pragma once

// cam_postprocess on one map, on raw pointers: ReLU, bilinear resize with half-pixel centres
// (F.interpolate(mode="bilinear", align_corners=False)), then min-max normalisation.
//
// The resize is separable: each source row is first resized horizontally (in_h x out_w values),
// then every output row blends two of those rows, vectorised over the output width. Blends are
// written a + w1 (b - a) rather than PyTorch's w0 a + w1 b: the same value up to rounding, and
// exact where a == b, so a constant map stays exactly constant and normalises to zeros.

#include "vec_helpers.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

namespace torchcam_ops::kernels {

// Added to the range of a map before dividing, so an all-constant map becomes all zeros.
inline constexpr double kNormalizeEps = 1e-7;

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

namespace postprocess_detail {

template <typename T>
inline T relu_keep_nan(T x) {
  return x < T(0) ? T(0) : x; // NaN compares false and passes through, like torch.relu
}

template <typename T>
inline T min_keep_nan(T a, T b) {
  return (std::isnan(a) || a < b) ? a : b;
}

template <typename T>
inline T max_keep_nan(T a, T b) {
  return (std::isnan(a) || a > b) ? a : b;
}

// resized_rows[r * out_w + x]: source row r resized to out_w, ReLU applied to the source first.
template <typename scalar_t>
void resize_rows_horizontally(
    const scalar_t* cam,
    int64_t in_h,
    int64_t in_w,
    int64_t out_w,
    const BilinearTap<opmath_t<scalar_t>>* col_taps,
    bool relu,
    opmath_t<scalar_t>* resized_rows) {
  using T = opmath_t<scalar_t>;
  for (int64_t r = 0; r < in_h; ++r) {
    const scalar_t* src = cam + r * in_w;
    T* dst = resized_rows + r * out_w;
    for (int64_t x = 0; x < out_w; ++x) {
      const auto& tap = col_taps[x];
      T v0 = static_cast<T>(src[tap.index0]);
      T v1 = static_cast<T>(src[tap.index1]);
      if (relu) {
        v0 = relu_keep_nan(v0);
        v1 = relu_keep_nan(v1);
      }
      dst[x] = v0 + tap.weight1 * (v1 - v0);
    }
  }
}

// Min and max of out_h rows, each a blend of two horizontally resized rows.
template <typename T>
void blended_min_max(
    const T* resized_rows,
    int64_t out_h,
    int64_t out_w,
    const BilinearTap<T>* row_taps,
    T* row,
    T& min_out,
    T& max_out) {
  using Vec = at::vec::Vectorized<T>;
  constexpr int64_t lanes = Vec::size();
  Vec lo(std::numeric_limits<T>::infinity());
  Vec hi(-std::numeric_limits<T>::infinity());
  for (int64_t y = 0; y < out_h; ++y) {
    const auto& tap = row_taps[y];
    const Vec w1(tap.weight1);
    vec_apply(out_w, row, [&](const Vec& a, const Vec& b) { return a + w1 * (b - a); },
              resized_rows + tap.index0 * out_w, resized_rows + tap.index1 * out_w);
    int64_t x = 0;
    for (; x + lanes <= out_w; x += lanes) {
      const Vec v = Vec::loadu(row + x);
      lo = at::vec::minimum(lo, v);
      hi = at::vec::maximum(hi, v);
    }
    if (x < out_w) {
      const auto count = static_cast<int>(out_w - x);
      const Vec v = Vec::loadu(row + x, count);
      lo = at::vec::minimum(lo, Vec::set(lo, v, count));
      hi = at::vec::maximum(hi, Vec::set(hi, v, count));
    }
  }
  alignas(64) T lo_lanes[lanes];
  alignas(64) T hi_lanes[lanes];
  lo.store(lo_lanes);
  hi.store(hi_lanes);
  min_out = lo_lanes[0];
  max_out = hi_lanes[0];
  for (int64_t lane = 1; lane < lanes; ++lane) {
    min_out = min_keep_nan(min_out, lo_lanes[lane]);
    max_out = max_keep_nan(max_out, hi_lanes[lane]);
  }
}

} // namespace postprocess_detail

inline int64_t cam_postprocess_forward_workspace_size(int64_t in_h, int64_t out_w) {
  return in_h * out_w + out_w; // horizontally resized rows + one output row
}

template <typename scalar_t>
void cam_postprocess_forward(
    const scalar_t* cam,
    scalar_t* out,
    int64_t in_h,
    int64_t in_w,
    int64_t out_h,
    int64_t out_w,
    const BilinearTap<opmath_t<scalar_t>>* row_taps,
    const BilinearTap<opmath_t<scalar_t>>* col_taps,
    bool relu,
    bool normalize,
    opmath_t<scalar_t>* workspace) {
  using T = opmath_t<scalar_t>;
  using Vec = at::vec::Vectorized<T>;
  T* resized_rows = workspace;
  T* row = workspace + in_h * out_w;
  postprocess_detail::resize_rows_horizontally(cam, in_h, in_w, out_w, col_taps, relu, resized_rows);

  T lo = T(0);
  T range = T(1);
  if (normalize) {
    T hi;
    postprocess_detail::blended_min_max(resized_rows, out_h, out_w, row_taps, row, lo, hi);
    range = hi - lo + static_cast<T>(kNormalizeEps);
  }
  const Vec lo_vec(lo), range_vec(range);
  for (int64_t y = 0; y < out_h; ++y) {
    const auto& tap = row_taps[y];
    const Vec w1(tap.weight1);
    T* dst = opmath_target(out + y * out_w, row);
    const T* top = resized_rows + tap.index0 * out_w;
    const T* bottom = resized_rows + tap.index1 * out_w;
    if (normalize) {
      vec_apply(out_w, dst, [&](const Vec& a, const Vec& b) { return (a + w1 * (b - a) - lo_vec) / range_vec; },
                top, bottom);
    } else {
      vec_apply(out_w, dst, [&](const Vec& a, const Vec& b) { return a + w1 * (b - a); }, top, bottom);
    }
    store_opmath(dst, out_w, out + y * out_w);
  }
}

inline int64_t cam_postprocess_backward_workspace_size(int64_t in_h, int64_t in_w, int64_t out_w) {
  // resized rows and their gradient (in_h x out_w each), the source gradient (in_h x in_w), one row.
  return 2 * in_h * out_w + in_h * in_w + out_w;
}

// grad_cam from grad_out for one map. Ties at the min or max share their gradient equally,
// as torch.amin / torch.amax do.
template <typename scalar_t>
void cam_postprocess_backward(
    const scalar_t* grad_out,
    const scalar_t* cam,
    scalar_t* grad_cam,
    int64_t in_h,
    int64_t in_w,
    int64_t out_h,
    int64_t out_w,
    const BilinearTap<opmath_t<scalar_t>>* row_taps,
    const BilinearTap<opmath_t<scalar_t>>* col_taps,
    bool relu,
    bool normalize,
    opmath_t<scalar_t>* workspace) {
  using T = opmath_t<scalar_t>;
  T* resized_rows = workspace;
  T* grad_rows = resized_rows + in_h * out_w;
  T* grad_source = grad_rows + in_h * out_w;
  T* row = grad_source + in_h * in_w;
  postprocess_detail::resize_rows_horizontally(cam, in_h, in_w, out_w, col_taps, relu, resized_rows);
  const auto resized = [&](int64_t y, int64_t x) {
    const auto& tap = row_taps[y];
    const T top = resized_rows[tap.index0 * out_w + x];
    return top + tap.weight1 * (resized_rows[tap.index1 * out_w + x] - top);
  };

  // y = (u - lo) / range with range = hi - lo + eps:
  // dy_i/du_i = 1 / range, dy_i/dlo = (y_i - 1) / range, dy_i/dhi = -y_i / range.
  T lo = T(0), hi = T(0), range = T(1), grad_lo_each = T(0), grad_hi_each = T(0);
  if (normalize) {
    postprocess_detail::blended_min_max(resized_rows, out_h, out_w, row_taps, row, lo, hi);
    range = hi - lo + static_cast<T>(kNormalizeEps);
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
    const auto& tap = row_taps[y];
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
      const auto& tap = col_taps[x];
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
