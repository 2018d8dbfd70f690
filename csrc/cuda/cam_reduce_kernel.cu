// CUDA kernels of cam_reduce and cam_reduce_backward (channels-first layout).
//
// Forward: a block owns one image and a chunk of its channels. Warps compute the channel
// weights (one channel per warp, lanes striding over pixels), then the block's threads sum the
// weighted channels pixel by pixel into a float partial map; a second small kernel adds the
// chunks' partial maps in a fixed order. No atomics, so results are reproducible.
// Backward: one warp per (image, channel).

#include "../kernels/cam_formulas.h"
#include "../kernels/cam_method.h"
#include "../ops/cam_reduce.h"
#include "cuda_utils.cuh"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>
#include <type_traits>

namespace torchcam_ops {

namespace {

using cuda::ceil_div;
using cuda::kWarpSize;
using cuda::warp_all_sum;
using kernels::elementwise_grad_activation;
using kernels::elementwise_grad_gradient;
using kernels::elementwise_term;
using kernels::gradcam_pp_grad_gradient;
using kernels::gradcam_pp_term;
using kernels::gradcam_pp_term_dsum;
using kernels::xgradcam_grad_activation;
using kernels::xgradcam_grad_gradient;

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / kWarpSize;
constexpr int64_t kMaxChunkChannels = 4096; // bounds the shared memory of one block

// Sum over one channel row of f(a[p], g[p]), by a whole warp; the total in every lane. Each lane
// keeps four accumulators so that four loads are in flight at once (rows of 56x56 maps and more
// are read from global memory this way); they are combined in a fixed order.
template <typename T, typename scalar_t, typename F>
__device__ __forceinline__ T warp_row_sum(const scalar_t* a, const scalar_t* g, int64_t pixels, F f) {
  T acc[4] = {T(0), T(0), T(0), T(0)};
  int64_t p = threadIdx.x % kWarpSize;
  for (; p + 3 * kWarpSize < pixels; p += 4 * kWarpSize) {
#pragma unroll
    for (int u = 0; u < 4; ++u) {
      acc[u] += f(static_cast<T>(a[p + u * kWarpSize]), static_cast<T>(g[p + u * kWarpSize]));
    }
  }
  for (; p < pixels; p += kWarpSize) {
    acc[0] += f(static_cast<T>(a[p]), static_cast<T>(g[p]));
  }
  return warp_all_sum((acc[0] + acc[1]) + (acc[2] + acc[3]));
}

// Sum over one channel row by one thread, in pixel order: for rows in shared memory short enough
// that a thread per channel beats a warp per channel and its shuffles.
template <typename T, typename scalar_t, typename F>
__device__ __forceinline__ T serial_row_sum(const scalar_t* a, const scalar_t* g, int64_t pixels, F f) {
  T acc = T(0);
  for (int64_t p = 0; p < pixels; ++p) {
    acc += f(static_cast<T>(a[p]), static_cast<T>(g[p]));
  }
  return acc;
}

struct WarpRowSum {
  template <typename T, typename scalar_t, typename F>
  __device__ T sum(const scalar_t* a, const scalar_t* g, int64_t pixels, F f) const {
    return warp_row_sum<T>(a, g, pixels, f);
  }
};

struct SerialRowSum {
  template <typename T, typename scalar_t, typename F>
  __device__ T sum(const scalar_t* a, const scalar_t* g, int64_t pixels, F f) const {
    return serial_row_sum<T>(a, g, pixels, f);
  }
};

// The channel weight of one row (weighted methods), its sums taken by `rows`.
template <typename T, typename RowSum, typename scalar_t>
__device__ __forceinline__ T channel_weight(CamMethod method, const scalar_t* a, const scalar_t* g, int64_t pixels,
                                            RowSum rows) {
  switch (method) {
    case CamMethod::GradCAM:
      return rows.template sum<T>(a, g, pixels, [](T, T gv) { return gv; }) / static_cast<T>(pixels);
    case CamMethod::AbsCAM:
      return rows.template sum<T>(a, g, pixels, [](T, T gv) { return gv < T(0) ? -gv : gv; }) / static_cast<T>(pixels);
    case CamMethod::XGradCAM: {
      const T weighted = rows.template sum<T>(a, g, pixels, [](T av, T gv) { return av * gv; });
      const T activation_sum = rows.template sum<T>(a, g, pixels, [](T av, T) { return av; });
      return weighted / (activation_sum + T(kXGradCAMEps));
    }
    default: { // GradCAMPlusPlus
      const T activation_sum = rows.template sum<T>(a, g, pixels, [](T av, T) { return av; });
      return rows.template sum<T>(a, g, pixels, [=](T, T gv) { return gradcam_pp_term(gv, activation_sum); });
    }
  }
}

template <typename T, typename scalar_t>
__device__ __forceinline__ T warp_channel_weight(CamMethod method, const scalar_t* a, const scalar_t* g,
                                                 int64_t pixels) {
  return channel_weight<T>(method, a, g, pixels, WarpRowSum{});
}

// Copies `count` consecutive values of two tensors from global to shared memory (as opmath values)
// with 16-byte loads, kUnroll of each in flight per thread before any is stored: a chunk of a small
// map is only a few kilobytes, so bandwidth comes from many independent loads, not long rows.
template <typename scalar_t>
struct StagedSource {
  static constexpr int kVec = 16 / sizeof(scalar_t);
  struct alignas(16) Pack {
    scalar_t values[kVec];
  };

  __device__ StagedSource(const scalar_t* source, int count) : src(source) {
    const auto misalignment = static_cast<int>((reinterpret_cast<uintptr_t>(src) % 16) / sizeof(scalar_t));
    head = min(count, misalignment == 0 ? 0 : kVec - misalignment);
    packs = (count - head) / kVec;
    rest = head + (count - head) % kVec; // the unaligned head and the tail shorter than a pack
    packed = reinterpret_cast<const Pack*>(src + head);
  }

  const scalar_t* src;
  const Pack* packed;
  int head, packs, rest;
};

template <typename scalar_t, typename T>
__device__ __forceinline__ void stage_to_shared(const scalar_t* __restrict__ g_src, T* __restrict__ g_dst,
                                                const scalar_t* __restrict__ a_src, T* __restrict__ a_dst, int count) {
  using Source = StagedSource<scalar_t>;
  constexpr int kVec = Source::kVec;
  constexpr int kUnroll = 4;
  const Source g(g_src, count), a(a_src, count);
  const int packs = max(g.packs, a.packs);
  for (int base = threadIdx.x; base < packs; base += kUnroll * blockDim.x) {
    typename Source::Pack g_loaded[kUnroll], a_loaded[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int index = base + u * blockDim.x;
      if (index < g.packs) {
        g_loaded[u] = g.packed[index];
      }
      if (index < a.packs) {
        a_loaded[u] = a.packed[index];
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int index = base + u * blockDim.x;
#pragma unroll
      for (int v = 0; v < kVec; ++v) {
        if (index < g.packs) {
          g_dst[g.head + index * kVec + v] = static_cast<T>(g_loaded[u].values[v]);
        }
        if (index < a.packs) {
          a_dst[a.head + index * kVec + v] = static_cast<T>(a_loaded[u].values[v]);
        }
      }
    }
  }
  for (int i = threadIdx.x; i < max(g.rest, a.rest); i += blockDim.x) {
    if (i < g.rest) {
      const int at = i < g.head ? i : i + g.packs * kVec;
      g_dst[at] = static_cast<T>(g_src[at]);
    }
    if (i < a.rest) {
      const int at = i < a.head ? i : i + a.packs * kVec;
      a_dst[at] = static_cast<T>(a_src[at]);
    }
  }
}

// Channel weights of rows [0, channels) of a chunk (weighted methods only): one thread per row for
// short rows in shared memory whose stride spreads over the banks (7x7 maps: 49 values, odd), else
// one warp per row.
template <typename T, typename scalar_t>
__device__ __forceinline__ void chunk_weights(CamMethod method, const scalar_t* a, const scalar_t* g, int64_t channels,
                                              int64_t pixels, bool serial, T* weights) {
  if (serial) {
    for (int64_t k = threadIdx.x; k < channels; k += kThreads) {
      weights[k] = channel_weight<T>(method, a + k * pixels, g + k * pixels, pixels, SerialRowSum{});
    }
    return;
  }
  for (int64_t k = threadIdx.x / kWarpSize; k < channels; k += kWarps) {
    const T w = warp_channel_weight<T>(method, a + k * pixels, g + k * pixels, pixels);
    if (threadIdx.x % kWarpSize == 0) {
      weights[k] = w;
    }
  }
}

// The chunk's partial map: out[p] = sum over its channels k of the method's term, in a fixed order.
template <typename T, typename scalar_t, typename out_t>
__device__ __forceinline__ void chunk_map(CamMethod method, const scalar_t* a, const scalar_t* g, const T* weights,
                                          int64_t channels, int64_t pixels, T* slice_sums, out_t* out) {
  const bool weighted = uses_channel_weights(method);
  const auto contribution = [&](int64_t k, int64_t p) -> T {
    const T av = static_cast<T>(a[k * pixels + p]);
    return weighted ? weights[k] * av : elementwise_term(method, av, static_cast<T>(g[k * pixels + p]));
  };
  if (pixels >= kThreads) {
    for (int64_t p = threadIdx.x; p < pixels; p += kThreads) {
      T acc = T(0);
#pragma unroll 4
      for (int64_t k = 0; k < channels; ++k) {
        acc += contribution(k, p);
      }
      out[p] = static_cast<out_t>(acc);
    }
    return;
  }
  // Small maps (7x7, 14x14): several threads share a pixel, each summing a slice of the channels.
  const int64_t slices = kThreads / pixels;
  const int64_t slice = threadIdx.x / pixels;
  const int64_t p = threadIdx.x % pixels;
  T acc = T(0);
  if (slice < slices) {
#pragma unroll 4
    for (int64_t k = slice; k < channels; k += slices) {
      acc += contribution(k, p);
    }
  }
  slice_sums[threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.x < pixels) {
    T total = T(0);
    for (int64_t s = 0; s < slices; ++s) {
      total += slice_sums[s * pixels + threadIdx.x];
    }
    out[threadIdx.x] = static_cast<out_t>(total);
  }
}

// The image, chunk index, first channel and channel count of a block of the reduce kernels.
struct BlockChunk {
  int64_t image, chunk, first_channel, channels;
};

__device__ __forceinline__ BlockChunk block_chunk(int64_t channels, int64_t num_chunks, int64_t chunk_channels) {
  const int64_t chunk = blockIdx.x % num_chunks;
  const int64_t first = chunk * chunk_channels;
  return {blockIdx.x / num_chunks, chunk, first, std::min(channels, first + chunk_channels) - first};
}

// Maps of at most this many pixels are reduced through shared memory, a chunk of at most
// kStagedValues values of A and as many of G per block.
constexpr int64_t kStagedMaxPixels = 1024;
constexpr int64_t kStagedValues = 4096;

// A block owns one image and a chunk of its channels, whose A and G rows are contiguous: both are
// copied to shared memory first, then the weights and the partial map come from there.
template <typename scalar_t, typename T, typename out_t>
__global__ void __launch_bounds__(kThreads)
    cam_reduce_staged_kernel(const scalar_t* __restrict__ activations, const scalar_t* __restrict__ gradients,
                             out_t* __restrict__ partial, int64_t channels, int64_t pixels, int64_t num_chunks,
                             int64_t chunk_channels, CamMethod method) {
  extern __shared__ unsigned char shared_bytes[];
  T* slice_sums = reinterpret_cast<T*>(shared_bytes); // kThreads values
  T* weights = slice_sums + kThreads;                 // chunk_channels values
  T* a_chunk = weights + chunk_channels;              // chunk_channels * pixels values
  T* g_chunk = a_chunk + chunk_channels * pixels;

  const auto [n, chunk, k_begin, rows] = block_chunk(channels, num_chunks, chunk_channels);
  const int64_t offset = (n * channels + k_begin) * pixels;
  const auto count = static_cast<int>(rows * pixels);
  stage_to_shared(gradients + offset, g_chunk, activations + offset, a_chunk, count);
  __syncthreads();
  if (uses_channel_weights(method)) {
    // rows of odd length (or 2) put the threads' reads in distinct banks
    const bool serial = pixels <= 64 && (pixels % 2 == 1 || pixels == 2);
    chunk_weights<T>(method, a_chunk, g_chunk, rows, pixels, serial, weights);
    __syncthreads();
  }
  chunk_map<T>(method, a_chunk, g_chunk, weights, rows, pixels, slice_sums,
               partial + (n * num_chunks + chunk) * pixels);
}

// Larger maps: the block reads its rows from global memory directly (each row is long enough to
// keep loads in flight).
template <typename scalar_t, typename T, typename out_t>
__global__ void __launch_bounds__(kThreads)
    cam_reduce_rows_kernel(const scalar_t* __restrict__ activations, const scalar_t* __restrict__ gradients,
                           out_t* __restrict__ partial, int64_t channels, int64_t pixels, int64_t num_chunks,
                           int64_t chunk_channels, CamMethod method) {
  extern __shared__ unsigned char shared_bytes[];
  T* slice_sums = reinterpret_cast<T*>(shared_bytes); // kThreads values
  T* weights = slice_sums + kThreads;                 // chunk_channels values

  const auto [n, chunk, k_begin, rows] = block_chunk(channels, num_chunks, chunk_channels);
  const scalar_t* a = activations + (n * channels + k_begin) * pixels;
  const scalar_t* g = gradients + (n * channels + k_begin) * pixels;
  if (uses_channel_weights(method)) {
    chunk_weights<T>(method, a, g, rows, pixels, /*serial=*/false, weights);
    __syncthreads();
  }
  chunk_map<T>(method, a, g, weights, rows, pixels, slice_sums, partial + (n * num_chunks + chunk) * pixels);
}

// Adds the chunks' partial maps, a warp per output pixel (lanes over chunks, then the fixed
// butterfly order): few pixels with many chunks each would leave a thread per pixel waiting on
// one load after another.
template <typename scalar_t, typename T>
__global__ void __launch_bounds__(kThreads)
    cam_reduce_finalize_kernel(const T* __restrict__ partial, scalar_t* __restrict__ cam, int64_t batch, int64_t pixels,
                               int64_t num_chunks) {
  const int64_t index = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / kWarpSize;
  if (index >= batch * pixels) {
    return; // the whole warp leaves together
  }
  const int64_t n = index / pixels;
  const int64_t p = index % pixels;
  const T* column = partial + n * num_chunks * pixels + p;
  T acc = T(0);
  for (int64_t c = threadIdx.x % kWarpSize; c < num_chunks; c += kWarpSize) {
    acc += column[c * pixels];
  }
  acc = warp_all_sum(acc);
  if (threadIdx.x % kWarpSize == 0) {
    cam[index] = static_cast<scalar_t>(acc);
  }
}

at::Tensor cam_reduce_cuda(const at::Tensor& activations, const at::Tensor& gradients, c10::string_view method_name) {
  const CamMethod method = check_cam_reduce_args(activations, gradients, method_name);
  const c10::cuda::CUDAGuard guard(activations.device());
  const at::Tensor a = activations.contiguous();
  const at::Tensor g = gradients.contiguous();
  const int64_t batch = a.size(0), channels = a.size(1), pixels = a.size(2) * a.size(3);
  at::Tensor cam = at::empty({batch, a.size(2), a.size(3)}, a.options().memory_format(at::MemoryFormat::Contiguous));
  if (cam.numel() == 0) {
    return cam;
  }
  if (channels == 0) {
    return cam.zero_();
  }

  // Chunks of channels: enough blocks to fill the device several times over, at most kMaxChunks
  // per image (the finalize kernel reads them all), and small enough to stage or to bound the
  // shared memory of the weights.
  constexpr int64_t kMaxChunks = 64;
  const bool staged = pixels <= kStagedMaxPixels;
  const int64_t sm_count = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const int64_t max_chunk_channels = staged ? std::max<int64_t>(1, kStagedValues / pixels) : kMaxChunkChannels;
  int64_t num_chunks = std::clamp<int64_t>(ceil_div(4 * sm_count, batch), 1, std::min(channels, kMaxChunks));
  num_chunks = std::max(num_chunks, ceil_div(channels, max_chunk_channels));
  const int64_t chunk_channels = ceil_div(channels, num_chunks);
  num_chunks = ceil_div(channels, chunk_channels);
  const auto stream = at::cuda::getCurrentCUDAStream();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "cam_reduce_cuda", [&] {
    using T = at::opmath_type<scalar_t>;
    // Double chunks can need more shared memory than older devices give a block: those read rows.
    const size_t staged_bytes = (kThreads + chunk_channels + 2 * chunk_channels * pixels) * sizeof(T);
    const bool use_staged = staged && staged_bytes <= at::cuda::getCurrentDeviceProperties()->sharedMemPerBlockOptin;
    const size_t shared_bytes = use_staged ? staged_bytes : (kThreads + chunk_channels) * sizeof(T);
    const auto launch = [&](auto* out) {
      using out_t = std::remove_pointer_t<decltype(out)>;
      if (use_staged) {
        auto kernel = cam_reduce_staged_kernel<scalar_t, T, out_t>;
        if (shared_bytes > 48 * 1024) { // past the default limit: opt in (within the device's, checked above)
          C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                              static_cast<int>(shared_bytes)));
        }
        kernel<<<batch * num_chunks, kThreads, shared_bytes, stream>>>(a.const_data_ptr<scalar_t>(),
                                                                       g.const_data_ptr<scalar_t>(), out, channels,
                                                                       pixels, num_chunks, chunk_channels, method);
      } else {
        cam_reduce_rows_kernel<scalar_t, T, out_t><<<batch * num_chunks, kThreads, shared_bytes, stream>>>(
            a.const_data_ptr<scalar_t>(), g.const_data_ptr<scalar_t>(), out, channels, pixels, num_chunks,
            chunk_channels, method);
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    };
    if (num_chunks == 1) {
      launch(cam.mutable_data_ptr<scalar_t>()); // one chunk per image writes the map itself
      return;
    }
    at::Tensor partial = at::empty({batch, num_chunks, pixels}, a.options().dtype(c10::CppTypeToScalarType<T>::value));
    launch(partial.mutable_data_ptr<T>());
    cam_reduce_finalize_kernel<scalar_t, T><<<ceil_div(batch * pixels, kWarps), kThreads, 0, stream>>>(
        partial.const_data_ptr<T>(), cam.mutable_data_ptr<scalar_t>(), batch, pixels, num_chunks);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return cam;
}

// One warp per (image, channel): the channel's sums first, then dA and dG pixel by pixel.
// The per-value formulas are the CPU kernel's (kernels/cam_formulas.h), one value at a time.
template <typename scalar_t, typename T>
__global__ void __launch_bounds__(kThreads)
    cam_reduce_backward_kernel(const scalar_t* __restrict__ grad_cam, const scalar_t* __restrict__ activations,
                               const scalar_t* __restrict__ gradients, scalar_t* __restrict__ grad_activations,
                               scalar_t* __restrict__ grad_gradients, int64_t batch, int64_t channels, int64_t pixels,
                               CamMethod method) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / kWarpSize;
  if (row >= batch * channels) {
    return; // the whole warp leaves together
  }
  const int lane = threadIdx.x % kWarpSize;
  const scalar_t* gl = grad_cam + (row / channels) * pixels;
  const scalar_t* a = activations + row * pixels;
  const scalar_t* g = gradients + row * pixels;
  scalar_t* ga = grad_activations + row * pixels;
  scalar_t* gg = grad_gradients + row * pixels;
  const auto store = [&](int64_t p, T grad_a, T grad_g) {
    ga[p] = static_cast<scalar_t>(grad_a);
    gg[p] = static_cast<scalar_t>(grad_g);
  };

  if (!uses_channel_weights(method)) {
    for (int64_t p = lane; p < pixels; p += kWarpSize) {
      const T gr = static_cast<T>(gl[p]), av = static_cast<T>(a[p]), gv = static_cast<T>(g[p]);
      store(p, elementwise_grad_activation(method, gr, av, gv), elementwise_grad_gradient(method, gr, av, gv));
    }
    return;
  }

  const T c = warp_row_sum<T>(gl, a, pixels, [](T gr, T av) { return gr * av; });
  const T w = warp_channel_weight<T>(method, a, g, pixels);
  const T inv_pixels = T(1) / static_cast<T>(pixels);
  switch (method) {
    case CamMethod::GradCAM:
      for (int64_t p = lane; p < pixels; p += kWarpSize) {
        store(p, w * static_cast<T>(gl[p]), c * inv_pixels);
      }
      break;
    case CamMethod::AbsCAM:
      for (int64_t p = lane; p < pixels; p += kWarpSize) {
        store(p, w * static_cast<T>(gl[p]), kernels::sign(static_cast<T>(g[p])) * c * inv_pixels);
      }
      break;
    case CamMethod::XGradCAM: {
      const T den = warp_row_sum<T>(a, g, pixels, [](T av, T) { return av; }) + T(kXGradCAMEps);
      for (int64_t p = lane; p < pixels; p += kWarpSize) {
        store(p, xgradcam_grad_activation(static_cast<T>(gl[p]), static_cast<T>(g[p]), w, c, den),
              xgradcam_grad_gradient(static_cast<T>(a[p]), c, den));
      }
      break;
    }
    default: { // GradCAMPlusPlus
      const T s = warp_row_sum<T>(a, g, pixels, [](T av, T) { return av; });
      const T dw_ds = warp_row_sum<T>(a, g, pixels, [=](T, T gv) { return gradcam_pp_term_dsum(gv, s); });
      for (int64_t p = lane; p < pixels; p += kWarpSize) {
        const T gv = static_cast<T>(g[p]);
        store(p, w * static_cast<T>(gl[p]) + c * dw_ds, gradcam_pp_grad_gradient(gv, s, c));
      }
      break;
    }
  }
}

std::tuple<at::Tensor, at::Tensor> cam_reduce_backward_cuda(const at::Tensor& grad_cam, const at::Tensor& activations,
                                                            const at::Tensor& gradients, c10::string_view method_name) {
  const CamMethod method = check_cam_reduce_backward_args(grad_cam, activations, gradients, method_name);
  const c10::cuda::CUDAGuard guard(activations.device());
  const at::Tensor gl = grad_cam.contiguous();
  const at::Tensor a = activations.contiguous();
  const at::Tensor g = gradients.contiguous();
  at::Tensor grad_a = at::empty_like(a, at::MemoryFormat::Contiguous);
  at::Tensor grad_g = at::empty_like(g, at::MemoryFormat::Contiguous);
  const int64_t batch = a.size(0), channels = a.size(1), pixels = a.size(2) * a.size(3);
  if (a.numel() == 0) {
    return {grad_a, grad_g};
  }
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "cam_reduce_backward_cuda", [&] {
    using T = at::opmath_type<scalar_t>;
    cam_reduce_backward_kernel<scalar_t, T><<<ceil_div(batch * channels, kWarps), kThreads, 0, stream>>>(
        gl.const_data_ptr<scalar_t>(), a.const_data_ptr<scalar_t>(), g.const_data_ptr<scalar_t>(),
        grad_a.mutable_data_ptr<scalar_t>(), grad_g.mutable_data_ptr<scalar_t>(), batch, channels, pixels, method);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {grad_a, grad_g};
}

} // namespace

TORCH_LIBRARY_IMPL(torchcam_ops, CUDA, m) {
  m.impl("cam_reduce", &cam_reduce_cuda);
  m.impl("cam_reduce_backward", &cam_reduce_backward_cuda);
}

} // namespace torchcam_ops
