#pragma once

#include <ATen/core/Tensor.h>

namespace torchcam_ops {

void check_cam_postprocess_args(const at::Tensor& cam, int64_t out_h, int64_t out_w);

void check_cam_postprocess_backward_args(const at::Tensor& grad_out, const at::Tensor& cam, int64_t out_h,
                                         int64_t out_w);

} // namespace torchcam_ops
