// CUDA kernel of rectified_relu_backward (element-wise).

#include "../ops/rectified_relu.h"
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
__global__ void rectified_relu_backward_kernel(const scalar_t* __restrict__ grad_output,
                                               const scalar_t* __restrict__ input, scalar_t* __restrict__ grad_input,
                                               int64_t n, ReluRectification rule) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const T g = static_cast<T>(grad_output[i]);
    const T x = static_cast<T>(input[i]);
    T out;
    switch (rule) {
      case ReluRectification::Guided:
        out = g * T(x > T(0)) * T(g > T(0));
        break;
      case ReluRectification::Deconvnet:
        out = cuda::relu_keep_nan(g);
        break;
      default: // torch's ReLU gradient: 0 where X <= 0, G elsewhere (also where X is NaN)
        out = x <= T(0) ? T(0) : g;
        break;
    }
    grad_input[i] = static_cast<scalar_t>(out);
  }
}

at::Tensor rectified_relu_backward_cuda(const at::Tensor& grad_output, const at::Tensor& input, c10::string_view mode) {
  const ReluRectification rule = check_rectified_relu_backward_args(grad_output, input, mode);
  const c10::cuda::CUDAGuard guard(input.device());
  const at::Tensor g = grad_output.contiguous();
  const at::Tensor x = input.contiguous();
  at::Tensor grad_input = at::empty_like(x, at::MemoryFormat::Contiguous);
  const int64_t n = x.numel();
  if (n == 0) {
    return grad_input;
  }
  const int64_t blocks = cuda::grid_stride_blocks(n, kThreads);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "rectified_relu_backward_cuda", [&] {
    using T = at::opmath_type<scalar_t>;
    rectified_relu_backward_kernel<scalar_t, T><<<blocks, kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        g.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(), grad_input.mutable_data_ptr<scalar_t>(), n, rule);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return grad_input;
}

} // namespace

TORCH_LIBRARY_IMPL(torchcam_ops, CUDA, m) {
  m.impl("rectified_relu_backward", &rectified_relu_backward_cuda);
}

} // namespace torchcam_ops
