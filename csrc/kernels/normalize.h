#pragma once

// The scale-free min-max normalisation shared by the CPU and CUDA kernels of cam_postprocess
// (docs/design.md): y = (u - lo) / (hi - lo), except that a map whose range hi - lo is within a few
// ulps of its magnitude max(|lo|, |hi|) is constant and normalises to exact zeros. Without an
// absolute guard, a map of raw range 1e-12 and the same map times 1e12 normalise alike.

#include <c10/macros/Macros.h>

#include <cmath>
#include <limits>

namespace torchcam_ops::kernels {

// A range at most this many ulps of the map's magnitude is rounding noise (an interpolated
// constant wobbles by one or two).
inline constexpr int kConstantMapUlps = 8;

// The divisor of the normalisation: hi - lo, or 0 for a constant map (whose output is all zeros).
// NaN extremes give NaN, so NaN maps stay NaN.
template <typename T>
C10_HOST_DEVICE inline T normalization_range(T lo, T hi) {
  const T range = hi - lo;
  const T magnitude = ::fmax(::fabs(lo), ::fabs(hi));
  const T noise = static_cast<T>(kConstantMapUlps) * std::numeric_limits<T>::epsilon() * magnitude;
  return range > noise ? range : (range == range ? T(0) : range);
}

// 1/2 where the range hi - lo of finite extremes overflows (both near the largest finite value, with
// opposite signs), else 1: the normalisation then runs on u/2, lo/2, hi/2 (halving is exact), which
// gives the same y without the overflow.
template <typename T>
C10_HOST_DEVICE inline T normalization_prescale(T lo, T hi) {
  const T range = hi - lo;
  const bool finite_extremes = lo - lo == T(0) && hi - hi == T(0);
  return finite_extremes && !(range - range == T(0)) ? T(0.5) : T(1);
}

// a + w (b - a), exact where a == b (constant regions stay constant); where b - a overflows (both
// near the largest finite value, with opposite signs), the same blend as a (1 - w) + b w.
template <typename T>
C10_HOST_DEVICE inline T blend(T a, T b, T w) {
  const T difference = b - a;
  return difference - difference == T(0) || difference != difference ? a + w * difference : a * (T(1) - w) + b * w;
}

} // namespace torchcam_ops::kernels
