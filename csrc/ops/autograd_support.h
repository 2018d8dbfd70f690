#pragma once

// Shared pieces of the ops' autograd kernels (TORCH_LIBRARY_IMPL(torchcam_ops, Autograd, ...) in each
// op's file).
//
// Autograd is registered in C++ rather than with torch.library.register_autograd: the Python wrapper
// costs about 100 us per call (argument defaults, Function.apply, the Python backward), and the
// explainers call these ops once per layer (TSGB: about 110 calls per ResNet-50 explanation, guided
// backprop one per ReLU), which made them several times slower than the gradient they replace.
// Fake kernels stay in Python (torchcam_ops/ops/cam.py, torchcam_ops/ops/tsgb.py).

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>

#include <optional>

namespace torchcam_ops::autograd {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// The typed handle of an op of this library, to call it through the dispatcher (below autograd in
// a forward, so fake and meta tensors reach the fake kernels).
template <typename Signature>
c10::TypedOperatorHandle<Signature> op_handle(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

inline bool defined(const std::optional<at::Tensor>& t) {
  return t.has_value() && t->defined();
}

// Autograd numbers its input edges over the tensor arguments that are present, so an absent
// optional tensor shifts the index of every tensor after it. `present[i]` says whether forward
// argument i is a tensor that was passed.
class InputEdges {
 public:
  explicit InputEdges(std::initializer_list<bool> present) {
    int64_t edge = 0;
    for (const bool is_tensor : present) {
      edges_.push_back(is_tensor ? edge++ : -1);
    }
  }

  // Whether forward argument `argument` needs a gradient in this backward pass.
  bool needs_grad(AutogradContext* ctx, size_t argument) const {
    return edges_[argument] >= 0 && ctx->needs_input_grad(static_cast<size_t>(edges_[argument]));
  }

 private:
  std::vector<int64_t> edges_;
};

} // namespace torchcam_ops::autograd
