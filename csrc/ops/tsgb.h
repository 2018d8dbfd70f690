#pragma once

#include "../kernels/tsgb_conv2d.h"

#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>

#include <optional>
#include <utility>

namespace torchcam_ops {

// Validates tsgb_conv2d_backward's arguments and returns the geometry of the convolution.
kernels::Conv2dGeometry check_tsgb_conv2d_backward_args(const at::Tensor& grad_output, const at::Tensor& input,
                                                        const at::Tensor& output, at::IntArrayRef kernel_size,
                                                        at::IntArrayRef stride, at::IntArrayRef padding,
                                                        at::IntArrayRef dilation, int64_t groups);

void check_tsgb_batch_norm_backward_args(const at::Tensor& grad_output, const at::Tensor& input,
                                         const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias,
                                         const at::Tensor& running_mean, const at::Tensor& running_var);

// Per-channel (scale, shift) of inference batch norm, Y = scale * X + shift, in opmath precision.
std::pair<at::Tensor, at::Tensor> batch_norm_affine(const at::Tensor& input, const std::optional<at::Tensor>& weight,
                                                    const std::optional<at::Tensor>& bias,
                                                    const at::Tensor& running_mean, const at::Tensor& running_var,
                                                    double eps);

} // namespace torchcam_ops
