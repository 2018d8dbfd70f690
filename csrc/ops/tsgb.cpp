// TSGB (Target-Selective Gradient Backprop) layers: forwards are the ordinary layers; each
// backward to the input is a relevance rule of its own op (docs/design.md). Schemas, checks, the
// forwards (ATen, any device), and the backward rules that are a few ATen ops on any device
// (linear: two small matmuls; average pooling: the pooling adjoint and a division; the elementwise
// pass-through: a product and a division). The conv and batch-norm rules have CPU and CUDA kernels
// (cpu/ and cuda/tsgb_*_kernel.*).

#include "tsgb.h"
#include "autograd_support.h"
#include "checks.h"

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <cmath>
#include <utility>
#include <vector>

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

// Batch norm's optional weight and bias: [C] with C = input.size(1), on the input's device (and of
// its dtype where the op needs it).
void check_batch_norm_affine(const char* op, const std::optional<at::Tensor>& weight,
                             const std::optional<at::Tensor>& bias, const at::Tensor& input, bool same_dtype) {
  for (const auto& [name, parameter] : {std::pair{"weight", &weight}, std::pair{"bias", &bias}}) {
    if (parameter->has_value() && (*parameter)->defined()) {
      const at::Tensor& t = **parameter;
      TORCH_CHECK_VALUE(t.dim() == 1 && t.size(0) == input.size(1), op, ": ", name,
                        " must be [C] with C = ", input.size(1), ", got shape ", t.sizes());
      if (same_dtype) {
        check_same_dtype_device(op, name, t, "input", input);
      } else {
        check_same_device(op, name, t, "input", input);
      }
    }
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
  check_batch_norm_affine(op, weight, bias, input, /*same_dtype=*/true);
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

// Any elementwise layer Y = f(X) (an activation, a normalisation): the caller computes Y with the
// layer's own forward; this op returns a copy of it, whose backward is the pass-through rule.
at::Tensor tsgb_pass_through(const at::Tensor& input, const at::Tensor& output) {
  const char* op = "tsgb_pass_through";
  check_floating(op, "input", input);
  check_same_shape(op, "output", output, "input", input);
  check_same_dtype_device(op, "output", output, "input", input);
  return output.clone();
}

// -- backward rules written with ATen ops -----------------------------------------------------

// Relevance passes unchanged: grad_X = G Y / X (0 where X = 0), so that sum X grad_X = sum G Y.
at::Tensor tsgb_pass_through_backward(const at::Tensor& grad_output, const at::Tensor& input,
                                      const at::Tensor& output) {
  check_tsgb_pass_through_backward_args(grad_output, input, output);
  const at::Tensor x = to_opmath(input);
  const at::Tensor relevance = to_opmath(grad_output) * to_opmath(output);
  // Divided by 1 where X = 0, so that the masked values are finite before they are dropped.
  const at::Tensor safe_x = at::where(x != 0, x, at::ones_like(x));
  return at::where(x != 0, relevance / safe_x, at::zeros_like(x)).to(input.scalar_type());
}

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

// Relevance G * Y shared equally over the positions of each window that can carry it (X != 0;
// padding never), divided by X. Without zeros or padding this is the equal split over the window;
// with them, the shares of zeros and padding go to the window's other positions instead of being
// lost, so that sum X grad_X = sum G Y (a window of zeros has Y = 0 and nothing to share).
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
  const at::Tensor carriers = (x != 0).to(x.scalar_type());
  const double window = static_cast<double>(kernel_size[0] * kernel_size[1]);
  // the number of carriers in each window: their average over the whole window (padding counted) times its size
  const at::Tensor count = at::round(at::avg_pool2d(carriers, kernel_size, stride, padding, /*ceil_mode=*/false,
                                                    /*count_include_pad=*/true) *
                                     window);
  const at::Tensor relevance = to_opmath(grad_output) * to_opmath(output);
  const at::Tensor share = at::where(count > 0, relevance / count.clamp_min(1), at::zeros_like(relevance));
  // the adjoint of the window sum: the adjoint of the average (1/window each) times the window size
  const at::Tensor gathered = at::avg_pool2d_backward(share, x, kernel_size, stride, padding, /*ceil_mode=*/false,
                                                      /*count_include_pad=*/true, /*divisor_override=*/std::nullopt) *
                              window;
  return at::where(x != 0, gathered / at::where(x != 0, x, at::ones_like(x)), at::zeros_like(x))
      .to(input.scalar_type());
}

} // namespace

void check_tsgb_pass_through_backward_args(const at::Tensor& grad_output, const at::Tensor& input,
                                           const at::Tensor& output) {
  const char* op = "tsgb_pass_through_backward";
  check_floating(op, "input", input);
  check_same_shape(op, "output", output, "input", input);
  check_same_shape(op, "grad_output", grad_output, "input", input);
  check_same_dtype_device(op, "output", output, "input", input);
  check_same_dtype_device(op, "grad_output", grad_output, "input", input);
}

void check_tsgb_batch_norm_backward_args(const at::Tensor& grad_output, const at::Tensor& input,
                                         const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias,
                                         const at::Tensor& running_mean, const at::Tensor& running_var) {
  const char* op = "tsgb_batch_norm_backward";
  check_floating(op, "input", input);
  TORCH_CHECK_VALUE(input.dim() >= 2, op, ": input must be [N, C, ...], got shape ", input.sizes());
  check_same_shape(op, "grad_output", grad_output, "input", input);
  check_same_dtype_device(op, "grad_output", grad_output, "input", input);
  TORCH_CHECK_VALUE(
      running_mean.dim() == 1 && running_mean.size(0) == input.size(1) && running_var.sizes() == running_mean.sizes(),
      op, ": running_mean and running_var must be [C] with C = ", input.size(1));
  // the kernels read the per-channel tensors where the input is
  check_same_device(op, "running_mean", running_mean, "input", input);
  check_same_device(op, "running_var", running_var, "input", input);
  check_batch_norm_affine(op, weight, bias, input, /*same_dtype=*/false); // converted to opmath there
}

void add_stranded_shift_relevance(at::Tensor& grad_input, const at::Tensor& grad_output, const at::Tensor& input,
                                  const at::Tensor& shift) {
  if (input.numel() == 0) {
    return;
  }
  const at::Tensor zeros = input == 0;
  // On the CPU a look costs less than the share's passes, and most batch norms have no zero input; on
  // a GPU the look would synchronise the host, so the share is always computed there.
  if (input.device().is_cpu() && !zeros.any().item<bool>()) {
    return;
  }
  std::vector<int64_t> channel_shape(input.dim(), 1);
  channel_shape[1] = input.size(1);
  const at::Tensor x = to_opmath(input);
  // per image position, over the channels
  const at::Tensor stranded = (to_opmath(grad_output) * zeros * shift.reshape(channel_shape)).sum(1, true);
  const at::Tensor magnitude = x.abs().sum(1, /*keepdim=*/true);
  const at::Tensor share =
      at::where(magnitude > 0, stranded / at::where(magnitude > 0, magnitude, at::ones_like(magnitude)),
                at::zeros_like(magnitude));
  grad_input.copy_(to_opmath(grad_input) + at::sign(x) * share);
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
  m.set_python_module("torchcam_ops.ops.tsgb");
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
  m.def("tsgb_pass_through(Tensor input, Tensor output) -> Tensor", tags);
  m.def("tsgb_pass_through_backward(Tensor grad_output, Tensor input, Tensor output) -> Tensor", tags);
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
  m.impl("tsgb_pass_through", &tsgb_pass_through);
  m.impl("tsgb_pass_through_backward", &tsgb_pass_through_backward);
}

} // namespace torchcam_ops

// -- autograd (see autograd_support.h) ----------------------------------------------------------
// Gradients to the input follow the rules' backward ops; gradients to parameters, when asked for,
// are the ordinary ones of the layer.

namespace torchcam_ops {

namespace {

using autograd::AutogradContext;
using autograd::defined;
using autograd::InputEdges;
using autograd::op_handle;
using autograd::variable_list;

class TSGBLinearFunction : public torch::autograd::Function<TSGBLinearFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input, const at::Tensor& weight,
                            const std::optional<at::Tensor>& bias, double beta) {
    static const auto op = op_handle<decltype(tsgb_linear)>("torchcam_ops::tsgb_linear");
    at::Tensor output;
    {
      const at::AutoDispatchBelowADInplaceOrView below_autograd;
      output = op.call(input, weight, bias, beta);
    }
    ctx->save_for_backward({input, weight});
    ctx->saved_data["beta"] = beta;
    ctx->saved_data["has_bias"] = defined(bias);
    return output;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto backward_op = op_handle<decltype(tsgb_linear_backward)>("torchcam_ops::tsgb_linear_backward");
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &input = saved[0], &weight = saved[1], &grad = grads[0];
    const InputEdges edges{true, true, ctx->saved_data["has_bias"].toBool(), false};
    at::Tensor grad_input, grad_weight, grad_bias;
    if (edges.needs_grad(ctx, 0)) {
      grad_input = backward_op.call(grad, input, weight, ctx->saved_data["beta"].toDouble());
    }
    const at::Tensor rows = grad.reshape({-1, grad.size(-1)});
    if (edges.needs_grad(ctx, 1)) {
      grad_weight = rows.t().mm(input.reshape({-1, input.size(-1)}));
    }
    if (edges.needs_grad(ctx, 2)) {
      grad_bias = rows.sum(0);
    }
    return {grad_input, grad_weight, grad_bias, at::Tensor()};
  }
};

class TSGBConv2dFunction : public torch::autograd::Function<TSGBConv2dFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input, const at::Tensor& weight,
                            const std::optional<at::Tensor>& bias, at::IntArrayRef stride, at::IntArrayRef padding,
                            at::IntArrayRef dilation, int64_t groups) {
    static const auto op = op_handle<decltype(tsgb_conv2d)>("torchcam_ops::tsgb_conv2d");
    at::Tensor output;
    {
      const at::AutoDispatchBelowADInplaceOrView below_autograd;
      output = op.call(input, weight, bias, stride, padding, dilation, groups);
    }
    ctx->save_for_backward({input, weight, output});
    ctx->saved_data["stride"] = stride.vec();
    ctx->saved_data["padding"] = padding.vec();
    ctx->saved_data["dilation"] = dilation.vec();
    ctx->saved_data["groups"] = groups;
    ctx->saved_data["has_bias"] = defined(bias);
    return output;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto backward_op =
        op_handle<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, at::IntArrayRef, at::IntArrayRef,
                             at::IntArrayRef, at::IntArrayRef, int64_t)>("torchcam_ops::tsgb_conv2d_backward");
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &input = saved[0], &weight = saved[1], &output = saved[2], &grad = grads[0];
    const auto stride = ctx->saved_data["stride"].toIntVector();
    const auto padding = ctx->saved_data["padding"].toIntVector();
    const auto dilation = ctx->saved_data["dilation"].toIntVector();
    const int64_t groups = ctx->saved_data["groups"].toInt();
    const bool has_bias = ctx->saved_data["has_bias"].toBool();
    const InputEdges edges{true, true, has_bias, false, false, false, false};
    at::Tensor grad_input, grad_weight, grad_bias;
    if (edges.needs_grad(ctx, 0)) {
      grad_input = backward_op.call(grad, input, output, weight.sizes().slice(2), stride, padding, dilation, groups);
    }
    const bool weight_grad = edges.needs_grad(ctx, 1), bias_grad = edges.needs_grad(ctx, 2);
    if (weight_grad || bias_grad) {
      const std::vector<int64_t> bias_sizes{weight.size(0)};
      std::tie(std::ignore, grad_weight, grad_bias) = at::convolution_backward(
          grad, input, weight, has_bias ? at::OptionalIntArrayRef(bias_sizes) : at::OptionalIntArrayRef(), stride,
          padding, dilation, /*transposed=*/false, /*output_padding=*/{0, 0}, groups, {false, weight_grad, bias_grad});
    }
    return {grad_input, grad_weight, grad_bias, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

class TSGBBatchNormFunction : public torch::autograd::Function<TSGBBatchNormFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input, const std::optional<at::Tensor>& weight,
                            const std::optional<at::Tensor>& bias, const at::Tensor& running_mean,
                            const at::Tensor& running_var, double eps) {
    static const auto op = op_handle<decltype(tsgb_batch_norm)>("torchcam_ops::tsgb_batch_norm");
    at::Tensor output;
    {
      const at::AutoDispatchBelowADInplaceOrView below_autograd;
      output = op.call(input, weight, bias, running_mean, running_var, eps);
    }
    // Not the output: networks modify it in place (ReLU(inplace=True), `out += identity`); the
    // backward op recomputes it from the channel's affine map.
    ctx->save_for_backward(
        {input, running_mean, running_var, weight.value_or(at::Tensor()), bias.value_or(at::Tensor())});
    ctx->saved_data["eps"] = eps;
    ctx->saved_data["has_weight"] = defined(weight);
    ctx->saved_data["has_bias"] = defined(bias);
    return output;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto backward_op =
        op_handle<at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                             const std::optional<at::Tensor>&, const at::Tensor&, const at::Tensor&, double)>(
            "torchcam_ops::tsgb_batch_norm_backward");
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &input = saved[0], &running_mean = saved[1], &running_var = saved[2], &grad = grads[0];
    const bool has_weight = ctx->saved_data["has_weight"].toBool(), has_bias = ctx->saved_data["has_bias"].toBool();
    const std::optional<at::Tensor> weight = has_weight ? std::optional<at::Tensor>(saved[3]) : std::nullopt;
    const std::optional<at::Tensor> bias = has_bias ? std::optional<at::Tensor>(saved[4]) : std::nullopt;
    const double eps = ctx->saved_data["eps"].toDouble();
    const InputEdges edges{true, has_weight, has_bias, true, true, false};
    at::Tensor grad_input, grad_weight, grad_bias;
    if (edges.needs_grad(ctx, 0)) {
      grad_input = backward_op.call(grad, input, weight, bias, running_mean, running_var, eps);
    }
    std::vector<int64_t> reduce_dims{0};
    for (int64_t d = 2; d < input.dim(); ++d) {
      reduce_dims.push_back(d);
    }
    if (edges.needs_grad(ctx, 1)) {
      std::vector<int64_t> shape(input.dim(), 1);
      shape[1] = -1;
      const at::Tensor normalized = (input - running_mean.reshape(shape)) * at::rsqrt(running_var.reshape(shape) + eps);
      grad_weight = (grad * normalized).sum(reduce_dims);
    }
    if (edges.needs_grad(ctx, 2)) {
      grad_bias = grad.sum(reduce_dims);
    }
    return {grad_input, grad_weight, grad_bias, at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

class TSGBAvgPool2dFunction : public torch::autograd::Function<TSGBAvgPool2dFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input, at::IntArrayRef kernel_size,
                            at::IntArrayRef stride, at::IntArrayRef padding) {
    at::Tensor output;
    {
      const at::AutoDispatchBelowADInplaceOrView below_autograd;
      output = forward_op().call(input, kernel_size, stride, padding);
    }
    ctx->save_for_backward({input}); // not the output, for the reason of batch norm's
    ctx->saved_data["kernel_size"] = kernel_size.vec();
    ctx->saved_data["stride"] = stride.vec();
    ctx->saved_data["padding"] = padding.vec();
    return output;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto backward_op =
        op_handle<decltype(tsgb_avg_pool2d_backward)>("torchcam_ops::tsgb_avg_pool2d_backward");
    const at::Tensor input = ctx->get_saved_variables()[0];
    const auto kernel_size = ctx->saved_data["kernel_size"].toIntVector();
    const auto stride = ctx->saved_data["stride"].toIntVector();
    const auto padding = ctx->saved_data["padding"].toIntVector();
    at::Tensor output;
    {
      const at::NoGradGuard no_grad; // recomputed: cheap, and the saved one may have been modified
      output = forward_op().call(input, kernel_size, stride, padding);
    }
    return {backward_op.call(grads[0], input, output, kernel_size, stride, padding), at::Tensor(), at::Tensor(),
            at::Tensor()};
  }

 private:
  static const c10::TypedOperatorHandle<decltype(tsgb_avg_pool2d)>& forward_op() {
    static const auto op = op_handle<decltype(tsgb_avg_pool2d)>("torchcam_ops::tsgb_avg_pool2d");
    return op;
  }
};

class TSGBPassThroughFunction : public torch::autograd::Function<TSGBPassThroughFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input, const at::Tensor& output) {
    static const auto op = op_handle<decltype(tsgb_pass_through)>("torchcam_ops::tsgb_pass_through");
    at::Tensor copy;
    {
      const at::AutoDispatchBelowADInplaceOrView below_autograd;
      copy = op.call(input, output);
    }
    // The caller's Y, not the returned copy: networks modify the copy in place (SiLU(inplace=True)).
    ctx->save_for_backward({input, output});
    return copy;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto backward_op =
        op_handle<decltype(tsgb_pass_through_backward)>("torchcam_ops::tsgb_pass_through_backward");
    const auto saved = ctx->get_saved_variables();
    at::Tensor grad_input;
    if (ctx->needs_input_grad(0)) {
      grad_input = backward_op.call(grads[0], saved[0], saved[1]);
    }
    return {grad_input, at::Tensor()}; // Y is the layer's value, not a path for relevance
  }
};

at::Tensor tsgb_pass_through_autograd(const at::Tensor& input, const at::Tensor& output) {
  return TSGBPassThroughFunction::apply(input, output);
}

at::Tensor tsgb_linear_autograd(const at::Tensor& input, const at::Tensor& weight,
                                const std::optional<at::Tensor>& bias, double beta) {
  return TSGBLinearFunction::apply(input, weight, bias, beta);
}

at::Tensor tsgb_conv2d_autograd(const at::Tensor& input, const at::Tensor& weight,
                                const std::optional<at::Tensor>& bias, at::IntArrayRef stride, at::IntArrayRef padding,
                                at::IntArrayRef dilation, int64_t groups) {
  return TSGBConv2dFunction::apply(input, weight, bias, stride, padding, dilation, groups);
}

at::Tensor tsgb_batch_norm_autograd(const at::Tensor& input, const std::optional<at::Tensor>& weight,
                                    const std::optional<at::Tensor>& bias, const at::Tensor& running_mean,
                                    const at::Tensor& running_var, double eps) {
  return TSGBBatchNormFunction::apply(input, weight, bias, running_mean, running_var, eps);
}

at::Tensor tsgb_avg_pool2d_autograd(const at::Tensor& input, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                    at::IntArrayRef padding) {
  return TSGBAvgPool2dFunction::apply(input, kernel_size, stride, padding);
}

} // namespace

TORCH_LIBRARY_IMPL(torchcam_ops, Autograd, m) {
  m.impl("tsgb_linear", &tsgb_linear_autograd);
  m.impl("tsgb_conv2d", &tsgb_conv2d_autograd);
  m.impl("tsgb_batch_norm", &tsgb_batch_norm_autograd);
  m.impl("tsgb_avg_pool2d", &tsgb_avg_pool2d_autograd);
  m.impl("tsgb_pass_through", &tsgb_pass_through_autograd);
}

} // namespace torchcam_ops
