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

// Validates tsgb_pass_through_backward's arguments: floating input; output and grad_output of its
// shape, dtype and device.
void check_tsgb_pass_through_backward_args(const at::Tensor& grad_output, const at::Tensor& input,
                                           const at::Tensor& output);

// Per-channel (scale, shift) of inference batch norm, Y = scale * X + shift, in opmath precision.
std::pair<at::Tensor, at::Tensor> batch_norm_affine(const at::Tensor& input, const std::optional<at::Tensor>& weight,
                                                    const std::optional<at::Tensor>& bias,
                                                    const at::Tensor& running_mean, const at::Tensor& running_var,
                                                    double eps);

// The relevance of batch-norm units whose input is exactly 0 (Y = shift, no input to pass it to: a
// depthwise convolution over a window of a ReLU's zeros computes 0) shared over the channels of the same
// image position in proportion to |X| (as TSGB-Conv shares a position's relevance over its inputs), added
// to grad_input (in place; any device, ATen ops on the current stream). A position where every channel
// is 0 has nothing to share with.
void add_stranded_shift_relevance(at::Tensor& grad_input, const at::Tensor& grad_output, const at::Tensor& input,
                                  const at::Tensor& shift);

} // namespace torchcam_ops
