// CUDA kernel of tsgb_conv2d_backward (the rule in kernels/tsgb_conv2d.h), in four element-wise
// launches over [N, groups, ...] planes: A = sum |X| per group, V = R / (S + eps) per output
// position (window sums as direct loops over the kernel), U per input position, grad_X.

#include "../ops/tsgb.h"
#include "cuda_utils.cuh"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

namespace torchcam_ops {

namespace {

using cuda::ceil_div;
using kernels::Conv2dGeometry;

constexpr int kThreads = 256;

#define TSGB_GRID_STRIDE_LOOP(index, count)                                                          \
  for (int64_t index = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; index < (count); \
       index += static_cast<int64_t>(gridDim.x) * blockDim.x)

template <typename scalar_t, typename T>
__global__ void activation_sum_kernel(const scalar_t* __restrict__ input, T* __restrict__ activation,
                                      int64_t planes /* N * groups */, int64_t in_channels, int64_t pixels) {
  TSGB_GRID_STRIDE_LOOP(index, planes * pixels) {
    const int64_t plane = index / pixels, i = index % pixels;
    const scalar_t* x = input + plane * in_channels * pixels + i;
    T sum = T(0);
    for (int64_t c = 0; c < in_channels; ++c) {
      const T v = static_cast<T>(x[c * pixels]);
      sum += v < T(0) ? -v : v;
    }
    activation[index] = sum;
  }
}

template <typename scalar_t, typename T>
__global__ void ratio_kernel(const scalar_t* __restrict__ output, const scalar_t* __restrict__ grad_output,
                             const T* __restrict__ activation, T* __restrict__ ratio, int64_t planes,
                             int64_t out_channels, Conv2dGeometry geo) {
  const int64_t out_pixels = geo.out_h * geo.out_w, in_pixels = geo.in_h * geo.in_w;
  TSGB_GRID_STRIDE_LOOP(index, planes * out_pixels) {
    const int64_t plane = index / out_pixels, o = index % out_pixels;
    const int64_t oy = o / geo.out_w, ox = o % geo.out_w;
    const scalar_t* z = output + plane * out_channels * out_pixels + o;
    const scalar_t* g = grad_output + plane * out_channels * out_pixels + o;
    T relevance = T(0);
    for (int64_t c = 0; c < out_channels; ++c) {
      relevance += static_cast<T>(g[c * out_pixels]) * static_cast<T>(z[c * out_pixels]);
    }
    const T* a = activation + plane * in_pixels;
    T window = T(0);
    for (int64_t ky = 0; ky < geo.kernel_h; ++ky) {
      const int64_t iy = oy * geo.stride_h - geo.pad_h + ky * geo.dilation_h;
      if (iy < 0 || iy >= geo.in_h) {
        continue;
      }
      for (int64_t kx = 0; kx < geo.kernel_w; ++kx) {
        const int64_t ix = ox * geo.stride_w - geo.pad_w + kx * geo.dilation_w;
        if (ix >= 0 && ix < geo.in_w) {
          window += a[iy * geo.in_w + ix];
        }
      }
    }
    // as on the CPU: a window with S == 0 covers only inputs whose gradient is 0 anyway
    ratio[index] = kernels::tsgb_detail::relevance_ratio(relevance, window);
  }
}

template <typename T>
__global__ void collect_kernel(const T* __restrict__ ratio, T* __restrict__ collected, int64_t planes,
                               Conv2dGeometry geo) {
  const int64_t out_pixels = geo.out_h * geo.out_w, in_pixels = geo.in_h * geo.in_w;
  TSGB_GRID_STRIDE_LOOP(index, planes * in_pixels) {
    const int64_t plane = index / in_pixels, i = index % in_pixels;
    const int64_t iy = i / geo.in_w, ix = i % geo.in_w;
    const T* v = ratio + plane * out_pixels;
    T sum = T(0);
    for (int64_t ky = 0; ky < geo.kernel_h; ++ky) {
      const int64_t ty = iy + geo.pad_h - ky * geo.dilation_h; // = oy * stride
      if (ty < 0 || ty % geo.stride_h != 0 || ty / geo.stride_h >= geo.out_h) {
        continue;
      }
      for (int64_t kx = 0; kx < geo.kernel_w; ++kx) {
        const int64_t tx = ix + geo.pad_w - kx * geo.dilation_w;
        if (tx >= 0 && tx % geo.stride_w == 0 && tx / geo.stride_w < geo.out_w) {
          sum += v[(ty / geo.stride_h) * geo.out_w + tx / geo.stride_w];
        }
      }
    }
    collected[index] = sum;
  }
}

template <typename scalar_t, typename T>
__global__ void grad_input_kernel(const scalar_t* __restrict__ input, const T* __restrict__ collected,
                                  scalar_t* __restrict__ grad_input, int64_t total, int64_t in_channels,
                                  int64_t pixels) {
  TSGB_GRID_STRIDE_LOOP(index, total) {
    const int64_t i = index % pixels;
    const int64_t plane = index / pixels / in_channels; // image * groups + group
    const T x = static_cast<T>(input[index]);
    grad_input[index] = static_cast<scalar_t>(kernels::tsgb_detail::sign_of(x) * collected[plane * pixels + i]);
  }
}

int64_t blocks_for(int64_t count) {
  return cuda::grid_stride_blocks(count, kThreads);
}

at::Tensor tsgb_conv2d_backward_cuda(const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& output,
                                     at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef padding,
                                     at::IntArrayRef dilation, int64_t groups) {
  const Conv2dGeometry geo =
      check_tsgb_conv2d_backward_args(grad_output, input, output, kernel_size, stride, padding, dilation, groups);
  const c10::cuda::CUDAGuard guard(input.device());
  const at::Tensor x = input.contiguous();
  const at::Tensor z = output.contiguous();
  const at::Tensor g = grad_output.contiguous();
  at::Tensor grad_input = at::empty_like(x, at::MemoryFormat::Contiguous);
  if (x.numel() == 0) {
    return grad_input;
  }
  const int64_t planes = x.size(0) * groups;
  const int64_t in_channels = x.size(1) / groups, out_channels = z.size(1) / groups;
  const int64_t in_pixels = geo.in_h * geo.in_w, out_pixels = geo.out_h * geo.out_w;
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "tsgb_conv2d_backward_cuda", [&] {
    using T = at::opmath_type<scalar_t>;
    const auto options = x.options().dtype(c10::CppTypeToScalarType<T>::value);
    at::Tensor activation = at::empty({planes, in_pixels}, options);
    at::Tensor ratio = at::empty({planes, out_pixels}, options);
    at::Tensor collected = at::empty({planes, in_pixels}, options);
    activation_sum_kernel<scalar_t, T><<<blocks_for(planes * in_pixels), kThreads, 0, stream>>>(
        x.const_data_ptr<scalar_t>(), activation.mutable_data_ptr<T>(), planes, in_channels, in_pixels);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    ratio_kernel<scalar_t, T><<<blocks_for(planes * out_pixels), kThreads, 0, stream>>>(
        z.const_data_ptr<scalar_t>(), g.const_data_ptr<scalar_t>(), activation.const_data_ptr<T>(),
        ratio.mutable_data_ptr<T>(), planes, out_channels, geo);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    collect_kernel<T><<<blocks_for(planes * in_pixels), kThreads, 0, stream>>>(
        ratio.const_data_ptr<T>(), collected.mutable_data_ptr<T>(), planes, geo);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    grad_input_kernel<scalar_t, T><<<blocks_for(x.numel()), kThreads, 0, stream>>>(
        x.const_data_ptr<scalar_t>(), collected.const_data_ptr<T>(), grad_input.mutable_data_ptr<scalar_t>(), x.numel(),
        in_channels, in_pixels);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return grad_input;
}

} // namespace

TORCH_LIBRARY_IMPL(torchcam_ops, CUDA, m) {
  m.impl("tsgb_conv2d_backward", &tsgb_conv2d_backward_cuda);
}

} // namespace torchcam_ops
