#pragma once

// cam_reduce on one image, on raw pointers.
//
// Layouts: "channels-first" is A[k * pixels + p] (NCHW); "channels-last" is A[p * channels + k]
// (NHWC). Arithmetic runs in opmath_t (float for half/bfloat16). The caller provides a workspace
// of *_workspace_size() opmath elements, reused across images by one thread.

#include "cam_formulas.h"
#include "cam_method.h"
#include "vec_helpers.h"

#include <algorithm>
#include <cstdint>

namespace torchcam_ops::kernels {

namespace cam_detail {

template <typename T>
using Vec = at::vec::Vectorized<T>;

// w_k of a channel-weighted method for up to kMaxRows channels at once, from their rows of A and
// G (length `pixels`); extents[r] elements may be read from a[r] and g[r] (see load_row).
template <typename T>
inline void channel_weights(CamMethod method, const T* const* a, const T* const* g, int rows, int64_t pixels,
                            const int64_t* extents, T* weights) {
  const T no_params[kMaxRows] = {};
  const auto sum_rows = [&](const T* params, const auto& f, T* out) {
    vec_sum_rows(rows, pixels, a, g, params, extents, f, out);
  };
  const auto activation = [](const Vec<T>& av, const Vec<T>&, const Vec<T>&) { return av; };
  T channel_sums[kMaxRows];
  switch (method) {
    case CamMethod::GradCAM:
      sum_rows(
          no_params, [](const Vec<T>&, const Vec<T>& gv, const Vec<T>&) { return gv; }, weights);
      break;
    case CamMethod::AbsCAM:
      sum_rows(
          no_params, [](const Vec<T>&, const Vec<T>& gv, const Vec<T>&) { return gv.abs(); }, weights);
      break;
    case CamMethod::XGradCAM:
      sum_rows(
          no_params, [](const Vec<T>& av, const Vec<T>& gv, const Vec<T>&) { return av * gv; }, weights);
      sum_rows(no_params, activation, channel_sums);
      for (int r = 0; r < rows; ++r) {
        weights[r] /= channel_sums[r] + static_cast<T>(kXGradCAMEps);
      }
      return;
    default: // GradCAMPlusPlus
      sum_rows(no_params, activation, channel_sums);
      sum_rows(
          channel_sums, [](const Vec<T>&, const Vec<T>& gv, const Vec<T>& s) { return gradcam_pp_term(gv, s); },
          weights);
      return;
  }
  for (int r = 0; r < rows; ++r) {
    weights[r] /= static_cast<T>(pixels);
  }
}

template <typename T>
inline T channel_weight(CamMethod method, const T* a, const T* g, int64_t pixels) {
  T weight;
  channel_weights(method, &a, &g, 1, pixels, /*extents=*/&pixels, &weight);
  return weight;
}

} // namespace cam_detail

inline int64_t cam_reduce_forward_workspace_size(int64_t channels, int64_t pixels, bool channels_last) {
  if (channels_last) {
    // weights, channel sums, one converted pixel row of A and of G, the cam accumulator
    return 4 * channels + pixels;
  }
  // the cam accumulator and kMaxRows converted rows of A and of G, each padded to whole vectors
  // (of float, the type with the most lanes)
  const int64_t padded = round_up(pixels, at::vec::Vectorized<float>::size());
  return (1 + 2 * kMaxRows) * padded;
}

// cam[p] = sum_k w_k A[k, p] (channel-weighted methods) or sum_k f(A[k, p], G[k, p]).
// Channels go kMaxRows at a time, so their weight reductions overlap. `readable_after`: how many
// elements of A and of G after this image's may be read (the next images of the batch); with the
// rows that follow in this image, they let the last partial vector of a row be a plain load where
// that stays inside the buffers.
template <typename scalar_t>
void cam_reduce_forward_channels_first(const scalar_t* activations, const scalar_t* gradients, scalar_t* cam,
                                       int64_t channels, int64_t pixels, CamMethod method,
                                       opmath_t<scalar_t>* workspace, int64_t readable_after = 0) {
  using T = opmath_t<scalar_t>;
  using cam_detail::Vec;
  constexpr int64_t lanes = Vec<T>::size();
  constexpr bool converts = !std::is_same_v<scalar_t, T>;
  const int64_t padded = round_up(pixels, at::vec::Vectorized<float>::size());
  T* acc = workspace;
  T* a_scratch = workspace + padded;
  T* g_scratch = a_scratch + kMaxRows * padded;
  std::fill(acc, acc + padded, T(0));
  const bool weighted = uses_channel_weights(method);

  for (int64_t k0 = 0; k0 < channels; k0 += kMaxRows) {
    const int rows = static_cast<int>(std::min<int64_t>(kMaxRows, channels - k0));
    const T* a[kMaxRows];
    const T* g[kMaxRows];
    int64_t extents[kMaxRows];
    for (int r = 0; r < rows; ++r) {
      a[r] = load_opmath(activations + (k0 + r) * pixels, pixels, a_scratch + r * padded);
      g[r] = load_opmath(gradients + (k0 + r) * pixels, pixels, g_scratch + r * padded);
      // Converted rows live in scratch padded to whole vectors; rows of the input run to the end
      // of this image and on into the readable part of the batch after it.
      extents[r] = converts ? padded : (channels - k0 - r) * pixels + readable_after;
    }
    if (weighted) {
      T weights[kMaxRows];
      cam_detail::channel_weights(method, a, g, rows, pixels, extents, weights);
      for (int r = 0; r < rows; ++r) {
        const Vec<T> w(weights[r]);
        for (int64_t i = 0; i < pixels; i += lanes) {
          (Vec<T>::loadu(acc + i) + w * load_row(a[r], i, pixels, extents[r])).store(acc + i);
        }
      }
    } else {
      for (int r = 0; r < rows; ++r) {
        for (int64_t i = 0; i < pixels; i += lanes) {
          const Vec<T> term =
              elementwise_term(method, load_row(a[r], i, pixels, extents[r]), load_row(g[r], i, pixels, extents[r]));
          (Vec<T>::loadu(acc + i) + term).store(acc + i);
        }
      }
    }
  }
  if constexpr (converts) {
    at::vec::convert(acc, cam, pixels);
  } else {
    std::copy(acc, acc + pixels, cam);
  }
}

template <typename scalar_t>
void cam_reduce_forward_channels_last(const scalar_t* activations, const scalar_t* gradients, scalar_t* cam,
                                      int64_t channels, int64_t pixels, CamMethod method,
                                      opmath_t<scalar_t>* workspace) {
  using T = opmath_t<scalar_t>;
  using cam_detail::Vec;
  T* weights = workspace;
  T* channel_sums = workspace + channels;
  T* a_scratch = workspace + 2 * channels;
  T* g_scratch = workspace + 3 * channels;
  T* acc = workspace + 4 * channels;
  const auto a_row = [&](int64_t p) { return load_opmath(activations + p * channels, channels, a_scratch); };
  const auto g_row = [&](int64_t p) { return load_opmath(gradients + p * channels, channels, g_scratch); };

  if (uses_channel_weights(method)) {
    std::fill(weights, weights + channels, T(0));
    std::fill(channel_sums, channel_sums + channels, T(0));
    const bool needs_channel_sums = method == CamMethod::XGradCAM || method == CamMethod::GradCAMPlusPlus;
    if (needs_channel_sums) {
      for (int64_t p = 0; p < pixels; ++p) {
        vec_apply(
            channels, channel_sums, [](const Vec<T>& s, const Vec<T>& av) { return s + av; }, channel_sums, a_row(p));
      }
    }
    for (int64_t p = 0; p < pixels; ++p) {
      const T* g = g_row(p);
      switch (method) {
        case CamMethod::GradCAM:
          vec_apply(
              channels, weights, [](const Vec<T>& w, const Vec<T>& gv) { return w + gv; }, weights, g);
          break;
        case CamMethod::AbsCAM:
          vec_apply(
              channels, weights, [](const Vec<T>& w, const Vec<T>& gv) { return w + gv.abs(); }, weights, g);
          break;
        case CamMethod::XGradCAM:
          vec_apply(
              channels, weights, [](const Vec<T>& w, const Vec<T>& av, const Vec<T>& gv) { return w + av * gv; },
              weights, a_row(p), g);
          break;
        default: // GradCAMPlusPlus
          vec_apply(
              channels, weights,
              [](const Vec<T>& w, const Vec<T>& gv, const Vec<T>& s) { return w + gradcam_pp_term(gv, s); }, weights, g,
              channel_sums);
          break;
      }
    }
    if (method == CamMethod::XGradCAM) {
      const Vec<T> eps(static_cast<T>(kXGradCAMEps));
      vec_apply(
          channels, weights, [&](const Vec<T>& w, const Vec<T>& s) { return w / (s + eps); }, weights, channel_sums);
    } else if (method != CamMethod::GradCAMPlusPlus) {
      const Vec<T> scale(T(1) / static_cast<T>(pixels));
      vec_apply(
          channels, weights, [&](const Vec<T>& w) { return w * scale; }, weights);
    }
    for (int64_t p = 0; p < pixels; ++p) {
      acc[p] = vec_sum<T>(
          channels, [](const Vec<T>& w, const Vec<T>& av) { return w * av; }, weights, a_row(p));
    }
  } else {
    for (int64_t p = 0; p < pixels; ++p) {
      const T* a = a_row(p);
      acc[p] = vec_sum<T>(
          channels, [&](const Vec<T>& av, const Vec<T>& gv) { return elementwise_term(method, av, gv); }, a, g_row(p));
    }
  }
  if constexpr (std::is_same_v<scalar_t, T>) {
    std::copy(acc, acc + pixels, cam);
  } else {
    at::vec::convert(acc, cam, pixels);
  }
}

inline int64_t cam_reduce_backward_workspace_size(int64_t pixels) {
  // grad_cam, rows of A and G, rows of grad_A and grad_G, all as opmath.
  return 5 * pixels;
}

// Gradients of cam_reduce for one channels-first image, given grad_cam [pixels].
template <typename scalar_t>
void cam_reduce_backward_channels_first(const scalar_t* grad_cam, const scalar_t* activations,
                                        const scalar_t* gradients, scalar_t* grad_activations, scalar_t* grad_gradients,
                                        int64_t channels, int64_t pixels, CamMethod method,
                                        opmath_t<scalar_t>* workspace) {
  using T = opmath_t<scalar_t>;
  using cam_detail::Vec;
  const T* grad_l = load_opmath(grad_cam, pixels, workspace);
  T* a_scratch = workspace + pixels;
  T* g_scratch = workspace + 2 * pixels;
  T* ga_scratch = workspace + 3 * pixels;
  T* gg_scratch = workspace + 4 * pixels;
  const Vec<T> inv_pixels(T(1) / static_cast<T>(pixels));

  for (int64_t k = 0; k < channels; ++k) {
    const int64_t offset = k * pixels;
    const T* a = load_opmath(activations + offset, pixels, a_scratch);
    const T* g = load_opmath(gradients + offset, pixels, g_scratch);
    T* ga = opmath_target(grad_activations + offset, ga_scratch);
    T* gg = opmath_target(grad_gradients + offset, gg_scratch);

    if (uses_channel_weights(method)) {
      // c_k = dLoss/dw_k = sum_p grad_cam[p] A[k, p]; every method passes w_k * grad_cam to A.
      const Vec<T> c(vec_sum<T>(
          pixels, [](const Vec<T>& gl, const Vec<T>& av) { return gl * av; }, grad_l, a));
      const Vec<T> w(cam_detail::channel_weight(method, a, g, pixels));
      switch (method) {
        case CamMethod::GradCAM:
          vec_apply(
              pixels, ga, [&](const Vec<T>& gl) { return w * gl; }, grad_l);
          vec_apply(
              pixels, gg, [&](const Vec<T>&) { return c * inv_pixels; }, g);
          break;
        case CamMethod::AbsCAM:
          vec_apply(
              pixels, ga, [&](const Vec<T>& gl) { return w * gl; }, grad_l);
          vec_apply(
              pixels, gg, [&](const Vec<T>& gv) { return sign(gv) * c * inv_pixels; }, g);
          break;
        case CamMethod::XGradCAM: {
          const Vec<T> den(vec_sum<T>(
                               pixels, [](const Vec<T>& av) { return av; }, a) +
                           static_cast<T>(kXGradCAMEps));
          vec_apply(
              pixels, ga,
              [&](const Vec<T>& gl, const Vec<T>& gv) { return xgradcam_grad_activation(gl, gv, w, c, den); }, grad_l,
              g);
          vec_apply(
              pixels, gg, [&](const Vec<T>& av) { return xgradcam_grad_gradient(av, c, den); }, a);
          break;
        }
        default: { // GradCAMPlusPlus
          const Vec<T> s(vec_sum<T>(
              pixels, [](const Vec<T>& av) { return av; }, a));
          const Vec<T> dw_ds(vec_sum<T>(
              pixels, [&](const Vec<T>& gv) { return gradcam_pp_term_dsum(gv, s); }, g));
          vec_apply(
              pixels, ga, [&](const Vec<T>& gl) { return w * gl + c * dw_ds; }, grad_l);
          vec_apply(
              pixels, gg, [&](const Vec<T>& gv) { return gradcam_pp_grad_gradient(gv, s, c); }, g);
          break;
        }
      }
    } else {
      vec_apply(
          pixels, ga,
          [&](const Vec<T>& gl, const Vec<T>& av, const Vec<T>& gv) {
            return elementwise_grad_activation(method, gl, av, gv);
          },
          grad_l, a, g);
      vec_apply(
          pixels, gg,
          [&](const Vec<T>& gl, const Vec<T>& av, const Vec<T>& gv) {
            return elementwise_grad_gradient(method, gl, av, gv);
          },
          grad_l, a, g);
    }
    store_opmath(ga, pixels, grad_activations + offset);
    store_opmath(gg, pixels, grad_gradients + offset);
  }
}

} // namespace torchcam_ops::kernels
