// rectified_relu: forward ReLU; backward by a rectification rule (guided backprop, deconvnet, or
// the ordinary ReLU gradient). Schema, checks, and the forward (ATen's ReLU on any device).

#include "rectified_relu.h"
#include "autograd_support.h"
#include "checks.h"

#include <ATen/ops/relu.h>
#include <torch/library.h>

#include <string_view>

namespace torchcam_ops {

ReluRectification parse_rectification(const char* op, c10::string_view mode) {
  const std::string_view view(mode.data(), mode.size());
  if (view == "guided") {
    return ReluRectification::Guided;
  }
  if (view == "deconvnet") {
    return ReluRectification::Deconvnet;
  }
  if (view == "plain") {
    return ReluRectification::Plain;
  }
  TORCH_CHECK_VALUE(false, op, ": unknown mode '", view, "'; expected one of 'guided', 'deconvnet', 'plain'");
  return ReluRectification::Plain; // not reached
}

ReluRectification check_rectified_relu_backward_args(const at::Tensor& grad_output, const at::Tensor& input,
                                                     c10::string_view mode) {
  const char* op = "rectified_relu_backward";
  const ReluRectification rule = parse_rectification(op, mode);
  check_floating(op, "input", input);
  check_same_shape(op, "grad_output", grad_output, "input", input);
  check_same_dtype_device(op, "grad_output", grad_output, "input", input);
  return rule;
}

namespace {

at::Tensor rectified_relu_forward(const at::Tensor& input, c10::string_view mode) {
  parse_rectification("rectified_relu", mode);
  check_floating("rectified_relu", "input", input);
  return at::relu(input);
}

} // namespace

TORCH_LIBRARY_FRAGMENT(torchcam_ops, m) {
  m.set_python_module("torchcam_ops.ops.tsgb");
  m.def("rectified_relu(Tensor input, str mode) -> Tensor", {at::Tag::pt2_compliant_tag});
  m.def("rectified_relu_backward(Tensor grad_output, Tensor input, str mode) -> Tensor", {at::Tag::pt2_compliant_tag});
}

namespace {

// Autograd (see autograd_support.h): the backward is the rule's own op.
class RectifiedReluFunction : public torch::autograd::Function<RectifiedReluFunction> {
 public:
  static at::Tensor forward(autograd::AutogradContext* ctx, const at::Tensor& input, c10::string_view mode) {
    static const auto op =
        autograd::op_handle<at::Tensor(const at::Tensor&, c10::string_view)>("torchcam_ops::rectified_relu");
    at::Tensor output;
    {
      const at::AutoDispatchBelowADInplaceOrView below_autograd;
      output = op.call(input, mode);
    }
    ctx->save_for_backward({input});
    ctx->saved_data["mode"] = std::string(mode.data(), mode.size());
    return output;
  }

  static autograd::variable_list backward(autograd::AutogradContext* ctx, autograd::variable_list grads) {
    static const auto backward_op =
        autograd::op_handle<at::Tensor(const at::Tensor&, const at::Tensor&, c10::string_view)>(
            "torchcam_ops::rectified_relu_backward");
    const std::string mode = ctx->saved_data["mode"].toStringRef();
    return {backward_op.call(grads[0], ctx->get_saved_variables()[0], mode), at::Tensor()};
  }
};

at::Tensor rectified_relu_autograd(const at::Tensor& input, c10::string_view mode) {
  return RectifiedReluFunction::apply(input, mode);
}

} // namespace

TORCH_LIBRARY_IMPL(torchcam_ops, CompositeExplicitAutograd, m) {
  m.impl("rectified_relu", &rectified_relu_forward);
}

TORCH_LIBRARY_IMPL(torchcam_ops, Autograd, m) {
  m.impl("rectified_relu", &rectified_relu_autograd);
}

} // namespace torchcam_ops
