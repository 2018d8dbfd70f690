// CUDA kernel of tsgb_batch_norm_backward (element-wise; Y recomputed from the channel's affine map).

#include "../ops/tsgb.h"
#include "cuda_utils.cuh"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

namespace torchcam_ops {

namespace {

constexpr int kThreads = 256;

template <typename scalar_t, typename T>
__global__ void tsgb_batch_norm_backward_kernel(const scalar_t* __restrict__ grad_output,
                                                const scalar_t* __restrict__ input, const T* __restrict__ scale,
                                                const T* __restrict__ shift, scalar_t* __restrict__ grad_input,
                                                int64_t n, int64_t channels, int64_t plane) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t c = (i / plane) % channels;
    const T x = static_cast<T>(input[i]);
    const T g = static_cast<T>(grad_output[i]);
    grad_input[i] = static_cast<scalar_t>(x != T(0) ? g * (scale[c] * x + shift[c]) / x : T(0));
  }
}

at::Tensor tsgb_batch_norm_backward_cuda(const at::Tensor& grad_output, const at::Tensor& input,
                                         const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias,
                                         const at::Tensor& running_mean, const at::Tensor& running_var, double eps) {
  check_tsgb_batch_norm_backward_args(grad_output, input, running_mean, running_var);
  const c10::cuda::CUDAGuard guard(input.device());
  const at::Tensor x = input.contiguous();
  const at::Tensor g = grad_output.contiguous();
  at::Tensor grad_input = at::empty_like(x, at::MemoryFormat::Contiguous);
  const int64_t n = x.numel();
  if (n == 0) {
    return grad_input;
  }
  const auto [scale, shift] = batch_norm_affine(x, weight, bias, running_mean, running_var, eps);
  const int64_t channels = x.size(1);
  const int64_t plane = n / (x.size(0) * channels);
  const int64_t blocks = cuda::grid_stride_blocks(n, kThreads);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "tsgb_batch_norm_backward_cuda", [&] {
    using T = at::opmath_type<scalar_t>;
    tsgb_batch_norm_backward_kernel<scalar_t, T><<<blocks, kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        g.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(), scale.const_data_ptr<T>(),
        shift.const_data_ptr<T>(), grad_input.mutable_data_ptr<scalar_t>(), n, channels, plane);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return grad_input;
}

} // namespace

TORCH_LIBRARY_IMPL(torchcam_ops, CUDA, m) {
  m.impl("tsgb_batch_norm_backward", &tsgb_batch_norm_backward_cuda);
}

} // namespace torchcam_ops
