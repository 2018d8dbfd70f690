// CPU kernel of tsgb_pass_through_backward: one fused pass, parallel over chunks of the flattened
// tensors (the other devices use the ATen formula in ops/tsgb.cpp).

#include "../kernels/tsgb_pass_through.h"
#include "../ops/tsgb.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <algorithm>
#include <type_traits>
#include <vector>

namespace torchcam_ops {

namespace {

constexpr int64_t kChunk = 16384; // values per task: large enough to amortise, small enough for cache

at::Tensor tsgb_pass_through_backward_cpu(const at::Tensor& grad_output, const at::Tensor& input,
                                          const at::Tensor& output) {
  check_tsgb_pass_through_backward_args(grad_output, input, output);
  const at::Tensor g = grad_output.contiguous();
  const at::Tensor x = input.contiguous();
  const at::Tensor y = output.contiguous();
  at::Tensor grad_input = at::empty_like(x, at::MemoryFormat::Contiguous);
  const int64_t n = x.numel();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "tsgb_pass_through_backward_cpu", [&] {
    using T = kernels::opmath_t<scalar_t>;
    const scalar_t* g_data = g.const_data_ptr<scalar_t>();
    const scalar_t* x_data = x.const_data_ptr<scalar_t>();
    const scalar_t* y_data = y.const_data_ptr<scalar_t>();
    scalar_t* out = grad_input.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, (n + kChunk - 1) / kChunk, 1, [&](int64_t begin, int64_t end) {
      std::vector<T> workspace(std::is_same_v<scalar_t, T> ? 0 : 4 * kChunk); // half precision only
      for (int64_t chunk = begin; chunk < end; ++chunk) {
        const int64_t start = chunk * kChunk, count = std::min(kChunk, n - start);
        kernels::tsgb_pass_through_backward_span(g_data + start, x_data + start, y_data + start, out + start, count,
                                                 workspace.data());
      }
    });
  });
  return grad_input;
}

} // namespace

TORCH_LIBRARY_IMPL(torchcam_ops, CPU, m) {
  m.impl("tsgb_pass_through_backward", &tsgb_pass_through_backward_cpu);
}

} // namespace torchcam_ops
