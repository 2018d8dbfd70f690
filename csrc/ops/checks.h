#pragma once

// Argument checks shared by the op entry points. Messages name the op, the argument and what
// was expected; value problems raise ValueError in Python, dtype problems TypeError.

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <string>

namespace torchcam_ops {

// A dtype as Python spells it (torch.float32), so that messages read like the fake kernels'.
inline std::string python_dtype(at::ScalarType dtype) {
  switch (dtype) {
    case at::kFloat:
      return "torch.float32";
    case at::kDouble:
      return "torch.float64";
    case at::kHalf:
      return "torch.float16";
    case at::kBFloat16:
      return "torch.bfloat16";
    case at::kInt:
      return "torch.int32";
    case at::kLong:
      return "torch.int64";
    case at::kShort:
      return "torch.int16";
    case at::kChar:
      return "torch.int8";
    case at::kByte:
      return "torch.uint8";
    case at::kBool:
      return "torch.bool";
    case at::kUInt16:
      return "torch.uint16";
    case at::kUInt32:
      return "torch.uint32";
    case at::kUInt64:
      return "torch.uint64";
    case at::kComplexHalf:
      return "torch.complex32";
    case at::kComplexFloat:
      return "torch.complex64";
    case at::kComplexDouble:
      return "torch.complex128";
    case at::kFloat8_e4m3fn:
      return "torch.float8_e4m3fn";
    case at::kFloat8_e5m2:
      return "torch.float8_e5m2";
    default:
      return std::string("torch.") + c10::toString(dtype);
  }
}

inline void check_floating(const char* op, const char* name, const at::Tensor& t) {
  const auto dtype = t.scalar_type();
  TORCH_CHECK_TYPE(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kHalf || dtype == at::kBFloat16, op,
                   ": ", name, " must be float32, float64, float16 or bfloat16, got ", python_dtype(dtype));
}

inline void check_dim(const char* op, const char* name, const at::Tensor& t, int64_t dim, const char* layout) {
  TORCH_CHECK_VALUE(t.dim() == dim, op, ": ", name, " must be a ", dim, "-D ", layout, " tensor, got shape ",
                    t.sizes());
}

inline void check_same_shape(const char* op, const char* name, const at::Tensor& t, const char* other_name,
                             const at::Tensor& other) {
  TORCH_CHECK_VALUE(t.sizes() == other.sizes(), op, ": ", name, " must have the shape of ", other_name, " ",
                    other.sizes(), ", got ", t.sizes());
}

inline void check_same_device(const char* op, const char* name, const at::Tensor& t, const char* other_name,
                              const at::Tensor& other) {
  TORCH_CHECK_VALUE(t.device() == other.device(), op, ": ", name, " must be on the device of ", other_name, " (",
                    other.device(), "), got ", t.device());
}

inline void check_same_dtype_device(const char* op, const char* name, const at::Tensor& t, const char* other_name,
                                    const at::Tensor& other) {
  TORCH_CHECK_TYPE(t.scalar_type() == other.scalar_type(), op, ": ", name, " must have the dtype of ", other_name, " (",
                   python_dtype(other.scalar_type()), "), got ", python_dtype(t.scalar_type()));
  check_same_device(op, name, t, other_name, other);
}

} // namespace torchcam_ops
