#pragma once

#include "../kernels/cam_method.h"

#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>

namespace torchcam_ops {

// Validates cam_reduce's arguments and returns the parsed method.
CamMethod check_cam_reduce_args(const at::Tensor& activations, const at::Tensor& gradients, c10::string_view method);

// Validates cam_reduce_backward's arguments and returns the parsed method.
CamMethod check_cam_reduce_backward_args(const at::Tensor& grad_cam, const at::Tensor& activations,
                                         const at::Tensor& gradients, c10::string_view method);

} // namespace torchcam_ops
