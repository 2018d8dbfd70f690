#pragma once

// Small vectorised building blocks over raw arrays, shared by the CPU kernels.
// Every loop runs whole Vectorized<T> lanes and finishes with one partial lane,
// so the order of additions (and therefore the result) never depends on threads.

#include "nan_semantics.h"

#include <ATen/OpMathType.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

namespace torchcam_ops::kernels {

template <typename scalar_t>
using opmath_t = at::opmath_type<scalar_t>;

// The formula primitives (nan_semantics.h) on a vector at a time, with the scalar versions' results lane by lane.
template <typename T>
struct ValueOps<at::vec::Vectorized<T>> {
  using V = at::vec::Vectorized<T>;
  static V relu(const V& x) {
    return at::vec::maximum(x, V(T(0))); // maximum() propagates NaN like torch.relu
  }
  static V positive_indicator(const V& x) {
    return x.gt(V(T(0)));
  }
  static V where_positive(const V& condition, const V& value) {
    return V::blendv(V(T(0)), value, condition > V(T(0)));
  }
};

// out[i] = f(in[i]...) for i < n. `f` takes and returns Vectorized<T>; out may alias an input.
template <typename T, typename F, typename... In>
inline void vec_apply(int64_t n, T* out, const F& f, const In*... in) {
  using Vec = at::vec::Vectorized<T>;
  constexpr int64_t lanes = Vec::size();
  int64_t i = 0;
  for (; i + lanes <= n; i += lanes) {
    f(Vec::loadu(in + i)...).store(out + i);
  }
  if (i < n) {
    const auto count = static_cast<int>(n - i);
    f(Vec::loadu(in + i, count)...).store(out + i, count);
  }
}

// sum_i f(in[i]...) for i < n, accumulated lane-wise then across lanes in a fixed order.
template <typename T, typename F, typename... In>
inline T vec_sum(int64_t n, const F& f, const In*... in) {
  using Vec = at::vec::Vectorized<T>;
  constexpr int64_t lanes = Vec::size();
  Vec acc(T(0));
  int64_t i = 0;
  for (; i + lanes <= n; i += lanes) {
    acc += f(Vec::loadu(in + i)...);
  }
  if (i < n) {
    const auto count = static_cast<int>(n - i);
    // Padding lanes are loaded as zeros; `set` keeps only the real lanes of f's result.
    acc += Vec::set(Vec(T(0)), f(Vec::loadu(in + i, count)...), count);
  }
  alignas(64) T parts[lanes];
  acc.store(parts);
  T total = 0;
  for (int64_t lane = 0; lane < lanes; ++lane) {
    total += parts[lane];
  }
  return total;
}

// Sum of a vector's lanes, in a fixed pairwise order.
template <typename T>
inline T horizontal_sum(const at::vec::Vectorized<T>& v) {
  constexpr int64_t lanes = at::vec::Vectorized<T>::size();
  alignas(64) T parts[lanes];
  v.store(parts);
  for (int64_t width = lanes / 2; width > 0; width /= 2) {
    for (int64_t lane = 0; lane < width; ++lane) {
      parts[lane] += parts[lane + width];
    }
  }
  return parts[0];
}

inline int64_t round_up(int64_t n, int64_t multiple) {
  return (n + multiple - 1) / multiple * multiple;
}

// Lanes [i, i + lanes) of a row of n elements, where `extent` >= n elements may be read from `row`
// on (the memory after the row that belongs to the same buffer). A full load when the vector stays
// within the extent (faster than a partial one), else a partial load that zero-fills the lanes past
// n; callers mask or ignore the lanes past n either way.
template <typename T>
inline at::vec::Vectorized<T> load_row(const T* row, int64_t i, int64_t n, int64_t extent) {
  using Vec = at::vec::Vectorized<T>;
  return i + Vec::size() <= std::max(n, extent) ? Vec::loadu(row + i) : Vec::loadu(row + i, static_cast<int>(n - i));
}

// out[r] = sum_i f(a[r][i], g[r][i], Vec(params[r])) for r < rows <= kMaxRows, i < n. Each row has
// its own accumulator, so the additions of different rows overlap in the pipeline instead of
// waiting on each other. extents[r]: elements readable from a[r] and from g[r] (see load_row).
inline constexpr int kMaxRows = 4;

template <typename T, typename F>
inline void vec_sum_rows(int rows, int64_t n, const T* const* a, const T* const* g, const T* params,
                         const int64_t* extents, const F& f, T* out) {
  using Vec = at::vec::Vectorized<T>;
  constexpr int64_t lanes = Vec::size();
  Vec acc[kMaxRows];
  Vec param[kMaxRows];
  for (int r = 0; r < rows; ++r) {
    acc[r] = Vec(T(0));
    param[r] = Vec(params[r]);
  }
  int64_t i = 0;
  for (; i + lanes <= n; i += lanes) {
    for (int r = 0; r < rows; ++r) {
      acc[r] += f(Vec::loadu(a[r] + i), Vec::loadu(g[r] + i), param[r]);
    }
  }
  if (i < n) {
    const auto count = static_cast<int>(n - i);
    for (int r = 0; r < rows; ++r) {
      const Vec term = f(load_row(a[r], i, n, extents[r]), load_row(g[r], i, n, extents[r]), param[r]);
      acc[r] += Vec::set(Vec(T(0)), term, count);
    }
  }
  for (int r = 0; r < rows; ++r) {
    out[r] = horizontal_sum(acc[r]);
  }
}

// A row as opmath values: the row itself when no conversion is needed, else a copy in `scratch`.
template <typename scalar_t>
inline const opmath_t<scalar_t>* load_opmath(const scalar_t* src, int64_t n, opmath_t<scalar_t>* scratch) {
  if constexpr (std::is_same_v<scalar_t, opmath_t<scalar_t>>) {
    return src;
  } else {
    at::vec::convert(src, scratch, n);
    return scratch;
  }
}

// Where a kernel should write opmath results that end up in `dst`: `dst` itself when no
// conversion is needed, else `scratch` (followed by store_opmath).
template <typename scalar_t>
inline opmath_t<scalar_t>* opmath_target(scalar_t* dst, opmath_t<scalar_t>* scratch) {
  if constexpr (std::is_same_v<scalar_t, opmath_t<scalar_t>>) {
    return dst;
  } else {
    return scratch;
  }
}

template <typename scalar_t>
inline void store_opmath(const opmath_t<scalar_t>* src, int64_t n, scalar_t* dst) {
  if constexpr (!std::is_same_v<scalar_t, opmath_t<scalar_t>>) {
    at::vec::convert(src, dst, n);
  }
}

} // namespace torchcam_ops::kernels
