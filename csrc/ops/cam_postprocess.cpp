// cam_postprocess: ReLU, bilinear resize (half-pixel centres) and per-map min-max, fused.
// Schema and argument checks; kernels in cpu/ and cuda/.

#include "cam_postprocess.h"
#include "checks.h"

#include <torch/library.h>

namespace torchcam_ops {

void check_cam_postprocess_args(const at::Tensor& cam, int64_t out_h, int64_t out_w) {
  const char* op = "cam_postprocess";
  check_dim(op, "cam", cam, 3, "[N, h, w]");
  check_floating(op, "cam", cam);
  TORCH_CHECK_VALUE(cam.size(1) >= 1 && cam.size(2) >= 1, op, ": cam maps must be at least 1x1, got shape ",
                    cam.sizes());
  TORCH_CHECK_VALUE(out_h >= 1 && out_w >= 1, op, ": out_h and out_w must be >= 1, got ", out_h, " and ", out_w);
}

void check_cam_postprocess_backward_args(const at::Tensor& grad_out, const at::Tensor& cam, int64_t out_h,
                                         int64_t out_w) {
  const char* op = "cam_postprocess_backward";
  check_cam_postprocess_args(cam, out_h, out_w);
  check_dim(op, "grad_out", grad_out, 3, "[N, out_h, out_w]");
  TORCH_CHECK_VALUE(grad_out.size(0) == cam.size(0) && grad_out.size(1) == out_h && grad_out.size(2) == out_w, op,
                    ": grad_out must have shape [", cam.size(0), ", ", out_h, ", ", out_w, "], got ",
                    grad_out.sizes());
  check_same_dtype_device(op, "grad_out", grad_out, "cam", cam);
}

TORCH_LIBRARY_FRAGMENT(torchcam_ops, m) {
  m.set_python_module("torchcam_ops.ops");
  m.def("cam_postprocess(Tensor cam, SymInt out_h, SymInt out_w, bool relu=True, bool normalize=True) -> Tensor",
        {at::Tag::pt2_compliant_tag});
  m.def(
      "cam_postprocess_backward(Tensor grad_out, Tensor cam, SymInt out_h, SymInt out_w, bool relu, bool normalize)"
      " -> Tensor",
      {at::Tag::pt2_compliant_tag});
}

} // namespace torchcam_ops
