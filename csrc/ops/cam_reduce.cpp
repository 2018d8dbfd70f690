// cam_reduce: the raw class activation map of one layer from its activations and gradients.
// Schema and argument checks; kernels in cpu/ and cuda/.

#include "cam_reduce.h"
#include "autograd_support.h"
#include "checks.h"

#include <torch/library.h>

#include <sstream>
#include <string_view>

namespace torchcam_ops {

namespace {

CamMethod parse_method(const char* op, c10::string_view name) {
  const std::string_view view(name.data(), name.size());
  const auto method = cam_method_from_name(view);
  if (!method) {
    std::ostringstream valid;
    for (size_t i = 0; i < kCamMethods.size(); ++i) {
      valid << (i ? ", " : "") << '\'' << kCamMethods[i].name << '\'';
    }
    TORCH_CHECK_VALUE(false, op, ": unknown method '", view, "'; expected one of ", valid.str());
  }
  return *method;
}

void check_activations_and_gradients(const char* op, const at::Tensor& activations, const at::Tensor& gradients) {
  check_dim(op, "activations", activations, 4, "[N, K, h, w]");
  check_floating(op, "activations", activations);
  check_same_shape(op, "gradients", gradients, "activations", activations);
  check_same_dtype_device(op, "gradients", gradients, "activations", activations);
}

} // namespace

CamMethod check_cam_reduce_args(const at::Tensor& activations, const at::Tensor& gradients, c10::string_view method) {
  const CamMethod parsed = parse_method("cam_reduce", method);
  check_activations_and_gradients("cam_reduce", activations, gradients);
  return parsed;
}

CamMethod check_cam_reduce_backward_args(const at::Tensor& grad_cam, const at::Tensor& activations,
                                         const at::Tensor& gradients, c10::string_view method) {
  const char* op = "cam_reduce_backward";
  const CamMethod parsed = parse_method(op, method);
  check_activations_and_gradients(op, activations, gradients);
  check_dim(op, "grad_cam", grad_cam, 3, "[N, h, w]");
  const auto sizes = activations.sizes();
  TORCH_CHECK_VALUE(grad_cam.size(0) == sizes[0] && grad_cam.size(1) == sizes[2] && grad_cam.size(2) == sizes[3], op,
                    ": grad_cam must have shape [", sizes[0], ", ", sizes[2], ", ", sizes[3], "], got ",
                    grad_cam.sizes());
  check_same_dtype_device(op, "grad_cam", grad_cam, "activations", activations);
  return parsed;
}

TORCH_LIBRARY_FRAGMENT(torchcam_ops, m) {
  m.set_python_module("torchcam_ops.ops.cam");
  m.def("cam_reduce(Tensor activations, Tensor gradients, str method) -> Tensor", {at::Tag::pt2_compliant_tag});
  m.def("cam_reduce_backward(Tensor grad_cam, Tensor activations, Tensor gradients, str method) -> (Tensor, Tensor)",
        {at::Tag::pt2_compliant_tag});
}

namespace {

// Autograd (see autograd_support.h): the backward is its own op.
class CamReduceFunction : public torch::autograd::Function<CamReduceFunction> {
 public:
  static at::Tensor forward(autograd::AutogradContext* ctx, const at::Tensor& activations, const at::Tensor& gradients,
                            c10::string_view method) {
    static const auto op = autograd::op_handle<at::Tensor(const at::Tensor&, const at::Tensor&, c10::string_view)>(
        "torchcam_ops::cam_reduce");
    at::Tensor cam;
    {
      const at::AutoDispatchBelowADInplaceOrView below_autograd;
      cam = op.call(activations, gradients, method);
    }
    ctx->save_for_backward({activations, gradients});
    ctx->saved_data["method"] = std::string(method.data(), method.size());
    return cam;
  }

  static autograd::variable_list backward(autograd::AutogradContext* ctx, autograd::variable_list grads) {
    static const auto backward_op =
        autograd::op_handle<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                               c10::string_view)>("torchcam_ops::cam_reduce_backward");
    const auto saved = ctx->get_saved_variables();
    const std::string method = ctx->saved_data["method"].toStringRef();
    auto [grad_activations, grad_gradients] = backward_op.call(grads[0], saved[0], saved[1], method);
    return {ctx->needs_input_grad(0) ? grad_activations : at::Tensor(),
            ctx->needs_input_grad(1) ? grad_gradients : at::Tensor(), at::Tensor()};
  }
};

at::Tensor cam_reduce_autograd(const at::Tensor& activations, const at::Tensor& gradients, c10::string_view method) {
  return CamReduceFunction::apply(activations, gradients, method);
}

} // namespace

TORCH_LIBRARY_IMPL(torchcam_ops, Autograd, m) {
  m.impl("cam_reduce", &cam_reduce_autograd);
}

} // namespace torchcam_ops
