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

#include <cstdint>
#include <limits>
#include <type_traits>

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

// Values per thread and per load: kWidth consecutive values of one channel plane.
template <typename scalar_t, int kWidth>
struct alignas(sizeof(scalar_t) * kWidth) Pack {
  scalar_t values[kWidth];
};

// The channel's affine map is recomputed per pack (a few flops on cached values) instead of in a
// handful of ATen launches per layer: on the GPU those launches cost more host time than the kernel
// takes. Same formula as batch_norm_affine: scale = w / sqrt(var + eps), shift = b - mean scale.
// Indices are 32-bit where the tensor allows (64-bit division is a long instruction sequence, and
// this kernel would otherwise spend more time on it than on memory).
template <int kWidth, typename index_t, typename scalar_t, typename T>
__global__ void __launch_bounds__(kThreads)
    tsgb_batch_norm_backward_kernel(const scalar_t* __restrict__ grad_output, const scalar_t* __restrict__ input,
                                    BatchNormParameters<T> params, scalar_t* __restrict__ grad_input, index_t packs,
                                    index_t channels, index_t plane_packs) {
  using Packed = Pack<scalar_t, kWidth>;
  const auto* g_packs = reinterpret_cast<const Packed*>(grad_output);
  const auto* x_packs = reinterpret_cast<const Packed*>(input);
  auto* out_packs = reinterpret_cast<Packed*>(grad_input);
  for (index_t q = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x; q < packs;
       q += static_cast<index_t>(gridDim.x) * blockDim.x) {
    const index_t c = (q / plane_packs) % channels;
    T scale = T(1) / sqrt(params.running_var[c] + params.eps);
    if (params.weight != nullptr) {
      scale = scale * params.weight[c];
    }
    T shift = -params.running_mean[c] * scale;
    if (params.bias != nullptr) {
      shift = shift + params.bias[c];
    }
    const Packed xv = x_packs[q], gv = g_packs[q];
    Packed result;
#pragma unroll
    for (int v = 0; v < kWidth; ++v) {
      const T x = static_cast<T>(xv.values[v]);
      const T g = static_cast<T>(gv.values[v]);
      // as on the CPU, 0 * G * Y where X == 0: NaN when G or Y is not finite
      const T y = scale * x + shift;
      result.values[v] = static_cast<scalar_t>(x != T(0) ? g * y / x : T(0) * g * y);
    }
    out_packs[q] = result;
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
    const auto launch = [&](auto width, auto index) {
      constexpr int kWidth = decltype(width)::value;
      using index_t = decltype(index);
      const int64_t packs = n / kWidth;
      tsgb_batch_norm_backward_kernel<kWidth, index_t, scalar_t, T>
          <<<cuda::grid_stride_blocks(packs, kThreads), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
              g.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(), params,
              grad_input.mutable_data_ptr<scalar_t>(), static_cast<index_t>(packs), static_cast<index_t>(channels),
              static_cast<index_t>(plane / kWidth));
    };
    constexpr int kWidth = 16 / sizeof(scalar_t) >= 4 ? 4 : 2;
    const auto aligned = [](const at::Tensor& t) {
      return reinterpret_cast<uintptr_t>(t.const_data_ptr()) % (kWidth * sizeof(scalar_t)) == 0;
    };
    const bool wide = plane % kWidth == 0 && aligned(x) && aligned(g) && aligned(grad_input);
    const bool narrow_index = n <= std::numeric_limits<int32_t>::max() / 2; // the grid stride cannot overflow
    if (wide && narrow_index) {
      launch(std::integral_constant<int, kWidth>{}, int32_t{});
    } else if (narrow_index) {
      launch(std::integral_constant<int, 1>{}, int32_t{});
    } else {
      launch(std::integral_constant<int, 1>{}, int64_t{});
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  const auto [scale, shift] = batch_norm_affine(x, weight, bias, running_mean, running_var, eps);
  add_stranded_shift_relevance(grad_input, g, x, shift);
  return grad_input;
}

} // namespace

TORCH_LIBRARY_IMPL(torchcam_ops, CUDA, m) {
  m.impl("tsgb_batch_norm_backward", &tsgb_batch_norm_backward_cuda);
}

} // namespace torchcam_ops
