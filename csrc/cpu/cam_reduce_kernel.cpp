// CPU kernels of cam_reduce and cam_reduce_backward: parallel over the batch, one image per task,
// each with its own workspace, so results do not depend on the number of threads.

#include "../kernels/cam_reduce.h"
#include "../ops/cam_reduce.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <tuple>
#include <vector>

namespace torchcam_ops {

namespace {

// Channels-last inputs are reduced in place; anything else is made channels-first contiguous.
bool prefers_channels_last(const at::Tensor& t) {
  return !t.is_contiguous() && t.is_contiguous(at::MemoryFormat::ChannelsLast);
}

at::Tensor cam_reduce_cpu(const at::Tensor& activations, const at::Tensor& gradients, c10::string_view method_name) {
  const CamMethod method = check_cam_reduce_args(activations, gradients, method_name);
  const bool channels_last = prefers_channels_last(activations);
  const auto format = channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  const at::Tensor a = activations.contiguous(format);
  const at::Tensor g = gradients.contiguous(format);
  const int64_t batch = a.size(0), channels = a.size(1), pixels = a.size(2) * a.size(3);
  at::Tensor cam = at::empty({batch, a.size(2), a.size(3)}, a.options().memory_format(at::MemoryFormat::Contiguous));
  if (cam.numel() == 0) {
    return cam;
  }

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "cam_reduce_cpu", [&] {
    using T = kernels::opmath_t<scalar_t>;
    const scalar_t* a_data = a.const_data_ptr<scalar_t>();
    const scalar_t* g_data = g.const_data_ptr<scalar_t>();
    scalar_t* cam_data = cam.mutable_data_ptr<scalar_t>();
    const int64_t workspace_size = kernels::cam_reduce_forward_workspace_size(channels, pixels, channels_last);
    at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
      std::vector<T> workspace(workspace_size);
      for (int64_t n = begin; n < end; ++n) {
        const int64_t offset = n * channels * pixels;
        if (channels_last) {
          kernels::cam_reduce_forward_channels_last(a_data + offset, g_data + offset, cam_data + n * pixels, channels,
                                                    pixels, method, workspace.data());
        } else {
          // The images after this one follow it in memory: a row's last vector may run into them.
          const int64_t readable_after = (batch - n - 1) * channels * pixels;
          kernels::cam_reduce_forward_channels_first(a_data + offset, g_data + offset, cam_data + n * pixels, channels,
                                                     pixels, method, workspace.data(), readable_after);
        }
      }
    });
  });
  return cam;
}

std::tuple<at::Tensor, at::Tensor> cam_reduce_backward_cpu(const at::Tensor& grad_cam, const at::Tensor& activations,
                                                           const at::Tensor& gradients, c10::string_view method_name) {
  const CamMethod method = check_cam_reduce_backward_args(grad_cam, activations, gradients, method_name);
  const at::Tensor gl = grad_cam.contiguous();
  const at::Tensor a = activations.contiguous();
  const at::Tensor g = gradients.contiguous();
  at::Tensor grad_a = at::empty_like(a, at::MemoryFormat::Contiguous);
  at::Tensor grad_g = at::empty_like(g, at::MemoryFormat::Contiguous);
  const int64_t batch = a.size(0), channels = a.size(1), pixels = a.size(2) * a.size(3);
  if (a.numel() == 0) {
    return {grad_a, grad_g};
  }

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "cam_reduce_backward_cpu", [&] {
    using T = kernels::opmath_t<scalar_t>;
    const scalar_t* gl_data = gl.const_data_ptr<scalar_t>();
    const scalar_t* a_data = a.const_data_ptr<scalar_t>();
    const scalar_t* g_data = g.const_data_ptr<scalar_t>();
    scalar_t* grad_a_data = grad_a.mutable_data_ptr<scalar_t>();
    scalar_t* grad_g_data = grad_g.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
      std::vector<T> workspace(kernels::cam_reduce_backward_workspace_size(pixels));
      for (int64_t n = begin; n < end; ++n) {
        const int64_t offset = n * channels * pixels;
        kernels::cam_reduce_backward_channels_first(gl_data + n * pixels, a_data + offset, g_data + offset,
                                                    grad_a_data + offset, grad_g_data + offset, channels, pixels,
                                                    method, workspace.data());
      }
    });
  });
  return {grad_a, grad_g};
}

} // namespace

TORCH_LIBRARY_IMPL(torchcam_ops, CPU, m) {
  m.impl("cam_reduce", &cam_reduce_cpu);
  m.impl("cam_reduce_backward", &cam_reduce_backward_cpu);
}

} // namespace torchcam_ops
