// nmf_sweep: one coordinate-descent sweep of non-negative matrix factorisation over one factor (the
// concepts of Deep Feature Factorization). Schema and checks; kernels in cpu/ and cuda/. Not
// differentiable: the sweep is a solver step, not a function of the model's output.

#include "nmf_sweep.h"
#include "checks.h"

#include <ATen/OpMathType.h>
#include <torch/library.h>

namespace torchcam_ops {

void check_nmf_sweep_args(const at::Tensor& factor, const at::Tensor& gram, const at::Tensor& products) {
  const char* op = "nmf_sweep";
  check_floating(op, "factor", factor);
  check_dim(op, "factor", factor, 2, "[rows, components]");
  check_dim(op, "gram", gram, 2, "[components, components]");
  check_same_shape(op, "products", products, "factor", factor);
  const int64_t components = factor.size(1);
  TORCH_CHECK_VALUE(gram.size(0) == components && gram.size(1) == components, op,
                    ": gram must be [components, components] = [", components, ", ", components, "], got shape ",
                    gram.sizes());
  check_same_dtype_device(op, "gram", gram, "factor", factor);
  check_same_dtype_device(op, "products", products, "factor", factor);
}

NmfSweepOperands nmf_sweep_operands(const at::Tensor& factor, const at::Tensor& gram, const at::Tensor& products) {
  const at::ScalarType compute = at::toOpMathType(factor.scalar_type());
  return {factor.to(compute, /*non_blocking=*/false, /*copy=*/true, at::MemoryFormat::Contiguous),
          gram.to(compute).contiguous(), products.to(compute).contiguous()};
}

TORCH_LIBRARY_FRAGMENT(torchcam_ops, m) {
  m.set_python_module("torchcam_ops.ops.factorization");
  m.def("nmf_sweep(Tensor factor, Tensor gram, Tensor products) -> (Tensor, Tensor)", {at::Tag::pt2_compliant_tag});
}

} // namespace torchcam_ops
