// CPU kernel of rectified_relu_backward: element-wise, in parallel chunks.

#include "../kernels/rectified_relu.h"
#include "../ops/rectified_relu.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <type_traits>
#include <vector>

namespace torchcam_ops {

namespace {

constexpr int64_t kGrain = 32768;

at::Tensor rectified_relu_backward_cpu(const at::Tensor& grad_output, const at::Tensor& input, c10::string_view mode) {
  const ReluRectification rule = check_rectified_relu_backward_args(grad_output, input, mode);
  const at::Tensor g = grad_output.contiguous();
  const at::Tensor x = input.contiguous();
  at::Tensor grad_input = at::empty_like(x, at::MemoryFormat::Contiguous);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "rectified_relu_backward_cpu", [&] {
    using T = kernels::opmath_t<scalar_t>;
    const scalar_t* g_data = g.const_data_ptr<scalar_t>();
    const scalar_t* x_data = x.const_data_ptr<scalar_t>();
    scalar_t* out = grad_input.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, x.numel(), kGrain, [&](int64_t begin, int64_t end) {
      // conversion buffers, needed for half precision only
      std::vector<T> workspace(std::is_same_v<scalar_t, T> ? 0 : 3 * (end - begin));
      kernels::rectified_relu_backward(g_data + begin, x_data + begin, out + begin, end - begin, rule,
                                       workspace.data());
    });
  });
  return grad_input;
}

} // namespace

TORCH_LIBRARY_IMPL(torchcam_ops, CPU, m) {
  m.impl("rectified_relu_backward", &rectified_relu_backward_cpu);
}

} // namespace torchcam_ops
