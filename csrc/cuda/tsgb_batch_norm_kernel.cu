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

// Per-channel parameters as opmath values; weight and bias may be absent (nullptr).
template <typename T>
struct BatchNormParameters {
  const T* running_mean;
  const T* running_var;
  const T* weight;
  const T* bias;
  T eps;
};

// The channel's affine map is recomputed per element (a few flops on cached values) instead of in
// a handful of ATen launches per layer: on the GPU those launches cost more host time than the
// kernel takes. Same formula as batch_norm_affine: scale = w / sqrt(var + eps), shift = b - mean scale.
template <typename scalar_t, typename T>
__global__ void tsgb_batch_norm_backward_kernel(const scalar_t* __restrict__ grad_output,
                                                const scalar_t* __restrict__ input, BatchNormParameters<T> params,
                                                scalar_t* __restrict__ grad_input, int64_t n, int64_t channels,
                                                int64_t plane) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t c = (i / plane) % channels;
    T scale = T(1) / sqrt(params.running_var[c] + params.eps);
    if (params.weight != nullptr) {
      scale = scale * params.weight[c];
    }
    T shift = -params.running_mean[c] * scale;
    if (params.bias != nullptr) {
      shift = shift + params.bias[c];
    }
    const T x = static_cast<T>(input[i]);
    const T g = static_cast<T>(grad_output[i]);
    grad_input[i] = static_cast<scalar_t>(x != T(0) ? g * (scale * x + shift) / x : T(0));
  }
}

at::Tensor tsgb_batch_norm_backward_cuda(const at::Tensor& grad_output, const at::Tensor& input,
                                         const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias,
                                         const at::Tensor& running_mean, const at::Tensor& running_var, double eps) {
  check_tsgb_batch_norm_backward_args(grad_output, input, weight, bias, running_mean, running_var);
  const c10::cuda::CUDAGuard guard(input.device());
  const at::Tensor x = input.contiguous();
  const at::Tensor g = grad_output.contiguous();
  at::Tensor grad_input = at::empty_like(x, at::MemoryFormat::Contiguous);
  const int64_t n = x.numel();
  if (n == 0) {
    return grad_input;
  }
  const int64_t channels = x.size(1);
  const int64_t plane = n / (x.size(0) * channels);
  const int64_t blocks = cuda::grid_stride_blocks(n, kThreads);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "tsgb_batch_norm_backward_cuda", [&] {
    using T = at::opmath_type<scalar_t>;
    // no copies where the parameters are already opmath and contiguous (the usual case)
    const auto as_opmath = [](const at::Tensor& t) { return t.to(c10::CppTypeToScalarType<T>::value).contiguous(); };
    const at::Tensor mean = as_opmath(running_mean), var = as_opmath(running_var);
    const std::optional<at::Tensor> w =
        weight.has_value() && weight->defined() ? std::optional<at::Tensor>(as_opmath(*weight)) : std::nullopt;
    const std::optional<at::Tensor> b =
        bias.has_value() && bias->defined() ? std::optional<at::Tensor>(as_opmath(*bias)) : std::nullopt;
    const BatchNormParameters<T> params{mean.const_data_ptr<T>(), var.const_data_ptr<T>(),
                                        w ? w->const_data_ptr<T>() : nullptr, b ? b->const_data_ptr<T>() : nullptr,
                                        static_cast<T>(eps)};
    tsgb_batch_norm_backward_kernel<scalar_t, T><<<blocks, kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        g.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(), params, grad_input.mutable_data_ptr<scalar_t>(), n,
        channels, plane);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return grad_input;
}

} // namespace

TORCH_LIBRARY_IMPL(torchcam_ops, CUDA, m) {
  m.impl("tsgb_batch_norm_backward", &tsgb_batch_norm_backward_cuda);
}

} // namespace torchcam_ops
