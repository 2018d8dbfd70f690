#pragma once

// The per-value formulas of cam_reduce and its backward, written once for the CPU kernels
// (V = at::vec::Vectorized<T>, a vector at a time) and the CUDA kernels (V = T, one value at a
// time), with the primitives of ValueOps (nan_semantics.h; vec_helpers.h for vectors).
// docs/design.md has the methods' formulas; these are their pieces.

#include "cam_method.h"
#include "nan_semantics.h"

#include <c10/macros/Macros.h>

namespace torchcam_ops::kernels {

// Grad-CAM++ per-pixel weight: a * ReLU(G) with a = G^2 / (2 G^2 + S G^3 + eps), S the channel's
// sum of A. Numerator and denominator divided by G^2: ReLU(G) / (2 + S G + eps / G^2) is the same
// value without G^2 and G^3, which overflow float32 from |G| ~ 1e19 and 1e13. Where G = 0 the
// denominator is inf and the term 0, as the G^2 factor makes it.
template <typename V>
C10_HOST_DEVICE inline V gradcam_pp_term(V g, V channel_sum) {
  return ValueOps<V>::relu(g) / (V(2) + channel_sum * g + V(kGradCAMPlusPlusEps) / (g * g));
}

// The per-pixel contribution of the element-wise methods to the map.
template <typename V>
C10_HOST_DEVICE inline V elementwise_term(CamMethod method, V a, V g) {
  switch (method) {
    case CamMethod::LayerCAM:
      return ValueOps<V>::relu(g) * a;
    case CamMethod::HiResCAM:
      return g * a;
    default: // GradCAMElementwise
      return ValueOps<V>::relu(g * a);
  }
}

// d(map)/dA and d(map)/dG of the element-wise methods, times the incoming gradient grad_cam.
template <typename V>
C10_HOST_DEVICE inline V elementwise_grad_activation(CamMethod method, V grad_cam, V a, V g) {
  switch (method) {
    case CamMethod::LayerCAM:
      return ValueOps<V>::relu(g) * grad_cam;
    case CamMethod::HiResCAM:
      return g * grad_cam;
    default: // GradCAMElementwise
      return ValueOps<V>::positive_indicator(g * a) * g * grad_cam;
  }
}

template <typename V>
C10_HOST_DEVICE inline V elementwise_grad_gradient(CamMethod method, V grad_cam, V a, V g) {
  switch (method) {
    case CamMethod::LayerCAM:
      return ValueOps<V>::positive_indicator(g) * a * grad_cam;
    case CamMethod::HiResCAM:
      return a * grad_cam;
    default: // GradCAMElementwise
      return ValueOps<V>::positive_indicator(g * a) * a * grad_cam;
  }
}

// sign(G), the derivative of |G| (0 at 0), for Abs-CAM's backward.
template <typename V>
C10_HOST_DEVICE inline V sign(V g) {
  return ValueOps<V>::positive_indicator(g) - ValueOps<V>::positive_indicator(V(0) - g);
}

// Backward of the Grad-CAM++ weight w = sum_p f(G_p, S), f = gradcam_pp_term = ReLU(G) / E,
// E = 2 + S G + r, r = eps / G^2, with c = dLoss/dw:
//   df/dS = -ReLU(G) G / E^2 (summed over the channel, it reaches every A_p through S = sum(A));
//   dG = c df/dG = c (2 + 3 r) / E^2 for G > 0, and 0 for G <= 0 whatever c is (NaN and inf included,
//   as autograd's ReLU selects rather than multiplies). Where r exceeds 1e30, df/dG is below 3e-30
//   and is taken as 0 (r itself may overflow to inf there).
template <typename V>
C10_HOST_DEVICE inline V gradcam_pp_term_dsum(V g, V channel_sum) {
  const V e = V(2) + channel_sum * g + V(kGradCAMPlusPlusEps) / (g * g);
  return V(0) - (ValueOps<V>::relu(g) / e) * (g / e); // not ReLU(G) G, which overflows
}

template <typename V>
C10_HOST_DEVICE inline V gradcam_pp_grad_gradient(V g, V channel_sum, V c) {
  const V r = V(kGradCAMPlusPlusEps) / (g * g);
  const V e = V(2) + channel_sum * g + r;
  return ValueOps<V>::where_positive(g, ValueOps<V>::where_positive(V(1e30) - r, c * ((V(2) + V(3) * r) / (e * e))));
}

// XGrad-CAM's w = sum(A G) / den, den = sum(A) + eps: with c = dLoss/dw, the gradients at one
// pixel are w grad_cam + c (G - w) / den for A, and c A / den for G.
template <typename V>
C10_HOST_DEVICE inline V xgradcam_grad_activation(V grad_cam, V g, V weight, V c, V den) {
  return weight * grad_cam + c * (g - weight) / den;
}

template <typename V>
C10_HOST_DEVICE inline V xgradcam_grad_gradient(V a, V c, V den) {
  return c * a / den;
}

} // namespace torchcam_ops::kernels
