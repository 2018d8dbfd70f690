// CUDA kernel of nmf_sweep: a thread per row, in the op math type; the violation is the sum of the
// rows' on the device (no host synchronisation).

#include "../kernels/nmf_sweep.h"
#include "../ops/nmf_sweep.h"
#include "cuda_utils.cuh"

#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <tuple>

namespace torchcam_ops {

namespace {

constexpr int kThreads = 128;

template <typename T>
__global__ void nmf_sweep_kernel(T* __restrict__ factor, const T* __restrict__ gram, const T* __restrict__ products,
                                 T* __restrict__ row_violation, int64_t rows, int64_t components) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < rows;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    row_violation[i] = kernels::nmf_sweep_row(factor + i * components, gram, products + i * components, components);
  }
}

std::tuple<at::Tensor, at::Tensor> nmf_sweep_cuda(const at::Tensor& factor, const at::Tensor& gram,
                                                  const at::Tensor& products) {
  check_nmf_sweep_args(factor, gram, products);
  const c10::cuda::CUDAGuard guard(factor.device());
  const NmfSweepOperands operands = nmf_sweep_operands(factor, gram, products);
  const at::Tensor& updated = operands.factor;
  const at::Tensor& gram_c = operands.gram;
  const at::Tensor& products_c = operands.products;
  const int64_t rows = updated.size(0);
  const int64_t components = updated.size(1);
  at::Tensor row_violations = at::zeros({rows}, updated.options());
  if (rows > 0) {
    const int64_t blocks = cuda::grid_stride_blocks(rows, kThreads);
    AT_DISPATCH_FLOATING_TYPES(updated.scalar_type(), "nmf_sweep_cuda", [&] {
      nmf_sweep_kernel<scalar_t><<<blocks, kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
          updated.mutable_data_ptr<scalar_t>(), gram_c.const_data_ptr<scalar_t>(),
          products_c.const_data_ptr<scalar_t>(), row_violations.mutable_data_ptr<scalar_t>(), rows, components);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return {updated.to(factor.scalar_type()), row_violations.sum()};
}

} // namespace

TORCH_LIBRARY_IMPL(torchcam_ops, CUDA, m) {
  m.impl("nmf_sweep", &nmf_sweep_cuda);
}

} // namespace torchcam_ops
