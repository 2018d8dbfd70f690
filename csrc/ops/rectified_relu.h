#pragma once

#include "../kernels/rectified_relu.h"

#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>

namespace torchcam_ops {

ReluRectification parse_rectification(const char* op, c10::string_view mode);

ReluRectification check_rectified_relu_backward_args(const at::Tensor& grad_output, const at::Tensor& input,
                                                     c10::string_view mode);

} // namespace torchcam_ops
