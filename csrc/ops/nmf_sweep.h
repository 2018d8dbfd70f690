#pragma once

#include "../kernels/nmf_sweep.h"

#include <ATen/core/Tensor.h>

namespace torchcam_ops {

// Checks the arguments of nmf_sweep (shapes, dtypes, devices); the kernels call it first.
void check_nmf_sweep_args(const at::Tensor& factor, const at::Tensor& gram, const at::Tensor& products);

// The checked arguments in the op math type (float for half and bfloat16), contiguous; `factor` is a
// copy, which the kernels update in place.
struct NmfSweepOperands {
  at::Tensor factor;
  at::Tensor gram;
  at::Tensor products;
};

NmfSweepOperands nmf_sweep_operands(const at::Tensor& factor, const at::Tensor& gram, const at::Tensor& products);

} // namespace torchcam_ops
