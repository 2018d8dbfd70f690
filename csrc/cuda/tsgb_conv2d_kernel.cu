// CUDA kernel of tsgb_conv2d_backward (the rule in kernels/tsgb_conv2d.h), over [N, groups, ...]
// planes: A = sum |X| per group; R = sum G Z per group and, in the same launch, V = R / (S + eps)
// per output position (window sums as direct loops over the kernel); U per input position; grad_X.
// The channel sums split the channels of a few pixels over a whole block (deep layers have many
// channels and few pixels), summed in a fixed order. A 1x1 convolution with stride 1 and no padding
// has U = V: no collect launch.

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

// Block-wide sums over channels: a block owns kPixels pixels of one plane and splits the channels
// into kThreads / kPixels slices; epilogue(plane, pixel, total) runs once per pixel.
template <int kPixels, typename T, typename Term, typename Epilogue>
__global__ void __launch_bounds__(kThreads)
    channel_sum_kernel(int64_t channels, int64_t pixels, int64_t tiles, Term term, Epilogue epilogue) {
  constexpr int kSlices = kThreads / kPixels;
  __shared__ T slice_sums[kThreads];
  const int64_t plane = blockIdx.x / tiles;
  const int64_t pixel = (blockIdx.x % tiles) * kPixels + threadIdx.x % kPixels;
  const int slice = threadIdx.x / kPixels;
  T acc[2] = {T(0), T(0)};
  if (pixel < pixels) {
    int64_t c = slice;
    for (; c + kSlices < channels; c += 2 * kSlices) {
      acc[0] += term(plane, c, pixel);
      acc[1] += term(plane, c + kSlices, pixel);
    }
    if (c < channels) {
      acc[0] += term(plane, c, pixel);
    }
  }
  slice_sums[threadIdx.x] = acc[0] + acc[1];
  __syncthreads();
  if (slice == 0 && pixel < pixels) {
    T total = T(0);
    for (int s = 0; s < kSlices; ++s) {
      total += slice_sums[s * kPixels + threadIdx.x];
    }
    epilogue(plane, pixel, total);
  }
}

template <typename T, typename Term, typename Epilogue>
void launch_channel_sum(int64_t planes, int64_t channels, int64_t pixels, Term term, Epilogue epilogue,
                        cudaStream_t stream) {
  // wide tiles where rows are long (coalesced loads), narrow ones for deep 7x7 and 14x14 layers
  if (pixels >= 256) {
    const int64_t tiles = ceil_div(pixels, 32);
    channel_sum_kernel<32, T><<<planes * tiles, kThreads, 0, stream>>>(channels, pixels, tiles, term, epilogue);
  } else {
    const int64_t tiles = ceil_div(pixels, 8);
    channel_sum_kernel<8, T><<<planes * tiles, kThreads, 0, stream>>>(channels, pixels, tiles, term, epilogue);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// |X| of input channel c (the group's c-th) at pixel i of a plane.
template <typename scalar_t, typename T>
struct AbsInput {
  const scalar_t* input;
  int64_t channels, pixels;
  __device__ T operator()(int64_t plane, int64_t c, int64_t i) const {
    const T v = static_cast<T>(input[(plane * channels + c) * pixels + i]);
    return v < T(0) ? -v : v;
  }
};

// G Z of output channel c at output position o.
template <typename scalar_t, typename T>
struct Relevance {
  const scalar_t* grad_output;
  const scalar_t* output;
  int64_t channels, pixels;
  __device__ T operator()(int64_t plane, int64_t c, int64_t o) const {
    const int64_t at = (plane * channels + c) * pixels + o;
    return static_cast<T>(grad_output[at]) * static_cast<T>(output[at]);
  }
};

template <typename T>
struct StoreActivation {
  T* activation;
  int64_t pixels;
  __device__ void operator()(int64_t plane, int64_t i, T total) const {
    activation[plane * pixels + i] = total;
  }
};

// V = R / (S + eps), S the window sum of A over output position o's receptive field.
template <typename T>
struct StoreRatio {
  const T* activation;
  T* ratio;
  Conv2dGeometry geo;
  __device__ void operator()(int64_t plane, int64_t o, T relevance) const {
    const int64_t oy = o / geo.out_w, ox = o % geo.out_w;
    const T* a = activation + plane * geo.in_h * geo.in_w;
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
    ratio[plane * geo.out_h * geo.out_w + o] = kernels::tsgb_detail::relevance_ratio(relevance, window);
  }
};

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
    launch_channel_sum<T>(planes, in_channels, in_pixels,
                          AbsInput<scalar_t, T>{x.const_data_ptr<scalar_t>(), in_channels, in_pixels},
                          StoreActivation<T>{activation.mutable_data_ptr<T>(), in_pixels}, stream);
    launch_channel_sum<T>(
        planes, out_channels, out_pixels,
        Relevance<scalar_t, T>{g.const_data_ptr<scalar_t>(), z.const_data_ptr<scalar_t>(), out_channels, out_pixels},
        StoreRatio<T>{activation.const_data_ptr<T>(), ratio.mutable_data_ptr<T>(), geo}, stream);
    // a 1x1 window without stride or padding: each input position collects its own V
    const bool pointwise = geo.kernel_h == 1 && geo.kernel_w == 1 && geo.stride_h == 1 && geo.stride_w == 1 &&
                           geo.pad_h == 0 && geo.pad_w == 0;
    at::Tensor collected = ratio;
    if (!pointwise) {
      collected = at::empty({planes, in_pixels}, options);
      collect_kernel<T><<<blocks_for(planes * in_pixels), kThreads, 0, stream>>>(
          ratio.const_data_ptr<T>(), collected.mutable_data_ptr<T>(), planes, geo);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
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
