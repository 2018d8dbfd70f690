#pragma once

#include <ATen/core/Tensor.h>

namespace torchcam_ops {

void check_cam_postprocess_args(const at::Tensor& cam, int64_t out_h, int64_t out_w);

void check_cam_postprocess_backward_args(const at::Tensor& grad_out, const at::Tensor& cam, int64_t out_h,
                                         int64_t out_w);

} // namespace torchcam_ops

namespace torchcam_ops {

// cam_postprocess_backward written with ATen ops, for any device; the CUDA backend uses it.
at::Tensor cam_postprocess_backward_composite(const at::Tensor& grad_out, const at::Tensor& cam, int64_t out_h,
                                              int64_t out_w, bool relu, bool normalize);

} // namespace torchcam_ops
