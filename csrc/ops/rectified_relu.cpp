// rectified_relu: forward ReLU; backward by a rectification rule (guided backprop, deconvnet, or
// the ordinary ReLU gradient). Schema, checks, and the forward (ATen's ReLU on any device).

#include "rectified_relu.h"
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
  m.set_python_module("torchcam_ops.ops");
  m.def("rectified_relu(Tensor input, str mode) -> Tensor", {at::Tag::pt2_compliant_tag});
  m.def("rectified_relu_backward(Tensor grad_output, Tensor input, str mode) -> Tensor", {at::Tag::pt2_compliant_tag});
}

TORCH_LIBRARY_IMPL(torchcam_ops, CompositeExplicitAutograd, m) {
  m.impl("rectified_relu", &rectified_relu_forward);
}

} // namespace torchcam_ops
