#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string_view>

namespace torchcam_ops {

// The channel-weighting rules of cam_reduce. See docs/design.md for the formulas.
enum class CamMethod : int8_t {
  GradCAM,
  AbsCAM,
  XGradCAM,
  GradCAMPlusPlus,
  LayerCAM,
  HiResCAM,
  GradCAMElementwise,
};

struct CamMethodName {
  std::string_view name;
  CamMethod method;
};

inline constexpr std::array<CamMethodName, 7> kCamMethods{{
    {"gradcam", CamMethod::GradCAM},
    {"abscam", CamMethod::AbsCAM},
    {"xgradcam", CamMethod::XGradCAM},
    {"gradcam++", CamMethod::GradCAMPlusPlus},
    {"layercam", CamMethod::LayerCAM},
    {"hirescam", CamMethod::HiResCAM},
    {"gradcam_elementwise", CamMethod::GradCAMElementwise},
}};

inline std::optional<CamMethod> cam_method_from_name(std::string_view name) {
  for (const auto& entry : kCamMethods) {
    if (entry.name == name) {
      return entry.method;
    }
  }
  return std::nullopt;
}

// Methods whose map is sum_k w_k A_k with one scalar weight per channel; the others
// combine A and G pixel by pixel.
constexpr bool uses_channel_weights(CamMethod method) {
  return method == CamMethod::GradCAM || method == CamMethod::AbsCAM || method == CamMethod::XGradCAM ||
         method == CamMethod::GradCAMPlusPlus;
}

// Stabilisers of the published formulas (docs/design.md).
inline constexpr double kXGradCAMEps = 1e-7;
inline constexpr double kGradCAMPlusPlusEps = 1e-6;

} // namespace torchcam_ops
