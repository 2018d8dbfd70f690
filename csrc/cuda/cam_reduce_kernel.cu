// CUDA kernels of cam_reduce and cam_reduce_backward (channels-first layout).
//
// Forward, by map size (every sum in a fixed order, no atomics: results are reproducible):
// - maps of at most 256 pixels (7x7, 14x14 layers): a block owns one image and a chunk of its
//   channels. A warp holds one channel's rows of A and G in registers (a few pixels per lane), takes
//   the channel weight with warp sums and adds its term to the warp's partial map, also in
//   registers, several channels at a time so that many loads are in flight. The block's warps then
//   add their maps in warp order. A and G are read once, straight from global memory.
// - larger maps: the weighted methods first take the channel weights (a warp per row, G read once),
//   then a block owns a tile of pixels of one image and a chunk of its channels, each thread summing
//   its pixels (four per 16-byte load where rows allow) over the chunk's channels.
// - several chunks per image: a small kernel adds the chunks' partial maps in chunk order.
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

// Loads of kVec consecutive values at once (16 bytes for kVec = 16 / sizeof(scalar_t)).
template <typename scalar_t, int kVec>
struct alignas(sizeof(scalar_t) * kVec) Pack {
  scalar_t values[kVec];
};

// Sum over one channel row of f(a[p], g[p]), by a whole warp; the total in every lane. Each lane
// keeps four accumulators so that four loads (of kVec values each) are in flight at once; they are
// combined in a fixed order. kVec > 1 needs rows of a multiple of kVec values, aligned to a pack.
template <typename T, int kVec = 1, typename scalar_t, typename F>
__device__ __forceinline__ T warp_row_sum(const scalar_t* a, const scalar_t* g, int64_t pixels, F f) {
  using Packed = Pack<scalar_t, kVec>;
  const auto* a_packs = reinterpret_cast<const Packed*>(a);
  const auto* g_packs = reinterpret_cast<const Packed*>(g);
  const int64_t packs = pixels / kVec;
  const auto add = [&](T& acc, const Packed& av, const Packed& gv) {
#pragma unroll
    for (int v = 0; v < kVec; ++v) {
      acc += f(static_cast<T>(av.values[v]), static_cast<T>(gv.values[v]));
    }
  };
  T acc[4] = {T(0), T(0), T(0), T(0)};
  int64_t q = threadIdx.x % kWarpSize;
  for (; q + 3 * kWarpSize < packs; q += 4 * kWarpSize) {
    Packed av[4], gv[4];
#pragma unroll
    for (int u = 0; u < 4; ++u) {
      av[u] = a_packs[q + u * kWarpSize];
      gv[u] = g_packs[q + u * kWarpSize];
    }
#pragma unroll
    for (int u = 0; u < 4; ++u) {
      add(acc[u], av[u], gv[u]);
    }
  }
  for (; q < packs; q += kWarpSize) {
    add(acc[0], a_packs[q], g_packs[q]);
  }
  return warp_all_sum((acc[0] + acc[1]) + (acc[2] + acc[3]));
}

// The channel weight of one row (weighted methods), by a whole warp; in every lane.
template <typename T, int kVec = 1, typename scalar_t>
__device__ __forceinline__ T warp_channel_weight(CamMethod method, const scalar_t* a, const scalar_t* g,
                                                 int64_t pixels) {
  switch (method) {
    case CamMethod::GradCAM:
      return warp_row_sum<T, kVec>(a, g, pixels, [](T, T gv) { return gv; }) / static_cast<T>(pixels);
    case CamMethod::AbsCAM:
      return warp_row_sum<T, kVec>(a, g, pixels, [](T, T gv) { return gv < T(0) ? -gv : gv; }) / static_cast<T>(pixels);
    case CamMethod::XGradCAM: {
      const T weighted = warp_row_sum<T, kVec>(a, g, pixels, [](T av, T gv) { return av * gv; });
      const T activation_sum = warp_row_sum<T, kVec>(a, g, pixels, [](T av, T) { return av; });
      return weighted / (activation_sum + T(kXGradCAMEps));
    }
    default: { // GradCAMPlusPlus
      const T activation_sum = warp_row_sum<T, kVec>(a, g, pixels, [](T av, T) { return av; });
      return warp_row_sum<T, kVec>(a, g, pixels, [=](T, T gv) { return gradcam_pp_term(gv, activation_sum); });
    }
  }
}

// Butterfly sums of kCount values at once (independent shuffles interleave); totals in every lane.
template <int kCount, typename T>
__device__ __forceinline__ void warp_all_sums(T (&values)[kCount]) {
#pragma unroll
  for (int mask = kWarpSize / 2; mask > 0; mask >>= 1) {
#pragma unroll
    for (int i = 0; i < kCount; ++i) {
      values[i] += __shfl_xor_sync(0xffffffffu, values[i], mask);
    }
  }
}

template <int kPerLane, typename T>
__device__ __forceinline__ T lane_sum(const T (&values)[kPerLane]) {
  T total = values[0];
#pragma unroll
  for (int j = 1; j < kPerLane; ++j) {
    total += values[j];
  }
  return total;
}

// One warp's share of a chunk: kUnroll channels' rows at a time, lane l holding pixels
// l, l + 32, ... (kPerLane of them, zeros past the row); their weights by warp sums; their terms
// added to the lane's pixels of the warp's partial map `acc`, channel after channel.
template <int kPerLane, int kUnroll, typename T, typename scalar_t>
__device__ __forceinline__ void warp_chunk_map(CamMethod method, const scalar_t* __restrict__ a,
                                               const scalar_t* __restrict__ g, int64_t first_row, int64_t rows,
                                               int pixels, T (&acc)[kPerLane]) {
  const int lane = threadIdx.x % kWarpSize;
  const bool weighted = uses_channel_weights(method);
  for (int64_t k0 = first_row; k0 < rows; k0 += kWarps * kUnroll) {
    T av[kUnroll][kPerLane], gv[kUnroll][kPerLane];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t k = k0 + u * kWarps;
#pragma unroll
      for (int j = 0; j < kPerLane; ++j) {
        const int p = lane + j * kWarpSize;
        const bool valid = k < rows && p < pixels;
        av[u][j] = valid ? static_cast<T>(a[k * pixels + p]) : T(0);
        gv[u][j] = valid ? static_cast<T>(g[k * pixels + p]) : T(0);
      }
    }
    if (weighted) {
      T weights[kUnroll];
      if (method == CamMethod::GradCAM || method == CamMethod::AbsCAM) {
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
          T magnitude[kPerLane];
#pragma unroll
          for (int j = 0; j < kPerLane; ++j) {
            magnitude[j] = method == CamMethod::AbsCAM && gv[u][j] < T(0) ? -gv[u][j] : gv[u][j];
          }
          weights[u] = lane_sum(magnitude);
        }
        warp_all_sums(weights);
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
          weights[u] = weights[u] / static_cast<T>(pixels);
        }
      } else {
        T activation_sums[kUnroll];
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
          activation_sums[u] = lane_sum(av[u]);
        }
        warp_all_sums(activation_sums);
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
          T terms[kPerLane];
#pragma unroll
          for (int j = 0; j < kPerLane; ++j) {
            const bool valid = lane + j * kWarpSize < pixels;
            terms[j] = method == CamMethod::XGradCAM ? av[u][j] * gv[u][j]
                       : valid                       ? gradcam_pp_term(gv[u][j], activation_sums[u])
                                                     : T(0);
          }
          weights[u] = lane_sum(terms);
        }
        warp_all_sums(weights);
        if (method == CamMethod::XGradCAM) {
#pragma unroll
          for (int u = 0; u < kUnroll; ++u) {
            weights[u] = weights[u] / (activation_sums[u] + T(kXGradCAMEps));
          }
        }
      }
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        if (k0 + u * kWarps < rows) { // the same in every lane
#pragma unroll
          for (int j = 0; j < kPerLane; ++j) {
            acc[j] += weights[u] * av[u][j];
          }
        }
      }
    } else {
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        if (k0 + u * kWarps < rows) {
#pragma unroll
          for (int j = 0; j < kPerLane; ++j) {
            acc[j] += elementwise_term(method, av[u][j], gv[u][j]);
          }
        }
      }
    }
  }
}

// The image, chunk index, first channel and channel count of a block of the reduce kernels.
struct BlockChunk {
  int64_t image, chunk, first_channel, channels;
};

__device__ __forceinline__ BlockChunk block_chunk(int64_t block, int64_t channels, int64_t num_chunks,
                                                  int64_t chunk_channels) {
  const int64_t chunk = block % num_chunks;
  const int64_t first = chunk * chunk_channels;
  return {block / num_chunks, chunk, first, std::min(channels, first + chunk_channels) - first};
}

// Maps of at most kRegisterMaxPixels pixels are reduced in registers, kPerLane pixels per lane.
constexpr int kRegisterMaxPixels = 8 * kWarpSize;

template <int kPerLane, typename scalar_t, typename T, typename out_t>
__global__ void __launch_bounds__(kThreads)
    cam_reduce_register_kernel(const scalar_t* __restrict__ activations, const scalar_t* __restrict__ gradients,
                               out_t* __restrict__ partial, int64_t channels, int pixels, int64_t num_chunks,
                               int64_t chunk_channels, CamMethod method) {
  // about 16 loads in flight per lane, whatever the map size
  constexpr int kUnroll = kPerLane >= 8 ? 1 : 8 / kPerLane;
  __shared__ T warp_maps[kWarps][kPerLane * kWarpSize];
  const auto [n, chunk, k_begin, rows] = block_chunk(blockIdx.x, channels, num_chunks, chunk_channels);
  const int64_t offset = (n * channels + k_begin) * pixels;
  T acc[kPerLane];
#pragma unroll
  for (int j = 0; j < kPerLane; ++j) {
    acc[j] = T(0);
  }
  warp_chunk_map<kPerLane, kUnroll>(method, activations + offset, gradients + offset, threadIdx.x / kWarpSize, rows,
                                    pixels, acc);
  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
#pragma unroll
  for (int j = 0; j < kPerLane; ++j) {
    warp_maps[warp][j * kWarpSize + lane] = acc[j];
  }
  __syncthreads();
  out_t* out = partial + (n * num_chunks + chunk) * pixels;
  for (int p = threadIdx.x; p < pixels; p += kThreads) {
    T total = warp_maps[0][p];
#pragma unroll
    for (int w = 1; w < kWarps; ++w) {
      total += warp_maps[w][p];
    }
    out[p] = static_cast<out_t>(total);
  }
}

// Channel weights of larger maps, a warp per (image, channel) row.
template <int kVec, typename scalar_t, typename T>
__global__ void __launch_bounds__(kThreads)
    cam_weights_kernel(const scalar_t* __restrict__ activations, const scalar_t* __restrict__ gradients,
                       T* __restrict__ weights, int64_t rows, int64_t pixels, CamMethod method) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / kWarpSize;
  if (row >= rows) {
    return; // the whole warp leaves together
  }
  const T w = warp_channel_weight<T, kVec>(method, activations + row * pixels, gradients + row * pixels, pixels);
  if (threadIdx.x % kWarpSize == 0) {
    weights[row] = w;
  }
}

constexpr int kTileThreads = 128;

// Larger maps: block (image, chunk, tile) sums the chunk's channels at kWidth consecutive pixels
// per thread (one load of each row per channel), four channels' loads in flight at a time.
template <int kWidth, typename scalar_t, typename T, typename out_t>
__global__ void __launch_bounds__(kTileThreads)
    cam_reduce_tiles_kernel(const scalar_t* __restrict__ activations, const scalar_t* __restrict__ gradients,
                            const T* __restrict__ weights, out_t* __restrict__ partial, int64_t channels,
                            int64_t pixels, int64_t tiles, int64_t num_chunks, int64_t chunk_channels,
                            CamMethod method) {
  using Packed = Pack<scalar_t, kWidth>;
  constexpr int kUnroll = 4;
  const int64_t tile = blockIdx.x % tiles;
  const auto [n, chunk, k_begin, rows] = block_chunk(blockIdx.x / tiles, channels, num_chunks, chunk_channels);
  const int64_t p0 = (tile * kTileThreads + threadIdx.x) * kWidth;
  if (p0 >= pixels) {
    return; // rows are a multiple of kWidth long: a pack is all in or all out
  }
  const scalar_t* a = activations + (n * channels + k_begin) * pixels + p0;
  const scalar_t* g = gradients + (n * channels + k_begin) * pixels + p0;
  const bool weighted = uses_channel_weights(method);
  const T* w = weighted ? weights + n * channels + k_begin : nullptr;
  const auto load = [&](const scalar_t* base, int64_t k) {
    return *reinterpret_cast<const Packed*>(base + k * pixels);
  };
  T acc[kWidth];
#pragma unroll
  for (int v = 0; v < kWidth; ++v) {
    acc[v] = T(0);
  }
  int64_t k = 0;
  if (weighted) {
    for (; k + kUnroll <= rows; k += kUnroll) {
      Packed av[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        av[u] = load(a, k + u);
      }
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
#pragma unroll
        for (int v = 0; v < kWidth; ++v) {
          acc[v] += w[k + u] * static_cast<T>(av[u].values[v]);
        }
      }
    }
    for (; k < rows; ++k) {
      const Packed av = load(a, k);
#pragma unroll
      for (int v = 0; v < kWidth; ++v) {
        acc[v] += w[k] * static_cast<T>(av.values[v]);
      }
    }
  } else {
    for (; k + kUnroll <= rows; k += kUnroll) {
      Packed av[kUnroll], gv[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        av[u] = load(a, k + u);
        gv[u] = load(g, k + u);
      }
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
#pragma unroll
        for (int v = 0; v < kWidth; ++v) {
          acc[v] += elementwise_term(method, static_cast<T>(av[u].values[v]), static_cast<T>(gv[u].values[v]));
        }
      }
    }
    for (; k < rows; ++k) {
      const Packed av = load(a, k), gv = load(g, k);
#pragma unroll
      for (int v = 0; v < kWidth; ++v) {
        acc[v] += elementwise_term(method, static_cast<T>(av.values[v]), static_cast<T>(gv.values[v]));
      }
    }
  }
  Pack<out_t, kWidth> result;
#pragma unroll
  for (int v = 0; v < kWidth; ++v) {
    result.values[v] = static_cast<out_t>(acc[v]);
  }
  *reinterpret_cast<Pack<out_t, kWidth>*>(partial + (n * num_chunks + chunk) * pixels + p0) = result;
}

// Adds the chunks' partial maps in chunk order. Few chunks: a thread per output pixel (coalesced
// rows); many: a warp per pixel, lanes over chunks, then the fixed butterfly order (a thread
// would wait on one load after another).
template <typename scalar_t, typename T>
__global__ void __launch_bounds__(kThreads)
    cam_reduce_finalize_kernel(const T* __restrict__ partial, scalar_t* __restrict__ cam, int64_t batch, int64_t pixels,
                               int64_t num_chunks) {
  const int64_t index = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (index >= batch * pixels) {
    return;
  }
  const T* column = partial + (index / pixels) * num_chunks * pixels + index % pixels;
  T acc = column[0];
#pragma unroll 8
  for (int64_t c = 1; c < num_chunks; ++c) {
    acc += column[c * pixels];
  }
  cam[index] = static_cast<scalar_t>(acc);
}

template <typename scalar_t, typename T>
__global__ void __launch_bounds__(kThreads)
    cam_reduce_finalize_warps_kernel(const T* __restrict__ partial, scalar_t* __restrict__ cam, int64_t batch,
                                     int64_t pixels, int64_t num_chunks) {
  const int64_t index = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / kWarpSize;
  if (index >= batch * pixels) {
    return; // the whole warp leaves together
  }
  const T* column = partial + (index / pixels) * num_chunks * pixels + index % pixels;
  T acc = T(0);
  for (int64_t c = threadIdx.x % kWarpSize; c < num_chunks; c += kWarpSize) {
    acc += column[c * pixels];
  }
  acc = warp_all_sum(acc);
  if (threadIdx.x % kWarpSize == 0) {
    cam[index] = static_cast<scalar_t>(acc);
  }
}

bool aligned_to(const at::Tensor& t, size_t bytes) {
  return reinterpret_cast<uintptr_t>(t.const_data_ptr()) % bytes == 0;
}

// Chunks of channels per image for `base_blocks` blocks per chunk index: about `target_blocks`
// blocks in all, at least `min_chunk_channels` channels per chunk, at most kMaxChunks chunks.
int64_t chunks_for(int64_t channels, int64_t base_blocks, int64_t target_blocks, int64_t min_chunk_channels) {
  constexpr int64_t kMaxChunks = 64;
  const int64_t most = std::max<int64_t>(1, std::min(kMaxChunks, channels / min_chunk_channels));
  return std::clamp<int64_t>(ceil_div(target_blocks, base_blocks), 1, most);
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
  const int64_t sm_count = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const auto stream = at::cuda::getCurrentCUDAStream();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "cam_reduce_cuda", [&] {
    using T = at::opmath_type<scalar_t>;
    const auto t_options = a.options().dtype(c10::CppTypeToScalarType<T>::value);
    // Partial maps per chunk when an image has several, else the map itself; then the finalize.
    const auto reduce = [&](int64_t num_chunks, auto launch) {
      if (num_chunks == 1) {
        launch(cam.mutable_data_ptr<scalar_t>());
        return;
      }
      at::Tensor partial = at::empty({batch, num_chunks, pixels}, t_options);
      launch(partial.mutable_data_ptr<T>());
      if (num_chunks <= 16) {
        cam_reduce_finalize_kernel<scalar_t, T><<<ceil_div(batch * pixels, kThreads), kThreads, 0, stream>>>(
            partial.const_data_ptr<T>(), cam.mutable_data_ptr<scalar_t>(), batch, pixels, num_chunks);
      } else {
        cam_reduce_finalize_warps_kernel<scalar_t, T><<<ceil_div(batch * pixels, kWarps), kThreads, 0, stream>>>(
            partial.const_data_ptr<T>(), cam.mutable_data_ptr<scalar_t>(), batch, pixels, num_chunks);
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    };

    if (pixels <= kRegisterMaxPixels) {
      // blocks of 8 warps: about four per SM, at least a channel per warp
      int64_t num_chunks = chunks_for(channels, batch, 4 * sm_count, kWarps);
      const int64_t chunk_channels = ceil_div(channels, num_chunks);
      num_chunks = ceil_div(channels, chunk_channels);
      const auto launch_with = [&](auto per_lane, auto* out) {
        constexpr int kPerLane = decltype(per_lane)::value;
        using out_t = std::remove_pointer_t<decltype(out)>;
        cam_reduce_register_kernel<kPerLane, scalar_t, T, out_t><<<batch * num_chunks, kThreads, 0, stream>>>(
            a.const_data_ptr<scalar_t>(), g.const_data_ptr<scalar_t>(), out, channels, static_cast<int>(pixels),
            num_chunks, chunk_channels, method);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      };
      reduce(num_chunks, [&](auto* out) {
        if (pixels <= kWarpSize) {
          launch_with(std::integral_constant<int, 1>{}, out);
        } else if (pixels <= 2 * kWarpSize) {
          launch_with(std::integral_constant<int, 2>{}, out);
        } else if (pixels <= 4 * kWarpSize) {
          launch_with(std::integral_constant<int, 4>{}, out);
        } else {
          launch_with(std::integral_constant<int, 8>{}, out);
        }
      });
      return;
    }

    at::Tensor weights;
    if (uses_channel_weights(method)) {
      weights = at::empty({batch * channels}, t_options);
      constexpr int kVec = 16 / sizeof(scalar_t);
      const bool packed = pixels % kVec == 0 && aligned_to(a, 16) && aligned_to(g, 16);
      const auto weights_kernel = packed ? cam_weights_kernel<kVec, scalar_t, T> : cam_weights_kernel<1, scalar_t, T>;
      weights_kernel<<<ceil_div(batch * channels, kWarps), kThreads, 0, stream>>>(
          a.const_data_ptr<scalar_t>(), g.const_data_ptr<scalar_t>(), weights.mutable_data_ptr<T>(), batch * channels,
          pixels, method);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    const T* weights_data = weights.defined() ? weights.const_data_ptr<T>() : nullptr;
    constexpr int kWidth = 4;
    const bool wide =
        pixels % kWidth == 0 && aligned_to(a, kWidth * sizeof(scalar_t)) && aligned_to(g, kWidth * sizeof(scalar_t));
    const int64_t tiles = ceil_div(pixels, kTileThreads * (wide ? kWidth : 1));
    // blocks of 4 warps: about eight per SM, at least 16 channels per chunk
    int64_t num_chunks = chunks_for(channels, batch * tiles, 8 * sm_count, 16);
    const int64_t chunk_channels = ceil_div(channels, num_chunks);
    num_chunks = ceil_div(channels, chunk_channels);
    reduce(num_chunks, [&](auto* out) {
      using out_t = std::remove_pointer_t<decltype(out)>;
      const auto kernel =
          wide ? cam_reduce_tiles_kernel<kWidth, scalar_t, T, out_t> : cam_reduce_tiles_kernel<1, scalar_t, T, out_t>;
      kernel<<<batch * num_chunks * tiles, kTileThreads, 0, stream>>>(
          a.const_data_ptr<scalar_t>(), g.const_data_ptr<scalar_t>(), weights_data, out, channels, pixels, tiles,
          num_chunks, chunk_channels, method);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
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
