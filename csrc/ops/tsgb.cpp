// TSGB (Target-Selective Gradient Backprop) layers: forwards are the ordinary layers; each
// backward to the input is a relevance rule of its own op (docs/design.md). Schemas, checks, the
// forwards (ATen, any device), and the backward rules that are a few ATen ops on any device
// (linear: two small matmuls; average pooling: the pooling adjoint and a division). The conv and
// batch-norm rules have CPU and CUDA kernels (cpu/ and cuda/tsgb_*_kernel.*).

#include "tsgb.h"
#include "checks.h"

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <cmath>
#include <utility>

namespace torchcam_ops {

namespace {

void check_pair(const char* op, const char* name, at::IntArrayRef values, int64_t minimum) {
  TORCH_CHECK_VALUE(values.size() == 2, op, ": ", name, " must have 2 values, got ", values.size());
  TORCH_CHECK_VALUE(values[0] >= minimum && values[1] >= minimum, op, ": ", name, " must be >= ", minimum, ", got ",
                    values);
}

void check_bias(const char* op, const std::optional<at::Tensor>& bias, int64_t features, const at::Tensor& input) {
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == features, op, ": bias must be [", features,
                      "] (one value per output feature), got shape ", bias->sizes());
    check_same_dtype_device(op, "bias", *bias, "input", input);
  }
}

at::Tensor to_opmath(const at::Tensor& t) {
  return t.to(at::toOpMathType(t.scalar_type()));
}

// -- forwards ----------------------------------------------------------------------------------

at::Tensor tsgb_linear(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                       double beta) {
  const char* op = "tsgb_linear";
  check_floating(op, "input", input);
  TORCH_CHECK_VALUE(input.dim() >= 1, op, ": input must have at least 1 dimension");
  check_dim(op, "weight", weight, 2, "[out_features, in_features]");
  TORCH_CHECK_VALUE(weight.size(1) == input.size(-1), op, ": weight must have in_features = ", input.size(-1),
                    " (the last dimension of input), got shape ", weight.sizes());
  check_same_dtype_device(op, "weight", weight, "input", input);
  check_bias(op, bias, weight.size(0), input);
  TORCH_CHECK_VALUE(std::isfinite(beta), op, ": beta must be a finite number, got ", beta);
  return at::linear(input, weight, bias);
}

at::Tensor tsgb_conv2d(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                       at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  const char* op = "tsgb_conv2d";
  check_dim(op, "input", input, 4, "[N, C, H, W]");
  check_floating(op, "input", input);
  check_dim(op, "weight", weight, 4, "[C_out, C_in / groups, kh, kw]");
  check_same_dtype_device(op, "weight", weight, "input", input);
  check_pair(op, "stride", stride, 1);
  check_pair(op, "padding", padding, 0);
  check_pair(op, "dilation", dilation, 1);
  TORCH_CHECK_VALUE(groups >= 1 && input.size(1) % groups == 0 && weight.size(0) % groups == 0 &&
                        weight.size(1) * groups == input.size(1),
                    op, ": groups = ", groups, " does not fit input channels ", input.size(1), " and weight shape ",
                    weight.sizes());
  TORCH_CHECK_VALUE(weight.size(0) >= 1, op, ": weight must have at least one output channel, got shape ",
                    weight.sizes());
  check_bias(op, bias, weight.size(0), input);
  for (int64_t d = 0; d < 2; ++d) {
    const int64_t span = dilation[d] * (weight.size(2 + d) - 1) + 1;
    TORCH_CHECK_VALUE(input.size(2 + d) + 2 * padding[d] >= span, op, ": the kernel (", weight.size(2), "x",
                      weight.size(3), ", dilation ", dilation, ") is larger than the padded input (", input.size(2),
                      "x", input.size(3), ", padding ", padding, ")");
  }
  return at::conv2d(input, weight, bias, stride, padding, dilation, groups);
}

at::Tensor tsgb_batch_norm(const at::Tensor& input, const std::optional<at::Tensor>& weight,
                           const std::optional<at::Tensor>& bias, const at::Tensor& running_mean,
                           const at::Tensor& running_var, double eps) {
  const char* op = "tsgb_batch_norm";
  check_floating(op, "input", input);
  TORCH_CHECK_VALUE(input.dim() >= 2, op, ": input must be [N, C, ...], got shape ", input.sizes());
  TORCH_CHECK_VALUE(
      running_mean.dim() == 1 && running_mean.size(0) == input.size(1) && running_var.sizes() == running_mean.sizes(),
      op, ": running_mean and running_var must be [C] with C = ", input.size(1));
  check_same_dtype_device(op, "running_mean", running_mean, "input", input);
  check_same_dtype_device(op, "running_var", running_var, "input", input);
  for (const auto& [name, affine] : {std::pair{"weight", weight}, std::pair{"bias", bias}}) {
    if (affine.has_value() && affine->defined()) {
      TORCH_CHECK_VALUE(affine->sizes() == running_mean.sizes(), op, ": ", name, " must be [", input.size(1),
                        "], got shape ", affine->sizes());
      check_same_dtype_device(op, name, *affine, "input", input);
    }
  }
  return at::batch_norm(input, weight, bias, running_mean, running_var, /*training=*/false, /*momentum=*/0.0, eps,
                        /*cudnn_enabled=*/false);
}

at::Tensor tsgb_avg_pool2d(const at::Tensor& input, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                           at::IntArrayRef padding) {
  const char* op = "tsgb_avg_pool2d";
  check_dim(op, "input", input, 4, "[N, C, H, W]");
  check_floating(op, "input", input);
  check_pair(op, "kernel_size", kernel_size, 1);
  check_pair(op, "stride", stride, 1);
  check_pair(op, "padding", padding, 0);
  TORCH_CHECK_VALUE(2 * padding[0] <= kernel_size[0] && 2 * padding[1] <= kernel_size[1], op,
                    ": padding must be at most half the kernel size, got padding ", padding, " for kernel ",
                    kernel_size);
  return at::avg_pool2d(input, kernel_size, stride, padding);
}

// -- backward rules written with ATen ops -----------------------------------------------------

// g_h = g W+ + beta (g * ratio) W-, ratio = z+ / |z-| (0 where z- = 0), z+- = h W+-^T.
at::Tensor tsgb_linear_backward(const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
                                double beta) {
  const char* op = "tsgb_linear_backward";
  check_floating(op, "input", input);
  check_dim(op, "weight", weight, 2, "[out_features, in_features]");
  check_same_dtype_device(op, "grad_output", grad_output, "input", input);
  TORCH_CHECK_VALUE(grad_output.dim() == input.dim() && grad_output.size(-1) == weight.size(0), op,
                    ": grad_output must be [..., ", weight.size(0), "], got shape ", grad_output.sizes());
  const at::Tensor h = to_opmath(input).reshape({-1, weight.size(1)});
  const at::Tensor g = to_opmath(grad_output).reshape({-1, weight.size(0)});
  const at::Tensor w = to_opmath(weight);
  const at::Tensor positive = w.clamp_min(0);
  const at::Tensor negative = w.clamp_max(0);
  const at::Tensor z_positive = at::mm(h, positive.t());
  const at::Tensor z_negative = at::mm(h, negative.t());
  const at::Tensor ratio = at::where(z_negative != 0, z_positive / z_negative.abs(), at::zeros_like(z_positive));
  const at::Tensor grad = at::mm(g, positive) + beta * at::mm(g * ratio, negative);
  return grad.reshape(input.sizes()).to(input.scalar_type());
}

// Relevance G * Y shared equally over each window (the pooling adjoint), divided by X.
at::Tensor tsgb_avg_pool2d_backward(const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& output,
                                    at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef padding) {
  const char* op = "tsgb_avg_pool2d_backward";
  check_dim(op, "input", input, 4, "[N, C, H, W]");
  check_floating(op, "input", input);
  check_same_shape(op, "grad_output", grad_output, "output", output);
  check_pair(op, "kernel_size", kernel_size, 1);
  check_pair(op, "stride", stride, 1);
  check_pair(op, "padding", padding, 0);
  const at::Tensor x = to_opmath(input);
  const at::Tensor relevance = to_opmath(grad_output) * to_opmath(output);
  const at::Tensor shared = at::avg_pool2d_backward(relevance, x, kernel_size, stride, padding, /*ceil_mode=*/false,
                                                    /*count_include_pad=*/true, /*divisor_override=*/std::nullopt);
  return at::where(x != 0, shared / x, at::zeros_like(x)).to(input.scalar_type());
}

} // namespace

void check_tsgb_batch_norm_backward_args(const at::Tensor& grad_output, const at::Tensor& input,
                                         const at::Tensor& running_mean, const at::Tensor& running_var) {
  const char* op = "tsgb_batch_norm_backward";
  check_floating(op, "input", input);
  TORCH_CHECK_VALUE(input.dim() >= 2, op, ": input must be [N, C, ...], got shape ", input.sizes());
  check_same_shape(op, "grad_output", grad_output, "input", input);
  check_same_dtype_device(op, "grad_output", grad_output, "input", input);
  TORCH_CHECK_VALUE(
      running_mean.dim() == 1 && running_mean.size(0) == input.size(1) && running_var.sizes() == running_mean.sizes(),
      op, ": running_mean and running_var must be [C] with C = ", input.size(1));
}

std::pair<at::Tensor, at::Tensor> batch_norm_affine(const at::Tensor& input, const std::optional<at::Tensor>& weight,
                                                    const std::optional<at::Tensor>& bias,
                                                    const at::Tensor& running_mean, const at::Tensor& running_var,
                                                    double eps) {
  const auto opmath = at::toOpMathType(input.scalar_type());
  at::Tensor scale = at::rsqrt(running_var.to(opmath) + eps);
  if (weight.has_value() && weight->defined()) {
    scale = scale * weight->to(opmath);
  }
  at::Tensor shift = -running_mean.to(opmath) * scale;
  if (bias.has_value() && bias->defined()) {
    shift = shift + bias->to(opmath);
  }
  return {scale.contiguous(), shift.contiguous()};
}

kernels::Conv2dGeometry check_tsgb_conv2d_backward_args(const at::Tensor& grad_output, const at::Tensor& input,
                                                        const at::Tensor& output, at::IntArrayRef kernel_size,
                                                        at::IntArrayRef stride, at::IntArrayRef padding,
                                                        at::IntArrayRef dilation, int64_t groups) {
  const char* op = "tsgb_conv2d_backward";
  check_dim(op, "input", input, 4, "[N, C, H, W]");
  check_floating(op, "input", input);
  check_dim(op, "output", output, 4, "[N, C_out, H', W']");
  check_same_shape(op, "grad_output", grad_output, "output", output);
  check_same_dtype_device(op, "grad_output", grad_output, "input", input);
  check_same_dtype_device(op, "output", output, "input", input);
  check_pair(op, "kernel_size", kernel_size, 1);
  check_pair(op, "stride", stride, 1);
  check_pair(op, "padding", padding, 0);
  check_pair(op, "dilation", dilation, 1);
  TORCH_CHECK_VALUE(output.size(0) == input.size(0), op, ": output must have the batch size of input");
  TORCH_CHECK_VALUE(groups >= 1 && input.size(1) % groups == 0 && output.size(1) % groups == 0, op,
                    ": groups = ", groups, " must divide the input channels ", input.size(1), " and output channels ",
                    output.size(1));
  kernels::Conv2dGeometry geo{input.size(2),  input.size(3),  output.size(2), output.size(3),
                              kernel_size[0], kernel_size[1], stride[0],      stride[1],
                              padding[0],     padding[1],     dilation[0],    dilation[1]};
  const auto expected = [](int64_t in, int64_t k, int64_t s, int64_t p, int64_t d) {
    return (in + 2 * p - d * (k - 1) - 1) / s + 1;
  };
  TORCH_CHECK_VALUE(geo.out_h == expected(geo.in_h, geo.kernel_h, geo.stride_h, geo.pad_h, geo.dilation_h) &&
                        geo.out_w == expected(geo.in_w, geo.kernel_w, geo.stride_w, geo.pad_w, geo.dilation_w),
                    op, ": output ", output.sizes(), " is not the output of a convolution of input ", input.sizes(),
                    " with these kernel_size, stride, padding and dilation");
  return geo;
}

TORCH_LIBRARY_FRAGMENT(torchcam_ops, m) {
  m.set_python_module("torchcam_ops.ops");
  const std::vector<at::Tag> tags{at::Tag::pt2_compliant_tag};
  m.def("tsgb_linear(Tensor input, Tensor weight, Tensor? bias, float beta=1.0) -> Tensor", tags);
  m.def("tsgb_linear_backward(Tensor grad_output, Tensor input, Tensor weight, float beta) -> Tensor", tags);
  m.def(
      "tsgb_conv2d(Tensor input, Tensor weight, Tensor? bias, int[2] stride, int[2] padding, int[2] dilation, "
      "int groups) -> Tensor",
      tags);
  m.def(
      "tsgb_conv2d_backward(Tensor grad_output, Tensor input, Tensor output, int[2] kernel_size, int[2] stride, "
      "int[2] padding, int[2] dilation, int groups) -> Tensor",
      tags);
  m.def(
      "tsgb_batch_norm(Tensor input, Tensor? weight, Tensor? bias, Tensor running_mean, Tensor running_var, "
      "float eps) -> Tensor",
      tags);
  m.def(
      "tsgb_batch_norm_backward(Tensor grad_output, Tensor input, Tensor? weight, Tensor? bias, "
      "Tensor running_mean, Tensor running_var, float eps) -> Tensor",
      tags);
  m.def("tsgb_avg_pool2d(Tensor input, int[2] kernel_size, int[2] stride, int[2] padding) -> Tensor", tags);
  m.def(
      "tsgb_avg_pool2d_backward(Tensor grad_output, Tensor input, Tensor output, int[2] kernel_size, "
      "int[2] stride, int[2] padding) -> Tensor",
      tags);
}

TORCH_LIBRARY_IMPL(torchcam_ops, CompositeExplicitAutograd, m) {
  m.impl("tsgb_linear", &tsgb_linear);
  m.impl("tsgb_conv2d", &tsgb_conv2d);
  m.impl("tsgb_batch_norm", &tsgb_batch_norm);
  m.impl("tsgb_avg_pool2d", &tsgb_avg_pool2d);
  m.impl("tsgb_linear_backward", &tsgb_linear_backward);
  m.impl("tsgb_avg_pool2d_backward", &tsgb_avg_pool2d_backward);
}

} // namespace torchcam_ops
