// cam_postprocess: ReLU, bilinear resize (half-pixel centres) and per-map min-max, fused.
// Schema and argument checks; kernels in cpu/ and cuda/.

#include "cam_postprocess.h"
#include "../kernels/normalize.h"
#include "autograd_support.h"
#include "checks.h"

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <limits>

namespace torchcam_ops {

void check_cam_postprocess_args(const at::Tensor& cam, int64_t out_h, int64_t out_w) {
  const char* op = "cam_postprocess";
  check_dim(op, "cam", cam, 3, "[N, h, w]");
  check_floating(op, "cam", cam);
  TORCH_CHECK_VALUE(cam.size(1) >= 1 && cam.size(2) >= 1, op, ": cam maps must be at least 1x1, got shape ",
                    cam.sizes());
  TORCH_CHECK_VALUE(out_h >= 1 && out_w >= 1, op, ": out_h and out_w must be >= 1, got ", out_h, " and ", out_w);
}

void check_cam_postprocess_backward_args(const at::Tensor& grad_out, const at::Tensor& cam, int64_t out_h,
                                         int64_t out_w) {
  const char* op = "cam_postprocess_backward";
  check_cam_postprocess_args(cam, out_h, out_w);
  check_dim(op, "grad_out", grad_out, 3, "[N, out_h, out_w]");
  TORCH_CHECK_VALUE(grad_out.size(0) == cam.size(0) && grad_out.size(1) == out_h && grad_out.size(2) == out_w, op,
                    ": grad_out must have shape [", cam.size(0), ", ", out_h, ", ", out_w, "], got ", grad_out.sizes());
  check_same_dtype_device(op, "grad_out", grad_out, "cam", cam);
}

at::Tensor cam_postprocess_backward_composite(const at::Tensor& grad_out, const at::Tensor& cam, int64_t out_h,
                                              int64_t out_w, bool relu, bool normalize) {
  check_cam_postprocess_backward_args(grad_out, cam, out_h, out_w);
  const auto opmath = at::toOpMathType(cam.scalar_type());
  const at::Tensor source = cam.to(opmath).unsqueeze(1);
  const at::Tensor rectified = relu ? at::relu(source) : source;
  at::Tensor grad = grad_out.to(opmath).unsqueeze(1);
  if (normalize) {
    // y = (u - lo) / range, range = hi - lo (kernels/normalize.h); ties at lo or hi share their
    // gradient equally; a constant map has no gradient.
    const at::Tensor resized = at::upsample_bilinear2d(rectified, {out_h, out_w}, /*align_corners=*/false);
    const at::Tensor lo = at::amin(resized, {2, 3}, /*keepdim=*/true);
    const at::Tensor hi = at::amax(resized, {2, 3}, /*keepdim=*/true);
    const double epsilon =
        opmath == at::kDouble ? std::numeric_limits<double>::epsilon() : std::numeric_limits<float>::epsilon();
    const at::Tensor noise = at::maximum(lo.abs(), hi.abs()) * (kernels::kConstantMapUlps * epsilon);
    const at::Tensor constant = (hi - lo) <= noise;
    const at::Tensor range = at::where(constant, at::ones_like(lo), hi - lo);
    grad = grad * at::logical_not(constant).to(opmath);
    const at::Tensor normalized = (resized - lo) / range;
    const at::Tensor at_lo = (resized == lo).to(opmath);
    const at::Tensor at_hi = (resized == hi).to(opmath);
    const at::Tensor grad_lo = (grad * (normalized - 1)).sum({2, 3}, true) / range / at_lo.sum({2, 3}, true);
    const at::Tensor grad_hi = -(grad * normalized).sum({2, 3}, true) / range / at_hi.sum({2, 3}, true);
    grad = grad / range + at_lo * grad_lo + at_hi * grad_hi;
  }
  at::Tensor grad_source = at::upsample_bilinear2d_backward(grad, {out_h, out_w}, rectified.sizes(),
                                                            /*align_corners=*/false);
  if (relu) {
    grad_source = grad_source * (source > 0).to(opmath);
  }
  return grad_source.squeeze(1).to(cam.scalar_type()).contiguous();
}

TORCH_LIBRARY_FRAGMENT(torchcam_ops, m) {
  m.set_python_module("torchcam_ops.ops.cam");
  m.def("cam_postprocess(Tensor cam, SymInt out_h, SymInt out_w, bool relu=True, bool normalize=True) -> Tensor",
        {at::Tag::pt2_compliant_tag});
  m.def(
      "cam_postprocess_backward(Tensor grad_out, Tensor cam, SymInt out_h, SymInt out_w, bool relu, bool normalize)"
      " -> Tensor",
      {at::Tag::pt2_compliant_tag});
}

namespace {

// Autograd (see autograd_support.h): the backward is its own op.
class CamPostprocessFunction : public torch::autograd::Function<CamPostprocessFunction> {
 public:
  static at::Tensor forward(autograd::AutogradContext* ctx, const at::Tensor& cam, const c10::SymInt& out_h,
                            const c10::SymInt& out_w, bool relu, bool normalize) {
    static const auto op = autograd::op_handle<at::Tensor(const at::Tensor&, c10::SymInt, c10::SymInt, bool, bool)>(
        "torchcam_ops::cam_postprocess");
    at::Tensor out;
    {
      const at::AutoDispatchBelowADInplaceOrView below_autograd;
      out = op.call(cam, out_h, out_w, relu, normalize);
    }
    ctx->save_for_backward({cam});
    ctx->saved_data["out_h"] = out_h;
    ctx->saved_data["out_w"] = out_w;
    ctx->saved_data["relu"] = relu;
    ctx->saved_data["normalize"] = normalize;
    return out;
  }

  static autograd::variable_list backward(autograd::AutogradContext* ctx, autograd::variable_list grads) {
    static const auto backward_op =
        autograd::op_handle<at::Tensor(const at::Tensor&, const at::Tensor&, c10::SymInt, c10::SymInt, bool, bool)>(
            "torchcam_ops::cam_postprocess_backward");
    const at::Tensor grad_cam = backward_op.call(
        grads[0], ctx->get_saved_variables()[0], ctx->saved_data["out_h"].toSymInt(),
        ctx->saved_data["out_w"].toSymInt(), ctx->saved_data["relu"].toBool(), ctx->saved_data["normalize"].toBool());
    return {grad_cam, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

at::Tensor cam_postprocess_autograd(const at::Tensor& cam, c10::SymInt out_h, c10::SymInt out_w, bool relu,
                                    bool normalize) {
  return CamPostprocessFunction::apply(cam, out_h, out_w, relu, normalize);
}

} // namespace

TORCH_LIBRARY_IMPL(torchcam_ops, Autograd, m) {
  m.impl("cam_postprocess", &cam_postprocess_autograd);
}

// The backward is not a hot path: devices without a kernel of their own (CUDA) run the same maths
// composed of ATen ops; the CPU kernel (cpu/cam_postprocess_kernel.cpp) takes precedence there.
TORCH_LIBRARY_IMPL(torchcam_ops, CompositeExplicitAutograd, m) {
  m.impl("cam_postprocess_backward", &cam_postprocess_backward_composite);
}

} // namespace torchcam_ops
