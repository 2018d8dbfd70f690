#pragma once

#include "../kernels/tsgb_conv2d.h"

#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>

namespace torchcam_ops {

// Validates tsgb_conv2d_backward's arguments and returns the geometry of the convolution.
kernels::Conv2dGeometry check_tsgb_conv2d_backward_args(const at::Tensor& grad_output, const at::Tensor& input,
                                                         const at::Tensor& output, at::IntArrayRef kernel_size,
                                                         at::IntArrayRef stride, at::IntArrayRef padding,
                                                         at::IntArrayRef dilation, int64_t groups);

} // namespace torchcam_ops
