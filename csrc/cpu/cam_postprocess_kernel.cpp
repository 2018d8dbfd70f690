// CPU kernels of cam_postprocess and its backward: parallel over the maps of the batch.

#include "../kernels/cam_postprocess.h"
#include "../ops/cam_postprocess.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <vector>

namespace torchcam_ops {

namespace {

at::Tensor cam_postprocess_cpu(const at::Tensor& cam, int64_t out_h, int64_t out_w, bool relu, bool normalize) {
  check_cam_postprocess_args(cam, out_h, out_w);
  const at::Tensor input = cam.contiguous();
  const int64_t batch = input.size(0), in_h = input.size(1), in_w = input.size(2);
  at::Tensor out = at::empty({batch, out_h, out_w}, input.options());
  if (batch == 0) {
    return out;
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "cam_postprocess_cpu", [&] {
    using T = kernels::opmath_t<scalar_t>;
    const kernels::ResizePlanStorage<T> storage(in_h, in_w, out_h, out_w);
    const auto& plan = storage.plan();
    const scalar_t* in_data = input.const_data_ptr<scalar_t>();
    scalar_t* out_data = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
      std::vector<T> workspace(kernels::cam_postprocess_forward_workspace_size(in_h, out_w));
      for (int64_t n = begin; n < end; ++n) {
        kernels::cam_postprocess_forward(in_data + n * in_h * in_w, out_data + n * out_h * out_w, plan, relu, normalize,
                                         workspace.data());
      }
    });
  });
  return out;
}

at::Tensor cam_postprocess_backward_cpu(const at::Tensor& grad_out, const at::Tensor& cam, int64_t out_h, int64_t out_w,
                                        bool relu, bool normalize) {
  check_cam_postprocess_backward_args(grad_out, cam, out_h, out_w);
  const at::Tensor input = cam.contiguous();
  const at::Tensor go = grad_out.contiguous();
  const int64_t batch = input.size(0), in_h = input.size(1), in_w = input.size(2);
  at::Tensor grad_cam = at::empty_like(input, at::MemoryFormat::Contiguous);
  if (batch == 0) {
    return grad_cam;
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "cam_postprocess_backward_cpu", [&] {
    using T = kernels::opmath_t<scalar_t>;
    const kernels::ResizePlanStorage<T> storage(in_h, in_w, out_h, out_w);
    const auto& plan = storage.plan();
    const scalar_t* in_data = input.const_data_ptr<scalar_t>();
    const scalar_t* go_data = go.const_data_ptr<scalar_t>();
    scalar_t* grad_data = grad_cam.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
      std::vector<T> workspace(kernels::cam_postprocess_backward_workspace_size(in_h, in_w, out_w));
      for (int64_t n = begin; n < end; ++n) {
        kernels::cam_postprocess_backward(go_data + n * out_h * out_w, in_data + n * in_h * in_w,
                                          grad_data + n * in_h * in_w, plan, relu, normalize, workspace.data());
      }
    });
  });
  return grad_cam;
}

} // namespace

TORCH_LIBRARY_IMPL(torchcam_ops, CPU, m) {
  m.impl("cam_postprocess", &cam_postprocess_cpu);
  m.impl("cam_postprocess_backward", &cam_postprocess_backward_cpu);
}

} // namespace torchcam_ops
