// CUDA kernels of cam_postprocess.
//
// Normalising needs each map's min and max over the resized map before anything is written, so
// the fused op is two launches: one computes the resized values of a tile and reduces them to a
// per-tile (min, max); the other reduces those for its image, recomputes the tile's values and
// writes them normalised. Recomputing 4 taps is cheaper than writing and re-reading the map.
// Without normalisation only the second launch runs.

#include "../ops/cam_postprocess.h"
#include "cuda_utils.cuh"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <limits>

namespace torchcam_ops {

namespace {

using cuda::ceil_div;
using cuda::relu_keep_nan;

constexpr int kThreads = 256;
constexpr int kItemsPerThread = 4;
constexpr int64_t kTilePixels = kThreads * kItemsPerThread;
constexpr double kNormalizeEps = 1e-7;

struct ResizeGeometry {
  int64_t in_h, in_w, out_h, out_w;
};

// Bilinear value at output (y, x), half-pixel centres, ReLU on the source samples; blends in the
// a + w1 (b - a) form of the CPU kernel (exact on constant regions).
template <typename T, typename scalar_t>
__device__ __forceinline__ T resized_value(const scalar_t* map, const ResizeGeometry& geo, T scale_h, T scale_w,
                                           int64_t y, int64_t x, bool relu) {
  T sy = scale_h * (static_cast<T>(y) + T(0.5)) - T(0.5);
  T sx = scale_w * (static_cast<T>(x) + T(0.5)) - T(0.5);
  sy = sy < T(0) ? T(0) : sy;
  sx = sx < T(0) ? T(0) : sx;
  const int64_t y0 = std::min(static_cast<int64_t>(sy), geo.in_h - 1);
  const int64_t x0 = std::min(static_cast<int64_t>(sx), geo.in_w - 1);
  const int64_t y1 = y0 < geo.in_h - 1 ? y0 + 1 : y0;
  const int64_t x1 = x0 < geo.in_w - 1 ? x0 + 1 : x0;
  const T wy1 = std::min(std::max(sy - static_cast<T>(y0), T(0)), T(1));
  const T wx1 = std::min(std::max(sx - static_cast<T>(x0), T(0)), T(1));
  const auto sample = [&](int64_t r, int64_t c) {
    const T v = static_cast<T>(map[r * geo.in_w + c]);
    return relu ? relu_keep_nan(v) : v;
  };
  const auto lerp = [](T a, T b, T w) { return a + w * (b - a); };
  const T top = lerp(sample(y0, x0), sample(y0, x1), wx1);
  const T bottom = lerp(sample(y1, x0), sample(y1, x1), wx1);
  return lerp(top, bottom, wy1);
}

template <typename scalar_t, typename T>
__global__ void __launch_bounds__(kThreads) tile_min_max_kernel(const scalar_t* __restrict__ cam,
                                                                T* __restrict__ tile_extrema, ResizeGeometry geo,
                                                                T scale_h, T scale_w, bool relu, int64_t tiles) {
  __shared__ T scratch[2 * kThreads / cuda::kWarpSize];
  const int64_t n = blockIdx.x / tiles;
  const int64_t tile = blockIdx.x % tiles;
  const int64_t out_pixels = geo.out_h * geo.out_w;
  const scalar_t* map = cam + n * geo.in_h * geo.in_w;
  T lo = std::numeric_limits<T>::infinity();
  T hi = -std::numeric_limits<T>::infinity();
  for (int item = 0; item < kItemsPerThread; ++item) {
    const int64_t i = tile * kTilePixels + item * kThreads + threadIdx.x;
    if (i < out_pixels) {
      const T u = resized_value<T>(map, geo, scale_h, scale_w, i / geo.out_w, i % geo.out_w, relu);
      lo = cuda::min_keep_nan(lo, u);
      hi = cuda::max_keep_nan(hi, u);
    }
  }
  cuda::block_min_max(lo, hi, scratch);
  if (threadIdx.x == 0) {
    tile_extrema[2 * blockIdx.x] = lo;
    tile_extrema[2 * blockIdx.x + 1] = hi;
  }
}

template <typename scalar_t, typename T>
__global__ void __launch_bounds__(kThreads) write_kernel(const scalar_t* __restrict__ cam,
                                                         const T* __restrict__ tile_extrema,
                                                         scalar_t* __restrict__ out, ResizeGeometry geo, T scale_h,
                                                         T scale_w, bool relu, bool normalize, int64_t tiles) {
  __shared__ T scratch[2 * kThreads / cuda::kWarpSize];
  const int64_t n = blockIdx.x / tiles;
  const int64_t tile = blockIdx.x % tiles;
  const int64_t out_pixels = geo.out_h * geo.out_w;
  T lo = T(0), range = T(1);
  if (normalize) {
    T image_lo = std::numeric_limits<T>::infinity();
    T image_hi = -std::numeric_limits<T>::infinity();
    for (int64_t t = threadIdx.x; t < tiles; t += kThreads) {
      image_lo = cuda::min_keep_nan(image_lo, tile_extrema[2 * (n * tiles + t)]);
      image_hi = cuda::max_keep_nan(image_hi, tile_extrema[2 * (n * tiles + t) + 1]);
    }
    cuda::block_min_max(image_lo, image_hi, scratch);
    lo = image_lo;
    range = image_hi - image_lo + T(kNormalizeEps);
  }
  const scalar_t* map = cam + n * geo.in_h * geo.in_w;
  scalar_t* dst = out + n * out_pixels;
  for (int item = 0; item < kItemsPerThread; ++item) {
    const int64_t i = tile * kTilePixels + item * kThreads + threadIdx.x;
    if (i < out_pixels) {
      const T u = resized_value<T>(map, geo, scale_h, scale_w, i / geo.out_w, i % geo.out_w, relu);
      dst[i] = static_cast<scalar_t>(normalize ? (u - lo) / range : u);
    }
  }
}

at::Tensor cam_postprocess_cuda(const at::Tensor& cam, int64_t out_h, int64_t out_w, bool relu, bool normalize) {
  check_cam_postprocess_args(cam, out_h, out_w);
  const c10::cuda::CUDAGuard guard(cam.device());
  const at::Tensor input = cam.contiguous();
  const int64_t batch = input.size(0);
  at::Tensor out = at::empty({batch, out_h, out_w}, input.options());
  if (batch == 0) {
    return out;
  }
  const ResizeGeometry geo{input.size(1), input.size(2), out_h, out_w};
  const int64_t tiles = ceil_div(out_h * out_w, kTilePixels);
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "cam_postprocess_cuda", [&] {
    using T = at::opmath_type<scalar_t>;
    const T scale_h = static_cast<T>(geo.in_h) / static_cast<T>(out_h);
    const T scale_w = static_cast<T>(geo.in_w) / static_cast<T>(out_w);
    at::Tensor tile_extrema;
    if (normalize) {
      tile_extrema = at::empty({batch, tiles, 2}, input.options().dtype(c10::CppTypeToScalarType<T>::value));
      tile_min_max_kernel<scalar_t, T><<<batch * tiles, kThreads, 0, stream>>>(
          input.const_data_ptr<scalar_t>(), tile_extrema.mutable_data_ptr<T>(), geo, scale_h, scale_w, relu, tiles);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    write_kernel<scalar_t, T><<<batch * tiles, kThreads, 0, stream>>>(
        input.const_data_ptr<scalar_t>(), normalize ? tile_extrema.const_data_ptr<T>() : nullptr,
        out.mutable_data_ptr<scalar_t>(), geo, scale_h, scale_w, relu, normalize, tiles);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

} // namespace

TORCH_LIBRARY_IMPL(torchcam_ops, CUDA, m) {
  m.impl("cam_postprocess", &cam_postprocess_cuda);
  // The backward is not a hot path: on CUDA it is the same maths composed of ATen ops.
  m.impl("cam_postprocess_backward", &cam_postprocess_backward_composite);
}

} // namespace torchcam_ops
