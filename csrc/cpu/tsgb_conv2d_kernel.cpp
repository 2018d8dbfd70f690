// CPU kernel of tsgb_conv2d_backward: parallel over (image, group), each with its own workspace.

#include "../kernels/tsgb_conv2d.h"
#include "../ops/tsgb.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <vector>

namespace torchcam_ops {

namespace {

at::Tensor tsgb_conv2d_backward_cpu(const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& output,
                                    at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef padding,
                                    at::IntArrayRef dilation, int64_t groups) {
  const kernels::Conv2dGeometry geo =
      check_tsgb_conv2d_backward_args(grad_output, input, output, kernel_size, stride, padding, dilation, groups);
  const at::Tensor x = input.contiguous();
  const at::Tensor z = output.contiguous();
  const at::Tensor g = grad_output.contiguous();
  at::Tensor grad_input = at::empty_like(x, at::MemoryFormat::Contiguous);
  const int64_t batch = x.size(0);
  const int64_t in_channels = x.size(1) / groups, out_channels = z.size(1) / groups;
  const int64_t in_group = in_channels * geo.in_h * geo.in_w;
  const int64_t out_group = out_channels * geo.out_h * geo.out_w;
  if (x.numel() == 0) {
    return grad_input;
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "tsgb_conv2d_backward_cpu", [&] {
    using T = kernels::opmath_t<scalar_t>;
    const scalar_t* x_data = x.const_data_ptr<scalar_t>();
    const scalar_t* z_data = z.const_data_ptr<scalar_t>();
    const scalar_t* g_data = g.const_data_ptr<scalar_t>();
    scalar_t* out = grad_input.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, batch * groups, 1, [&](int64_t begin, int64_t end) {
      std::vector<T> workspace(kernels::tsgb_conv2d_backward_workspace_size(geo));
      std::vector<double> table(kernels::tsgb_conv2d_backward_table_size(geo));
      for (int64_t task = begin; task < end; ++task) { // task = image * groups + group
        kernels::tsgb_conv2d_backward_group(x_data + task * in_group, z_data + task * out_group,
                                            g_data + task * out_group, out + task * in_group, in_channels, out_channels,
                                            geo, workspace.data(), table.data());
      }
    });
  });
  return grad_input;
}

} // namespace

TORCH_LIBRARY_IMPL(torchcam_ops, CPU, m) {
  m.impl("tsgb_conv2d_backward", &tsgb_conv2d_backward_cpu);
}

} // namespace torchcam_ops
