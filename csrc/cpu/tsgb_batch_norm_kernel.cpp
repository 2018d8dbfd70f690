// CPU kernel of tsgb_batch_norm_backward: parallel over (image, channel) planes.

#include "../kernels/tsgb_batch_norm.h"
#include "../ops/tsgb.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <type_traits>
#include <vector>

namespace torchcam_ops {

namespace {

at::Tensor tsgb_batch_norm_backward_cpu(const at::Tensor& grad_output, const at::Tensor& input,
                                        const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias,
                                        const at::Tensor& running_mean, const at::Tensor& running_var, double eps) {
  check_tsgb_batch_norm_backward_args(grad_output, input, weight, bias, running_mean, running_var);
  const at::Tensor x = input.contiguous();
  const at::Tensor g = grad_output.contiguous();
  at::Tensor grad_input = at::empty_like(x, at::MemoryFormat::Contiguous);
  const auto [scale, shift] = batch_norm_affine(x, weight, bias, running_mean, running_var, eps);
  const int64_t channels = x.size(1);
  const int64_t plane = x.numel() / std::max<int64_t>(1, x.size(0) * channels);
  const int64_t planes = x.size(0) * channels;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "tsgb_batch_norm_backward_cpu", [&] {
    using T = kernels::opmath_t<scalar_t>;
    const scalar_t* g_data = g.const_data_ptr<scalar_t>();
    const scalar_t* x_data = x.const_data_ptr<scalar_t>();
    scalar_t* out = grad_input.mutable_data_ptr<scalar_t>();
    const T* scale_data = scale.const_data_ptr<T>();
    const T* shift_data = shift.const_data_ptr<T>();
    at::parallel_for(0, planes, 1, [&](int64_t begin, int64_t end) {
      std::vector<T> workspace(std::is_same_v<scalar_t, T> ? 0 : 3 * plane); // half precision only
      for (int64_t p = begin; p < end; ++p) {
        const int64_t c = p % channels;
        kernels::tsgb_batch_norm_backward_plane(g_data + p * plane, x_data + p * plane, out + p * plane, plane,
                                                scale_data[c], shift_data[c], workspace.data());
      }
    });
  });
  add_stranded_shift_relevance(grad_input, g, x, shift);
  return grad_input;
}

} // namespace

TORCH_LIBRARY_IMPL(torchcam_ops, CPU, m) {
  m.impl("tsgb_batch_norm_backward", &tsgb_batch_norm_backward_cpu);
}

} // namespace torchcam_ops
