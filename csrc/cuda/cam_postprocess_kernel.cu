// CUDA kernels of cam_postprocess.
//
// Normalising needs each map's min and max before anything is written. As on the CPU
// (kernels/cam_postprocess.h), they are found on the first and last output row and column of
// each source cell only. For small source maps (7x7, 14x14) that is a few hundred values, and each
// block of the write kernel finds its map's extremes itself before writing its band of rows: one
// launch. Larger maps take a first launch of a few small blocks per map (one per band of output
// rows). The write kernel writes every output pixel once, already normalised, four pixels per
// store where rows allow.

#include "../kernels/normalize.h"
#include "../ops/cam_postprocess.h"
#include "cuda_utils.cuh"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>

namespace torchcam_ops {

namespace {

using cuda::ceil_div;
using cuda::relu_keep_nan;

constexpr int kThreads = 256;
constexpr int kItemsPerThread = 4;
constexpr int64_t kTilePacks = kThreads * kItemsPerThread;

struct ResizeGeometry {
  int in_h, in_w, out_h, out_w; // one map's sizes fit 32 bits; checked on the host
};

// Source position of output index `dst` along one axis (half-pixel centres), clamped at 0.
template <typename T>
__device__ __forceinline__ T source_position(T scale, int dst) {
  const T src = scale * (static_cast<T>(dst) + T(0.5)) - T(0.5);
  return src < T(0) ? T(0) : src;
}

template <typename T>
__device__ __forceinline__ int source_cell(T scale, int dst, int in_size) {
  return min(static_cast<int>(source_position(scale, dst)), in_size - 1);
}

// Whether `dst` is the first or last output position of its source cell: the only places a
// bilinear map's extremes along this axis can be.
template <typename T>
__device__ __forceinline__ bool is_extreme_position(T scale, int dst, int out_size, int in_size) {
  const int cell = source_cell(scale, dst, in_size);
  return dst == 0 || dst == out_size - 1 || source_cell(scale, dst - 1, in_size) != cell ||
         source_cell(scale, dst + 1, in_size) != cell;
}

// Where output index `dst` samples along one axis: the two source indices and the weight of the
// second.
template <typename T>
struct AxisSample {
  int first, second;
  T weight;
};

template <typename T>
__device__ __forceinline__ AxisSample<T> axis_sample(T scale, int dst, int in_size) {
  const T src = source_position(scale, dst);
  const int first = min(static_cast<int>(src), in_size - 1);
  const int second = first < in_size - 1 ? first + 1 : first;
  return {first, second, min(max(src - static_cast<T>(first), T(0)), T(1))};
}

// Bilinear value at output (row, column), ReLU on the source samples; blends in the a + w1 (b - a)
// form of the CPU kernel (exact on constant regions).
template <typename T, typename scalar_t>
__device__ __forceinline__ T resized_value(const scalar_t* map, int in_w, const AxisSample<T>& row,
                                           const AxisSample<T>& column, bool relu) {
  const auto sample = [&](int r, int c) {
    const T v = static_cast<T>(map[r * in_w + c]);
    return relu ? relu_keep_nan(v) : v;
  };
  const auto lerp = [](T a, T b, T w) { return kernels::blend(a, b, w); };
  const T top = lerp(sample(row.first, column.first), sample(row.first, column.second), column.weight);
  const T bottom = lerp(sample(row.second, column.first), sample(row.second, column.second), column.weight);
  return lerp(top, bottom, row.weight);
}

// Min and max of each map are found by kExtremaGroups blocks, each over a band of output rows,
// so that small batches still spread over the device; the write kernel combines the bands. Small
// source maps skip this launch: each write block finds its map's extremes itself (a few hundred
// bilinear values, fewer than one band's pixels).
constexpr int kExtremaGroups = 8;

// Scratch of band_min_max in shared memory.
struct ExtremaScratch {
  static constexpr int kWarps = kThreads / cuda::kWarpSize;
  alignas(double) unsigned char reduce[2 * kWarps * sizeof(double)]; // 2 * kWarps values of T
  int extreme_rows[kThreads];
  int warp_counts[kWarps];
};

// Min and max, over the block (the result in every thread), of the resized map at the extreme rows
// of [y_begin, y_end) x the extreme columns. The extreme rows are listed first (in order, a few
// hundred rows at a time), then the block's threads share the (row, column) pairs: a 7x7 map
// upsampled to 224 has a couple of extreme rows per band of 28.
template <typename T, typename scalar_t>
__device__ void band_min_max(const scalar_t* map, const ResizeGeometry& geo, T scale_h, T scale_w, bool relu,
                             int y_begin, int y_end, ExtremaScratch& scratch, T& lo, T& hi) {
  constexpr int kWarps = ExtremaScratch::kWarps;
  const int warp = threadIdx.x / cuda::kWarpSize, lane = threadIdx.x % cuda::kWarpSize;
  lo = std::numeric_limits<T>::infinity();
  hi = -std::numeric_limits<T>::infinity();
  for (int rows_begin = y_begin; rows_begin < y_end; rows_begin += kThreads) {
    const int y = rows_begin + threadIdx.x;
    const bool extreme = y < y_end && is_extreme_position(scale_h, y, geo.out_h, geo.in_h);
    const unsigned ballot = __ballot_sync(0xffffffffu, extreme);
    if (lane == 0) {
      scratch.warp_counts[warp] = __popc(ballot);
    }
    __syncthreads();
    int offset = 0, count = 0;
    for (int w = 0; w < kWarps; ++w) {
      offset += w < warp ? scratch.warp_counts[w] : 0;
      count += scratch.warp_counts[w];
    }
    if (extreme) {
      scratch.extreme_rows[offset + __popc(ballot & ((1u << lane) - 1u))] = y;
    }
    __syncthreads();
    for (int i = threadIdx.x; i < count * geo.out_w; i += kThreads) {
      const int row_index = i / geo.out_w;
      const int x = i - row_index * geo.out_w;
      if (is_extreme_position(scale_w, x, geo.out_w, geo.in_w)) {
        const T u = resized_value<T>(map, geo.in_w, axis_sample(scale_h, scratch.extreme_rows[row_index], geo.in_h),
                                     axis_sample(scale_w, x, geo.in_w), relu);
        lo = cuda::min_keep_nan(lo, u);
        hi = cuda::max_keep_nan(hi, u);
      }
    }
    __syncthreads(); // the list is rewritten for the next rows
  }
  cuda::block_min_max(lo, hi, reinterpret_cast<T*>(scratch.reduce));
}

// Block (map, band): min and max over the extreme rows of its band x the extreme columns.
template <typename scalar_t, typename T>
__global__ void __launch_bounds__(kThreads)
    map_extrema_kernel(const scalar_t* __restrict__ cam, T* __restrict__ extrema, ResizeGeometry geo, T scale_h,
                       T scale_w, bool relu) {
  __shared__ ExtremaScratch scratch;
  const int map_index = blockIdx.x / kExtremaGroups;
  const int band = blockIdx.x % kExtremaGroups;
  const int band_rows = (geo.out_h + kExtremaGroups - 1) / kExtremaGroups;
  const int y_begin = band * band_rows;
  const scalar_t* map = cam + static_cast<int64_t>(map_index) * geo.in_h * geo.in_w;
  T lo, hi;
  band_min_max(map, geo, scale_h, scale_w, relu, y_begin, min(geo.out_h, y_begin + band_rows), scratch, lo, hi);
  if (threadIdx.x == 0) {
    extrema[2 * blockIdx.x] = lo;
    extrema[2 * blockIdx.x + 1] = hi;
  }
}

// Where MinMax::quotient's reciprocal and correction are exact: numerators from 2^(digits + 2) above
// the smallest normal number, divisors up to 2^(max_exponent - 2).
template <typename T>
struct QuotientLimits;

template <>
struct QuotientLimits<float> {
  static constexpr float kMinNumerator = 0x1p-101f;
  static constexpr float kMaxDivisor = 0x1p126f;
};

template <>
struct QuotientLimits<double> {
  static constexpr double kMinNumerator = 0x1p-968;
  static constexpr double kMaxDivisor = 0x1p1022;
};

// The min-max normalisation of one map from its extremes (the identity without normalize).
template <typename T>
struct MinMax {
  __device__ MinMax(T map_lo, T map_hi, bool normalize) : enabled(normalize) {
    if (!normalize) {
      return;
    }
    prescale = kernels::normalization_prescale(map_lo, map_hi);
    lo = map_lo * prescale;
    const T range = kernels::normalization_range(lo, map_hi * prescale);
    // A constant map (range 0) normalises to zeros: scale everything by 0 instead of dividing by it.
    scale = range == T(0) ? T(0) : T(1);
    divisor = range == T(0) ? T(1) : range;
    // a divisor near the largest values has a subnormal reciprocal: every pixel divides (NaN below)
    reciprocal = divisor < QuotientLimits<T>::kMaxDivisor ? T(1) / divisor : std::numeric_limits<T>::quiet_NaN();
  }

  // Values of non-extreme pixels may round an ulp outside [lo, hi]: maps are kept inside [0, 1].
  __device__ T operator()(T u) const {
    return enabled ? min(max(scale * quotient(u * prescale - lo), T(0)), T(1)) : u;
  }

  // numerator / divisor, correctly rounded as the CPU's division, from the map's reciprocal: the
  // product, then one fused correction by the residual (an IEEE division per pixel is a long
  // instruction sequence that made the write kernels compute-bound). The correction is exact, and the
  // result the rounded quotient, while the residual does not underflow: numerators near the subnormal
  // range (and zeros, for their sign), infinities and NaNs take the division itself.
  __device__ T quotient(T numerator) const {
    if (fabs(numerator) >= QuotientLimits<T>::kMinNumerator) {
      const T estimate = numerator * reciprocal;
      const T residual = fma(-estimate, divisor, numerator);
      const T corrected = fma(residual, reciprocal, estimate);
      if (isfinite(corrected)) {
        return corrected;
      }
    }
    return numerator / divisor;
  }

  bool enabled;
  T lo = T(0), prescale = T(1), scale = T(1), divisor = T(1), reciprocal = T(1);
};

// The normalisation of map `map` from its bands' extrema (map_extrema_kernel).
template <typename T>
__device__ MinMax<T> min_max_of_bands(const T* extrema, int64_t map, bool normalize) {
  if (!normalize) {
    return MinMax<T>(T(0), T(0), false);
  }
  T map_lo = extrema[2 * kExtremaGroups * map], map_hi = extrema[2 * kExtremaGroups * map + 1];
  for (int band = 1; band < kExtremaGroups; ++band) {
    map_lo = cuda::min_keep_nan(map_lo, extrema[2 * (kExtremaGroups * map + band)]);
    map_hi = cuda::max_keep_nan(map_hi, extrema[2 * (kExtremaGroups * map + band) + 1]);
  }
  return MinMax<T>(map_lo, map_hi, true);
}

// Output values per thread and per store: four consecutive pixels of a row when rows are a
// multiple of four long (one 4-wide store), else one.
template <int kWidth, typename scalar_t>
struct alignas(sizeof(scalar_t) * kWidth) OutputPack {
  scalar_t values[kWidth];
};

template <int kWidth, typename scalar_t, typename T>
__global__ void __launch_bounds__(kThreads)
    write_kernel(const scalar_t* __restrict__ cam, const T* __restrict__ extrema, scalar_t* __restrict__ out,
                 ResizeGeometry geo, T scale_h, T scale_w, bool relu, bool normalize, int tiles) {
  const int64_t n = blockIdx.x / tiles;
  const int tile = blockIdx.x % tiles;
  const int out_pixels = geo.out_h * geo.out_w;
  const MinMax<T> normalization = min_max_of_bands(extrema, n, normalize);
  const scalar_t* map = cam + n * geo.in_h * geo.in_w;
  auto* dst = reinterpret_cast<OutputPack<kWidth, scalar_t>*>(out + n * out_pixels);
  const int packs = out_pixels / kWidth;
#pragma unroll
  for (int item = 0; item < kItemsPerThread; ++item) {
    const int pack = (tile * kItemsPerThread + item) * kThreads + threadIdx.x;
    if (pack < packs) {
      const int y = pack * kWidth / geo.out_w;
      const int x0 = pack * kWidth - y * geo.out_w;
      const AxisSample<T> row = axis_sample(scale_h, y, geo.in_h);
      OutputPack<kWidth, scalar_t> values;
#pragma unroll
      for (int v = 0; v < kWidth; ++v) {
        const T u = resized_value<T>(map, geo.in_w, row, axis_sample(scale_w, x0 + v, geo.in_w), relu);
        values.values[v] = static_cast<scalar_t>(normalization(u));
      }
      dst[pack] = values;
    }
  }
}

// Writes output rows [y_begin, y_end) of one map from `blended`, the horizontally blended source
// rows from first_row on (one row of out_w values per source row): one vertical blend per pixel.
template <int kWidth, typename scalar_t, typename T>
__device__ __forceinline__ void write_band(const T* blended, int first_row, const ResizeGeometry& geo, T scale_h,
                                           const MinMax<T>& normalization, int y_begin, int y_end, scalar_t* out_map) {
  auto* dst = reinterpret_cast<OutputPack<kWidth, scalar_t>*>(out_map + static_cast<int64_t>(y_begin) * geo.out_w);
  const int packs = (y_end - y_begin) * geo.out_w / kWidth;
  for (int pack = threadIdx.x; pack < packs; pack += kThreads) {
    const int local_y = pack * kWidth / geo.out_w;
    const int x0 = pack * kWidth - local_y * geo.out_w;
    const AxisSample<T> row = axis_sample(scale_h, y_begin + local_y, geo.in_h);
    const T* top = blended + (row.first - first_row) * geo.out_w + x0;
    const T* bottom = blended + (row.second - first_row) * geo.out_w + x0;
    OutputPack<kWidth, scalar_t> values;
#pragma unroll
    for (int v = 0; v < kWidth; ++v) {
      const T u = kernels::blend(top[v], bottom[v], row.weight);
      values.values[v] = static_cast<scalar_t>(normalization(u));
    }
    dst[pack] = values;
  }
}

// The same values as write_kernel, a band of output rows per block: the rows of the source map that
// the band samples are first blended horizontally for every output column into shared memory (the
// top and bottom values of resized_value, for each source row once), so each output pixel costs one
// vertical blend. Bitwise what write_kernel writes.
template <int kWidth, typename scalar_t, typename T>
__global__ void __launch_bounds__(kThreads)
    write_rows_kernel(const scalar_t* __restrict__ cam, const T* __restrict__ extrema, scalar_t* __restrict__ out,
                      ResizeGeometry geo, T scale_h, T scale_w, bool relu, bool normalize, int bands, int band_rows) {
  extern __shared__ unsigned char shared_bytes[];
  T* blended = reinterpret_cast<T*>(shared_bytes); // [source rows of the band, out_w]
  const int64_t n = blockIdx.x / bands;
  const int y_begin = (blockIdx.x % bands) * band_rows;
  const int y_end = min(geo.out_h, y_begin + band_rows);
  const MinMax<T> normalization = min_max_of_bands(extrema, n, normalize); // its loads overlap the table's
  const int first_row = axis_sample(scale_h, y_begin, geo.in_h).first;
  const int last_row = axis_sample(scale_h, y_end - 1, geo.in_h).second; // sampling is monotonic
  const scalar_t* map = cam + n * geo.in_h * geo.in_w;
  const auto sample = [&](int r, int c) {
    const T v = static_cast<T>(map[r * geo.in_w + c]);
    return relu ? relu_keep_nan(v) : v;
  };
  for (int i = threadIdx.x; i < (last_row - first_row + 1) * geo.out_w; i += kThreads) {
    const int r = i / geo.out_w;
    const AxisSample<T> column = axis_sample(scale_w, i - r * geo.out_w, geo.in_w);
    blended[i] =
        kernels::blend(sample(first_row + r, column.first), sample(first_row + r, column.second), column.weight);
  }
  __syncthreads();
  write_band<kWidth>(blended, first_row, geo, scale_h, normalization, y_begin, y_end, out + n * geo.out_h * geo.out_w);
}

// Source maps of at most kSmallMapSide x kSmallMapSide (7x7, 14x14 layers) in one launch: each block
// copies its map to shared memory, finds the map's min and max on the extreme rows x extreme
// columns itself (at most 2 * kSmallMapSide of each: a few hundred bilinear values, about one per
// thread), then blends and writes its band of rows as write_rows_kernel does. Bitwise the same values.
constexpr int kSmallMapSide = 32;

// Appends to `list` (counter `count`, both in shared memory) the extreme positions along one axis.
// Their order does not matter: only the min and max over them are taken.
template <typename T>
__device__ __forceinline__ void list_extreme_positions(T scale, int out_size, int in_size, int* list, int* count) {
  for (int i = threadIdx.x; i < out_size; i += kThreads) {
    if (is_extreme_position(scale, i, out_size, in_size)) {
      list[atomicAdd(count, 1)] = i;
    }
  }
}

template <int kWidth, typename scalar_t, typename T>
__global__ void __launch_bounds__(kThreads)
    write_small_map_kernel(const scalar_t* __restrict__ cam, scalar_t* __restrict__ out, ResizeGeometry geo, T scale_h,
                           T scale_w, bool relu, bool normalize, int bands, int band_rows) {
  constexpr int kMaxExtremes = 2 * kSmallMapSide;
  __shared__ T map[kSmallMapSide * kSmallMapSide];
  __shared__ int extreme_rows[kMaxExtremes], extreme_columns[kMaxExtremes];
  __shared__ int counts[2];
  __shared__ T reduce_scratch[2 * (kThreads / cuda::kWarpSize)];
  extern __shared__ unsigned char shared_bytes[];
  T* blended = reinterpret_cast<T*>(shared_bytes); // [source rows of the band, out_w]
  const int64_t n = blockIdx.x / bands;
  const int y_begin = (blockIdx.x % bands) * band_rows;
  const int y_end = min(geo.out_h, y_begin + band_rows);
  const scalar_t* source = cam + n * geo.in_h * geo.in_w;
  for (int i = threadIdx.x; i < geo.in_h * geo.in_w; i += kThreads) {
    const T v = static_cast<T>(source[i]);
    map[i] = relu ? relu_keep_nan(v) : v;
  }
  if (threadIdx.x < 2) {
    counts[threadIdx.x] = 0;
  }
  __syncthreads();
  MinMax<T> normalization(T(0), T(0), false);
  if (normalize) {
    list_extreme_positions(scale_h, geo.out_h, geo.in_h, extreme_rows, &counts[0]);
    list_extreme_positions(scale_w, geo.out_w, geo.in_w, extreme_columns, &counts[1]);
    __syncthreads();
    T lo = std::numeric_limits<T>::infinity();
    T hi = -std::numeric_limits<T>::infinity();
    for (int i = threadIdx.x; i < counts[0] * counts[1]; i += kThreads) {
      const int y = extreme_rows[i / counts[1]], x = extreme_columns[i % counts[1]];
      const AxisSample<T> row = axis_sample(scale_h, y, geo.in_h), column = axis_sample(scale_w, x, geo.in_w);
      const auto lerp = [](T a, T b, T w) { return kernels::blend(a, b, w); };
      const T top =
          lerp(map[row.first * geo.in_w + column.first], map[row.first * geo.in_w + column.second], column.weight);
      const T bottom =
          lerp(map[row.second * geo.in_w + column.first], map[row.second * geo.in_w + column.second], column.weight);
      const T u = lerp(top, bottom, row.weight);
      lo = cuda::min_keep_nan(lo, u);
      hi = cuda::max_keep_nan(hi, u);
    }
    cuda::block_min_max(lo, hi, reduce_scratch);
    // the extremes were listed in no fixed order: +0 for a tie of +0 and -0, whatever the order
    normalization = MinMax<T>(lo + T(0), hi + T(0), true);
  }
  const int first_row = axis_sample(scale_h, y_begin, geo.in_h).first;
  const int last_row = axis_sample(scale_h, y_end - 1, geo.in_h).second;
  for (int i = threadIdx.x; i < (last_row - first_row + 1) * geo.out_w; i += kThreads) {
    const int r = i / geo.out_w;
    const AxisSample<T> column = axis_sample(scale_w, i - r * geo.out_w, geo.in_w);
    const T* source_row = map + (first_row + r) * geo.in_w;
    blended[i] = kernels::blend(source_row[column.first], source_row[column.second], column.weight);
  }
  __syncthreads();
  write_band<kWidth>(blended, first_row, geo, scale_h, normalization, y_begin, y_end, out + n * geo.out_h * geo.out_w);
}

// Output pixels per block of the band kernels, and the bytes of source rows their tables hold at most.
constexpr int64_t kMinBandPixels = 2048;
constexpr int64_t kMaxBandPixels = 8192;
constexpr int64_t kMaxTableBytes = 32 * 1024;

at::Tensor cam_postprocess_cuda(const at::Tensor& cam, int64_t out_h, int64_t out_w, bool relu, bool normalize) {
  check_cam_postprocess_args(cam, out_h, out_w);
  const c10::cuda::CUDAGuard guard(cam.device());
  const at::Tensor input = cam.contiguous();
  const int64_t batch = input.size(0);
  at::Tensor out = at::empty({batch, out_h, out_w}, input.options());
  if (batch == 0) {
    return out;
  }
  TORCH_CHECK_VALUE(out_h * out_w <= std::numeric_limits<int>::max() &&
                        input.size(1) * input.size(2) <= std::numeric_limits<int>::max(),
                    "cam_postprocess: one map may have at most 2^31 - 1 pixels, got ", input.size(1), "x",
                    input.size(2), " -> ", out_h, "x", out_w);
  const ResizeGeometry geo{static_cast<int>(input.size(1)), static_cast<int>(input.size(2)), static_cast<int>(out_h),
                           static_cast<int>(out_w)};
  // 4-wide stores need every map to start on a pack boundary: rows a multiple of 4 long
  const bool packed = out_w % 4 == 0;
  const int width = packed ? 4 : 1;
  const int tiles = static_cast<int>(ceil_div(out_h * out_w / width, kTilePacks));
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "cam_postprocess_cuda", [&] {
    using T = at::opmath_type<scalar_t>;
    const T scale_h = static_cast<T>(geo.in_h) / static_cast<T>(out_h);
    const T scale_w = static_cast<T>(geo.in_w) / static_cast<T>(out_w);
    // Bands of rows with their source rows blended once in shared memory, where the table fits
    // (any upsampling); otherwise every pixel blends its four samples. Bands of 2048 to 8192 pixels:
    // the largest that still give the device about two blocks per SM (each block first computes its
    // map's extremes or its table, so fewer, longer blocks are better).
    const int64_t sm_count = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
    const int64_t band_pixels =
        std::clamp<int64_t>(batch * out_h * out_w / (2 * sm_count), kMinBandPixels, kMaxBandPixels);
    const int band_rows = static_cast<int>(std::max<int64_t>(1, band_pixels / geo.out_w));
    const int64_t table_rows = std::min<int64_t>(
        geo.in_h, static_cast<int64_t>(std::ceil((band_rows - 1) * static_cast<double>(scale_h))) + 3);
    const int64_t table_bytes = table_rows * geo.out_w * static_cast<int64_t>(sizeof(T));
    const bool by_rows = table_bytes <= kMaxTableBytes;
    const int bands = static_cast<int>(ceil_div(geo.out_h, band_rows));
    if (by_rows && geo.in_h <= kSmallMapSide && geo.in_w <= kSmallMapSide) {
      const auto kernel = packed ? write_small_map_kernel<4, scalar_t, T> : write_small_map_kernel<1, scalar_t, T>;
      kernel<<<batch * bands, kThreads, table_bytes, stream>>>(input.const_data_ptr<scalar_t>(),
                                                               out.mutable_data_ptr<scalar_t>(), geo, scale_h, scale_w,
                                                               relu, normalize, bands, band_rows);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      return;
    }
    at::Tensor extrema;
    if (normalize) {
      extrema = at::empty({batch, kExtremaGroups, 2}, input.options().dtype(c10::CppTypeToScalarType<T>::value));
      map_extrema_kernel<scalar_t, T><<<batch * kExtremaGroups, kThreads, 0, stream>>>(
          input.const_data_ptr<scalar_t>(), extrema.mutable_data_ptr<T>(), geo, scale_h, scale_w, relu);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    const T* extrema_data = normalize ? extrema.const_data_ptr<T>() : nullptr;
    if (by_rows) {
      if (packed) {
        write_rows_kernel<4, scalar_t, T><<<batch * bands, kThreads, table_bytes, stream>>>(
            input.const_data_ptr<scalar_t>(), extrema_data, out.mutable_data_ptr<scalar_t>(), geo, scale_h, scale_w,
            relu, normalize, bands, band_rows);
      } else {
        write_rows_kernel<1, scalar_t, T><<<batch * bands, kThreads, table_bytes, stream>>>(
            input.const_data_ptr<scalar_t>(), extrema_data, out.mutable_data_ptr<scalar_t>(), geo, scale_h, scale_w,
            relu, normalize, bands, band_rows);
      }
    } else if (packed) {
      write_kernel<4, scalar_t, T><<<batch * tiles, kThreads, 0, stream>>>(
          input.const_data_ptr<scalar_t>(), extrema_data, out.mutable_data_ptr<scalar_t>(), geo, scale_h, scale_w, relu,
          normalize, tiles);
    } else {
      write_kernel<1, scalar_t, T><<<batch * tiles, kThreads, 0, stream>>>(
          input.const_data_ptr<scalar_t>(), extrema_data, out.mutable_data_ptr<scalar_t>(), geo, scale_h, scale_w, relu,
          normalize, tiles);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

} // namespace

TORCH_LIBRARY_IMPL(torchcam_ops, CUDA, m) {
  m.impl("cam_postprocess", &cam_postprocess_cuda);
}

} // namespace torchcam_ops
