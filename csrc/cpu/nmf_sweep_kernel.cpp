// CPU kernel of nmf_sweep: the rows in parallel chunks, in the op math type (float for half and
// bfloat16); the violation summed over rows in order, so that it does not depend on the thread count.

#include "../kernels/nmf_sweep.h"
#include "../ops/nmf_sweep.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/scalar_tensor.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>

namespace torchcam_ops {

namespace {

constexpr int64_t kGrainFlops = 32768;

std::tuple<at::Tensor, at::Tensor> nmf_sweep_cpu(const at::Tensor& factor, const at::Tensor& gram,
                                                 const at::Tensor& products) {
  check_nmf_sweep_args(factor, gram, products);
  const NmfSweepOperands operands = nmf_sweep_operands(factor, gram, products);
  const at::Tensor& updated = operands.factor;
  const at::Tensor& gram_c = operands.gram;
  const at::Tensor& products_c = operands.products;
  const int64_t rows = updated.size(0);
  const int64_t components = updated.size(1);
  double violation = 0;
  AT_DISPATCH_FLOATING_TYPES(updated.scalar_type(), "nmf_sweep_cpu", [&] {
    scalar_t* factor_data = updated.mutable_data_ptr<scalar_t>();
    const scalar_t* gram_data = gram_c.const_data_ptr<scalar_t>();
    const scalar_t* products_data = products_c.const_data_ptr<scalar_t>();
    at::Tensor row_violations = at::empty({rows}, updated.options());
    scalar_t* row_violation = row_violations.mutable_data_ptr<scalar_t>();
    const int64_t grain = std::max<int64_t>(1, kGrainFlops / std::max<int64_t>(1, components * components));
    at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        row_violation[i] =
            kernels::nmf_sweep_row(factor_data + i * components, gram_data, products_data + i * components, components);
      }
    });
    scalar_t total = scalar_t(0);
    for (int64_t i = 0; i < rows; ++i) {
      total += row_violation[i];
    }
    violation = static_cast<double>(total);
  });
  return {updated.to(factor.scalar_type()), at::scalar_tensor(violation, updated.options())};
}

} // namespace

TORCH_LIBRARY_IMPL(torchcam_ops, CPU, m) {
  m.impl("nmf_sweep", &nmf_sweep_cpu);
}

} // namespace torchcam_ops
