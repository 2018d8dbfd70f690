// GoogleTest for the raw-pointer kernels in csrc/kernels, against hand-computed values.

#include "../../csrc/kernels/cam_postprocess.h"
#include "../../csrc/kernels/cam_reduce.h"
#include "../../csrc/kernels/nmf_sweep.h"
#include "../../csrc/kernels/tsgb_conv2d.h"

#include <gtest/gtest.h>

#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

namespace tk = torchcam_ops::kernels;
using torchcam_ops::CamMethod;

namespace {

// One image, K = 2 channels of 2x2 pixels (channels-first):
//   A_0 = [1 2; 3 4]   A_1 = [0 1; 1 0]
//   G_0 = [1 -1; 2 0]  G_1 = [0.5 0.5; -0.5 0.5]
const std::vector<double> kA = {1, 2, 3, 4, 0, 1, 1, 0};
const std::vector<double> kG = {1, -1, 2, 0, 0.5, 0.5, -0.5, 0.5};

template <typename T>
std::vector<T> reduce_channels_first(const std::vector<T>& a, const std::vector<T>& g, int64_t k, int64_t p,
                                     CamMethod method) {
  std::vector<T> cam(p);
  std::vector<tk::opmath_t<T>> workspace(tk::cam_reduce_forward_workspace_size(k, p, false));
  tk::cam_reduce_forward_channels_first(a.data(), g.data(), cam.data(), k, p, method, workspace.data());
  return cam;
}

template <typename T>
std::vector<T> to_channels_last(const std::vector<T>& x, int64_t k, int64_t p) {
  std::vector<T> out(x.size());
  for (int64_t c = 0; c < k; ++c)
    for (int64_t i = 0; i < p; ++i) out[i * k + c] = x[c * p + i];
  return out;
}

void expect_near(const std::vector<double>& actual, const std::vector<double>& expected, double tol = 1e-12) {
  ASSERT_EQ(actual.size(), expected.size());
  for (size_t i = 0; i < actual.size(); ++i) EXPECT_NEAR(actual[i], expected[i], tol) << "at " << i;
}

} // namespace

TEST(CamReduce, GradCAMByHand) {
  // w = (mean G_0, mean G_1) = (0.5, 0.25)
  expect_near(reduce_channels_first(kA, kG, 2, 4, CamMethod::GradCAM), {0.5, 1.25, 1.75, 2.0});
}

TEST(CamReduce, AbsCAMByHand) {
  // w = (mean |G_0|, mean |G_1|) = (1.0, 0.5)
  expect_near(reduce_channels_first(kA, kG, 2, 4, CamMethod::AbsCAM), {1.0, 2.5, 3.5, 4.0});
}

TEST(CamReduce, XGradCAMByHand) {
  // w_0 = (1 - 2 + 6 + 0) / (10 + 1e-7), w_1 = (0 + 0.5 - 0.5 + 0) / (2 + 1e-7) = 0
  const double w0 = 5.0 / (10.0 + 1e-7);
  expect_near(reduce_channels_first(kA, kG, 2, 4, CamMethod::XGradCAM), {w0, 2 * w0, 3 * w0, 4 * w0});
}

TEST(CamReduce, GradCAMPlusPlusByHand) {
  // channel 0: S = 10, G > 0 at G = 1 (a = 1 / (2 + 10 + 1e-6)) and G = 2 (a = 4 / (8 + 80 + 1e-6))
  const double w0 = 1.0 / (12.0 + 1e-6) * 1.0 + 4.0 / (88.0 + 1e-6) * 2.0;
  // channel 1: S = 2, three pixels with G = 0.5: a = 0.25 / (0.5 + 0.25 + 1e-6)
  const double w1 = 3 * 0.25 / (0.75 + 1e-6) * 0.5;
  expect_near(reduce_channels_first(kA, kG, 2, 4, CamMethod::GradCAMPlusPlus),
              {w0 * 1, w0 * 2 + w1, w0 * 3 + w1, w0 * 4});
}

TEST(CamReduce, ElementwiseMethodsByHand) {
  expect_near(reduce_channels_first(kA, kG, 2, 4, CamMethod::LayerCAM), {1.0, 0.5, 6.0, 0.0});
  expect_near(reduce_channels_first(kA, kG, 2, 4, CamMethod::HiResCAM), {1.0, -1.5, 5.5, 0.0});
  expect_near(reduce_channels_first(kA, kG, 2, 4, CamMethod::GradCAMElementwise), {1.0, 0.5, 6.0, 0.0});
}

TEST(CamReduce, ChannelsLastEqualsChannelsFirst) {
  // 37 channels x 23 pixels: neither a multiple of the vector width.
  const int64_t k = 37, p = 23;
  std::vector<double> a(k * p), g(k * p);
  for (int64_t i = 0; i < k * p; ++i) {
    a[i] = std::fmod(i * 0.37, 1.3);
    g[i] = std::sin(i * 0.11);
  }
  for (const auto& entry : torchcam_ops::kCamMethods) {
    const auto expected = reduce_channels_first(a, g, k, p, entry.method);
    std::vector<double> cam(p);
    std::vector<double> workspace(tk::cam_reduce_forward_workspace_size(k, p, true));
    tk::cam_reduce_forward_channels_last(to_channels_last(a, k, p).data(), to_channels_last(g, k, p).data(), cam.data(),
                                         k, p, entry.method, workspace.data());
    expect_near(cam, expected, 1e-10);
  }
}

TEST(CamReduce, HalfAccumulatesInFloat) {
  // 4096 channels of 1 pixel, each A = 1, G = 1: the sum 4096 is not representable by
  // sequential half additions past 2048, but is exact with float accumulation.
  const int64_t k = 4096;
  std::vector<c10::Half> a(k, c10::Half(1.0f)), g(k, c10::Half(1.0f));
  const auto cam = reduce_channels_first(a, g, k, 1, CamMethod::HiResCAM);
  EXPECT_EQ(static_cast<float>(cam[0]), 4096.0f);
}

TEST(CamReduceBackward, GradCAMByHand) {
  // L = sum_k w_k A_k with w_k = mean G_k. For grad_cam = 1: dA_k = w_k, dG_k = sum(A_k) / 4.
  std::vector<double> grad_cam(4, 1.0), grad_a(8), grad_g(8);
  std::vector<double> workspace(tk::cam_reduce_backward_workspace_size(4));
  tk::cam_reduce_backward_channels_first(grad_cam.data(), kA.data(), kG.data(), grad_a.data(), grad_g.data(), 2, 4,
                                         CamMethod::GradCAM, workspace.data());
  expect_near(grad_a, {0.5, 0.5, 0.5, 0.5, 0.25, 0.25, 0.25, 0.25});
  expect_near(grad_g, {2.5, 2.5, 2.5, 2.5, 0.5, 0.5, 0.5, 0.5});
}

// The formulas of cam_formulas.h run as vectors on the CPU and as scalars on CUDA: both
// instantiations must give the same values, lane by lane, also at 0, +-inf, NaN and the overflow
// edges (+0 and -0 count as the same value: ReLU's vector maximum and its scalar select differ there).
template <typename T>
void expect_vector_equals_scalar(const char* formula, T (*scalar)(T, T),
                                 at::vec::Vectorized<T> (*vector)(at::vec::Vectorized<T>, at::vec::Vectorized<T>)) {
  using Vec = at::vec::Vectorized<T>;
  const T inf = std::numeric_limits<T>::infinity(), nan = std::numeric_limits<T>::quiet_NaN();
  const std::vector<T> values = {0,       -T(0),    1,        -1,  T(0.5), T(-2.5), T(1e-20), T(-1e-20),
                                 T(1e19), T(-1e13), T(3e-19), inf, -inf,   nan,     T(7),     T(-0.125)};
  for (const T second : values) {
    for (size_t start = 0; start < values.size(); start += Vec::size()) {
      const auto count = static_cast<int>(std::min<size_t>(Vec::size(), values.size() - start));
      T lanes[Vec::size()];
      vector(Vec::loadu(values.data() + start, count), Vec(second)).store(lanes);
      for (int i = 0; i < count; ++i) {
        const T expected = scalar(values[start + i], second);
        const bool same = (std::isnan(expected) && std::isnan(lanes[i])) || expected == lanes[i];
        EXPECT_TRUE(same) << formula << "(" << values[start + i] << ", " << second << "): vector " << lanes[i]
                          << ", scalar " << expected;
      }
    }
  }
}

template <typename T>
void expect_every_formula_vector_equals_scalar() {
  using Vec = at::vec::Vectorized<T>;
  expect_vector_equals_scalar<T>(
      "gradcam_pp_term", [](T g, T s) { return tk::gradcam_pp_term(g, s); },
      [](Vec g, Vec s) { return tk::gradcam_pp_term(g, s); });
  expect_vector_equals_scalar<T>(
      "gradcam_pp_term_dsum", [](T g, T s) { return tk::gradcam_pp_term_dsum(g, s); },
      [](Vec g, Vec s) { return tk::gradcam_pp_term_dsum(g, s); });
  expect_vector_equals_scalar<T>(
      "gradcam_pp_grad_gradient", [](T g, T s) { return tk::gradcam_pp_grad_gradient(g, s, T(-1.5)); },
      [](Vec g, Vec s) { return tk::gradcam_pp_grad_gradient(g, s, Vec(T(-1.5))); });
  // Grad-CAM++'s dG selects: 0 where G <= 0 whatever the upstream c is, as autograd's ReLU does
  const T nan = std::numeric_limits<T>::quiet_NaN(), inf = std::numeric_limits<T>::infinity();
  for (const T c : {nan, inf, -inf}) {
    EXPECT_EQ(tk::gradcam_pp_grad_gradient(T(0), T(2), c), T(0));
    EXPECT_EQ(tk::gradcam_pp_grad_gradient(T(-1), T(2), c), T(0));
    EXPECT_FALSE(std::isfinite(tk::gradcam_pp_grad_gradient(T(1), T(2), c)));
  }
  expect_vector_equals_scalar<T>(
      "sign", [](T g, T) { return tk::sign(g); }, [](Vec g, Vec) { return tk::sign(g); });
  expect_vector_equals_scalar<T>(
      "xgradcam_grad_activation", [](T g, T w) { return tk::xgradcam_grad_activation(T(0.75), g, w, T(2), T(3)); },
      [](Vec g, Vec w) { return tk::xgradcam_grad_activation(Vec(T(0.75)), g, w, Vec(T(2)), Vec(T(3))); });
  for (const CamMethod method : {CamMethod::LayerCAM, CamMethod::HiResCAM, CamMethod::GradCAMElementwise}) {
    // a function pointer cannot capture the method: one lambda per method through a static
    static CamMethod current;
    current = method;
    expect_vector_equals_scalar<T>(
        "elementwise_term", [](T a, T g) { return tk::elementwise_term(current, a, g); },
        [](Vec a, Vec g) { return tk::elementwise_term(current, a, g); });
    expect_vector_equals_scalar<T>(
        "elementwise_grad_activation", [](T a, T g) { return tk::elementwise_grad_activation(current, T(1.5), a, g); },
        [](Vec a, Vec g) { return tk::elementwise_grad_activation(current, Vec(T(1.5)), a, g); });
    expect_vector_equals_scalar<T>(
        "elementwise_grad_gradient", [](T a, T g) { return tk::elementwise_grad_gradient(current, T(1.5), a, g); },
        [](Vec a, Vec g) { return tk::elementwise_grad_gradient(current, Vec(T(1.5)), a, g); });
  }
}

TEST(CamFormulas, VectorEqualsScalarFloat) {
  expect_every_formula_vector_equals_scalar<float>();
}

TEST(CamFormulas, VectorEqualsScalarDouble) {
  expect_every_formula_vector_equals_scalar<double>();
}

TEST(BilinearTaps, HalfPixelCentres) {
  // 2 -> 4: source positions -0.25 (clamped to 0), 0.25, 0.75, 1.25 (last index stays 1).
  std::vector<tk::BilinearTap<double>> taps(4);
  tk::compute_bilinear_taps<double>(2, 4, taps.data());
  EXPECT_EQ(taps[0].index0, 0);
  EXPECT_DOUBLE_EQ(taps[0].weight1, 0.0);
  EXPECT_EQ(taps[1].index0, 0);
  EXPECT_EQ(taps[1].index1, 1);
  EXPECT_DOUBLE_EQ(taps[1].weight1, 0.25);
  EXPECT_DOUBLE_EQ(taps[2].weight1, 0.75);
  EXPECT_EQ(taps[3].index0, 1);
  EXPECT_EQ(taps[3].index1, 1);
}

namespace {

std::vector<double> postprocess(const std::vector<double>& cam, int64_t in_h, int64_t in_w, int64_t out_h,
                                int64_t out_w, bool relu, bool normalize) {
  const tk::ResizePlanStorage<double> storage(in_h, in_w, out_h, out_w);
  std::vector<double> out(out_h * out_w);
  std::vector<double> workspace(tk::cam_postprocess_forward_workspace_size(in_h, out_w));
  tk::cam_postprocess_forward(cam.data(), out.data(), storage.plan(), relu, normalize, workspace.data());
  return out;
}

} // namespace

TEST(CamPostprocess, ReluResizeNormalizeByHand) {
  // [-1, 3] -> ReLU [0, 3] -> 1x4: [0, 0.75, 2.25, 3] -> / 3
  const double range = 3.0;
  expect_near(postprocess({-1.0, 3.0}, 1, 2, 1, 4, true, true), {0.0, 0.75 / range, 2.25 / range, 3.0 / range});
  expect_near(postprocess({-1.0, 3.0}, 1, 2, 1, 4, false, false), {-1.0, 0.0, 2.0, 3.0});
}

TEST(CamPostprocess, ExtremePositionsAreCellEnds) {
  // 2 -> 8: source positions -0.375 (clamped), -0.125 (clamped), 0.125, 0.375, 0.625, 0.875 in
  // cell 0, then 1.125, 1.375 in cell 1 (both taps on source 1).
  std::vector<tk::BilinearTap<double>> taps(8);
  tk::compute_bilinear_taps<double>(2, 8, taps.data());
  std::vector<int64_t> positions(4);
  ASSERT_EQ(tk::collect_extreme_positions(taps.data(), 8, positions.data()), 4);
  EXPECT_EQ(positions, (std::vector<int64_t>{0, 5, 6, 7}));
}

TEST(CamPostprocess, MinMaxFromExtremePositionsEqualsFullScan) {
  const int64_t in_h = 6, in_w = 5, out_h = 37, out_w = 23;
  std::vector<double> cam(in_h * in_w);
  for (size_t i = 0; i < cam.size(); ++i) cam[i] = std::sin(1.7 * i) * std::cos(0.3 * i);
  const auto unnormalized = postprocess(cam, in_h, in_w, out_h, out_w, false, false);
  const auto [lo, hi] = std::minmax_element(unnormalized.begin(), unnormalized.end());
  const auto normalized = postprocess(cam, in_h, in_w, out_h, out_w, false, true);
  for (size_t i = 0; i < normalized.size(); ++i) {
    EXPECT_NEAR(normalized[i], (unnormalized[i] - *lo) / (*hi - *lo), 1e-12);
  }
}

TEST(CamPostprocess, NormalizationIsScaleFree) {
  // The same map at 1e-12 and at 1e12 normalises alike; within 8 ulps of its magnitude a map is constant.
  EXPECT_EQ(tk::normalization_range(2e-12, 5e-12), 5e-12 - 2e-12);
  EXPECT_EQ(tk::normalization_range(2e12, 5e12), 3e12);
  EXPECT_EQ(tk::normalization_range(1.0, 1.0 + 4 * std::numeric_limits<double>::epsilon()), 0.0);
  EXPECT_EQ(tk::normalization_range(1.0f, 1.0f + 4 * std::numeric_limits<float>::epsilon()), 0.0f);
  EXPECT_EQ(tk::normalization_range(0.0, 0.0), 0.0);
  EXPECT_TRUE(std::isnan(tk::normalization_range(0.0, std::nan(""))));
  std::vector<double> small(5 * 3), large(5 * 3);
  for (size_t i = 0; i < small.size(); ++i) {
    small[i] = 1e-12 * (1.5 + std::sin(0.9 * i));
    large[i] = 1e12 * (1.5 + std::sin(0.9 * i));
  }
  const auto a = postprocess(small, 5, 3, 11, 7, true, true), b = postprocess(large, 5, 3, 11, 7, true, true);
  EXPECT_DOUBLE_EQ(*std::max_element(a.begin(), a.end()), 1.0);
  for (size_t i = 0; i < a.size(); ++i) EXPECT_NEAR(a[i], b[i], 1e-12);
}

TEST(CamPostprocess, ConstantMapIsExactlyZero) {
  const std::vector<double> cam(5 * 3, 0.1234567);
  for (double v : postprocess(cam, 5, 3, 17, 29, true, true)) EXPECT_EQ(v, 0.0);
}

TEST(CamPostprocessBackward, IsTheAdjointOfTheResize) {
  // Without ReLU and normalisation the op is linear: <Up(x), y> == <x, Up^T(y)>.
  const int64_t in_h = 3, in_w = 5, out_h = 8, out_w = 7;
  std::vector<double> x(in_h * in_w), y(out_h * out_w), grad_x(in_h * in_w);
  for (size_t i = 0; i < x.size(); ++i) x[i] = std::cos(0.7 * i);
  for (size_t i = 0; i < y.size(); ++i) y[i] = std::sin(0.3 * i);
  const tk::ResizePlanStorage<double> storage(in_h, in_w, out_h, out_w);
  std::vector<double> workspace(tk::cam_postprocess_backward_workspace_size(in_h, in_w, out_w));
  tk::cam_postprocess_backward(y.data(), x.data(), grad_x.data(), storage.plan(), false, false, workspace.data());
  const auto up = postprocess(x, in_h, in_w, out_h, out_w, false, false);
  const double lhs = std::inner_product(up.begin(), up.end(), y.begin(), 0.0);
  const double rhs = std::inner_product(x.begin(), x.end(), grad_x.begin(), 0.0);
  EXPECT_NEAR(lhs, rhs, 1e-12);
}

namespace {

std::vector<double> tsgb_conv_grad(const std::vector<double>& x, const std::vector<double>& z,
                                   const std::vector<double>& g, int64_t in_channels, int64_t out_channels,
                                   const tk::Conv2dGeometry& geo) {
  std::vector<double> grad(x.size());
  std::vector<double> workspace(tk::tsgb_conv2d_backward_workspace_size(geo));
  std::vector<double> table(tk::tsgb_conv2d_backward_table_size(geo));
  tk::tsgb_conv2d_backward_group(x.data(), z.data(), g.data(), grad.data(), in_channels, out_channels, geo,
                                 workspace.data(), table.data());
  return grad;
}

} // namespace

TEST(TSGBConv2d, OneByOneKernelByHand) {
  // 1x1 kernel, one input and one output channel, 1x2 input [2, -1], output Z = [4, 6], G = [1, 1].
  // S = |X| per position = [2, 1]; V = R / (S + 1e-10) = [4 / 2, 6 / 1] (up to the 1e-10); U = V;
  // grad_X = sign(X) * U = [2, -6], and sum X * grad_X = 4 + 6 = sum G * Z.
  const tk::Conv2dGeometry geo{1, 2, 1, 2, 1, 1, 1, 1, 0, 0, 1, 1};
  const auto grad = tsgb_conv_grad({2.0, -1.0}, {4.0, 6.0}, {1.0, 1.0}, 1, 1, geo);
  expect_near(grad, {4.0 / (2.0 + 1e-10), -6.0 / (1.0 + 1e-10)});
}

TEST(TSGBConv2d, TwoByTwoWindowsByHand) {
  // 1 channel, 2x3 input, 2x2 kernel, stride 1: two output positions whose windows overlap in
  // the middle column. X = [1 2 3; 4 5 6], R = G * Z = [10, 20].
  // S = [1 + 2 + 4 + 5, 2 + 3 + 5 + 6] = [12, 16]; V = [10 / 12, 20 / 16];
  // U = [V0, V0 + V1, V1] on both rows; grad_X = U (all X positive).
  const tk::Conv2dGeometry geo{2, 3, 1, 2, 2, 2, 1, 1, 0, 0, 1, 1};
  const auto grad = tsgb_conv_grad({1, 2, 3, 4, 5, 6}, {10.0, 20.0}, {1.0, 1.0}, 1, 1, geo);
  const double v0 = 10.0 / (12.0 + 1e-10), v1 = 20.0 / (16.0 + 1e-10);
  expect_near(grad, {v0, v0 + v1, v1, v0, v0 + v1, v1});
}

TEST(TSGBConv2d, DilatedWindowSkipsTheMiddle) {
  // 1x3 input [1, 5, 3], 1x2 kernel with dilation 2: one output whose window is {0, 2}.
  // S = 1 + 3 = 4, R = 8, V = 2: the outer inputs collect 2, the middle one nothing.
  const tk::Conv2dGeometry geo{1, 3, 1, 1, 1, 2, 1, 1, 0, 0, 1, 2};
  expect_near(tsgb_conv_grad({1.0, 5.0, 3.0}, {8.0}, {1.0}, 1, 1, geo),
              {8.0 / (4.0 + 1e-10), 0.0, 8.0 / (4.0 + 1e-10)});
}

// ---------------------------------------------------------------------------------------------
// Tiny and odd sizes. Every buffer below is exactly as large as the kernel's contract says, so a
// vector load that runs past one is caught by AddressSanitizer (tests/cpp/build_and_run.py
// --sanitize) instead of passing on the allocator's slack.

#include "../../csrc/kernels/rectified_relu.h"
#include "../../csrc/kernels/tsgb_batch_norm.h"
#include "../../csrc/kernels/tsgb_pass_through.h"

#include <c10/util/BFloat16.h>

namespace {

// Sizes around the vector widths (4 doubles, 8 floats, 16 halves per AVX2 register).
const std::vector<int64_t> kOddSizes = {1, 2, 3, 5, 7, 8, 9, 15, 17};

// cam_reduce of one channels-first image, in double, straight from the formulas.
std::vector<double> reference_cam(const std::vector<double>& a, const std::vector<double>& g, int64_t k, int64_t p,
                                  CamMethod method) {
  std::vector<double> cam(p, 0.0);
  for (int64_t c = 0; c < k; ++c) {
    const double* ac = a.data() + c * p;
    const double* gc = g.data() + c * p;
    double sum_a = 0, sum_g = 0, sum_abs_g = 0, sum_ag = 0, sum_pp = 0;
    for (int64_t i = 0; i < p; ++i) {
      sum_a += ac[i];
      sum_g += gc[i];
      sum_abs_g += std::abs(gc[i]);
      sum_ag += ac[i] * gc[i];
    }
    for (int64_t i = 0; i < p; ++i) {
      const double g2 = gc[i] * gc[i];
      sum_pp += std::max(gc[i], 0.0) * g2 / (2 * g2 + sum_a * g2 * gc[i] + torchcam_ops::kGradCAMPlusPlusEps);
    }
    for (int64_t i = 0; i < p; ++i) {
      switch (method) {
        case CamMethod::GradCAM:
          cam[i] += sum_g / p * ac[i];
          break;
        case CamMethod::AbsCAM:
          cam[i] += sum_abs_g / p * ac[i];
          break;
        case CamMethod::XGradCAM:
          cam[i] += sum_ag / (sum_a + torchcam_ops::kXGradCAMEps) * ac[i];
          break;
        case CamMethod::GradCAMPlusPlus:
          cam[i] += sum_pp * ac[i];
          break;
        case CamMethod::LayerCAM:
          cam[i] += std::max(gc[i], 0.0) * ac[i];
          break;
        case CamMethod::HiResCAM:
          cam[i] += gc[i] * ac[i];
          break;
        case CamMethod::GradCAMElementwise:
          cam[i] += std::max(gc[i] * ac[i], 0.0);
          break;
      }
    }
  }
  return cam;
}

std::vector<double> pattern(int64_t n, double scale, double phase) {
  std::vector<double> v(n);
  for (int64_t i = 0; i < n; ++i) v[i] = std::sin(scale * i + phase);
  return v;
}

template <typename T>
std::vector<T> cast(const std::vector<double>& v) {
  std::vector<T> out(v.size());
  std::transform(v.begin(), v.end(), out.begin(), [](double x) { return static_cast<T>(x); });
  return out;
}

template <typename T>
std::vector<double> widen(const std::vector<T>& v) {
  std::vector<double> out(v.size());
  std::transform(v.begin(), v.end(), out.begin(), [](T x) { return static_cast<double>(x); });
  return out;
}

// Forward of a whole batch the way the CPU op calls the kernel: each image may read into the
// images after it, never past the batch.
template <typename T>
void check_cam_reduce_batch(int64_t batch, int64_t k, int64_t p, double tol) {
  // Non-negative activations, as after a ReLU: XGrad-CAM and Grad-CAM++ divide by sums of A.
  auto a64 = pattern(batch * k * p, 0.7, 0.1);
  for (double& v : a64) v = 0.6 + 0.5 * v;
  const auto g64 = pattern(batch * k * p, 1.3, 0.4);
  const auto a = cast<T>(a64), g = cast<T>(g64);
  for (const auto& entry : torchcam_ops::kCamMethods) {
    std::vector<T> cam(batch * p), cam_last(batch * p);
    std::vector<tk::opmath_t<T>> workspace(tk::cam_reduce_forward_workspace_size(k, p, false));
    std::vector<tk::opmath_t<T>> workspace_last(tk::cam_reduce_forward_workspace_size(k, p, true));
    for (int64_t n = 0; n < batch; ++n) {
      const int64_t offset = n * k * p;
      tk::cam_reduce_forward_channels_first(a.data() + offset, g.data() + offset, cam.data() + n * p, k, p,
                                            entry.method, workspace.data(), (batch - n - 1) * k * p);
      const std::vector<T> a_image(a.begin() + offset, a.begin() + offset + k * p);
      const std::vector<T> g_image(g.begin() + offset, g.begin() + offset + k * p);
      tk::cam_reduce_forward_channels_last(to_channels_last(a_image, k, p).data(),
                                           to_channels_last(g_image, k, p).data(), cam_last.data() + n * p, k, p,
                                           entry.method, workspace_last.data());
      const auto expected = reference_cam(widen(a_image), widen(g_image), k, p, entry.method);
      for (int64_t i = 0; i < p; ++i) {
        const double scale = 1.0 + std::abs(expected[i]);
        EXPECT_NEAR(static_cast<double>(cam[n * p + i]), expected[i], tol * scale)
            << entry.name << " channels-first k=" << k << " p=" << p << " n=" << n << " i=" << i;
        EXPECT_NEAR(static_cast<double>(cam_last[n * p + i]), expected[i], tol * scale)
            << entry.name << " channels-last k=" << k << " p=" << p << " n=" << n << " i=" << i;
      }
    }
  }
}

template <typename T>
void check_cam_reduce_backward(int64_t k, int64_t p, double tol) {
  const auto a = cast<T>(pattern(k * p, 0.9, 0.2)), g = cast<T>(pattern(k * p, 0.5, 1.0));
  const auto grad_cam = cast<T>(pattern(p, 0.3, 0.7));
  for (const auto& entry : torchcam_ops::kCamMethods) {
    std::vector<T> grad_a(k * p), grad_g(k * p);
    std::vector<tk::opmath_t<T>> workspace(tk::cam_reduce_backward_workspace_size(p));
    tk::cam_reduce_backward_channels_first(grad_cam.data(), a.data(), g.data(), grad_a.data(), grad_g.data(), k, p,
                                           entry.method, workspace.data());
    // cam is linear in A for every method but elementwise Grad-CAM: <grad_cam, cam(A)> = <grad_A, A>
    // for the channel-weighted methods without a sum over A in the weight.
    if (entry.method == CamMethod::GradCAM || entry.method == CamMethod::AbsCAM ||
        entry.method == CamMethod::LayerCAM || entry.method == CamMethod::HiResCAM) {
      const auto cam = reference_cam(widen(a), widen(g), k, p, entry.method);
      double lhs = 0, rhs = 0, magnitude = 0;
      for (int64_t i = 0; i < p; ++i) lhs += static_cast<double>(grad_cam[i]) * cam[i];
      for (int64_t i = 0; i < k * p; ++i) {
        const double term = static_cast<double>(grad_a[i]) * static_cast<double>(a[i]);
        rhs += term;
        magnitude += std::abs(term);
      }
      EXPECT_NEAR(lhs, rhs, tol * (1 + magnitude)) << entry.name << " k=" << k << " p=" << p;
    }
    for (int64_t i = 0; i < k * p; ++i) {
      EXPECT_TRUE(std::isfinite(static_cast<double>(grad_a[i])) && std::isfinite(static_cast<double>(grad_g[i])))
          << entry.name << " k=" << k << " p=" << p << " i=" << i;
    }
  }
}

} // namespace

TEST(TinySizes, CamReduceForwardEveryMethodAndDtype) {
  for (int64_t k : {1, 2, 3, 5}) {
    for (int64_t p : kOddSizes) {
      for (int64_t batch : {1, 2}) {
        check_cam_reduce_batch<double>(batch, k, p, 1e-12);
        check_cam_reduce_batch<float>(batch, k, p, 1e-5);
        // Half inputs: the reference sees the same rounded inputs, the kernel accumulates in float.
        check_cam_reduce_batch<c10::Half>(batch, k, p, 2e-3);
        check_cam_reduce_batch<c10::BFloat16>(batch, k, p, 2e-2);
      }
    }
  }
}

TEST(TinySizes, CamReduceBackwardEveryMethodAndDtype) {
  for (int64_t k : {1, 2, 5}) {
    for (int64_t p : kOddSizes) {
      // grad_A is rounded to the input dtype, so the tolerance follows its precision.
      check_cam_reduce_backward<double>(k, p, 1e-12);
      check_cam_reduce_backward<float>(k, p, 1e-6);
      check_cam_reduce_backward<c10::Half>(k, p, 2e-3);
      check_cam_reduce_backward<c10::BFloat16>(k, p, 1e-2);
    }
  }
}

namespace {

template <typename T>
void check_postprocess(int64_t in_h, int64_t in_w, int64_t out_h, int64_t out_w) {
  const auto cam = cast<T>(pattern(in_h * in_w, 1.9, 0.3));
  const tk::ResizePlanStorage<tk::opmath_t<T>> storage(in_h, in_w, out_h, out_w);
  for (bool normalize : {false, true}) {
    std::vector<T> out(out_h * out_w);
    std::vector<tk::opmath_t<T>> workspace(tk::cam_postprocess_forward_workspace_size(in_h, out_w));
    tk::cam_postprocess_forward(cam.data(), out.data(), storage.plan(), true, normalize, workspace.data());
    // Every output is a convex blend of ReLU'd inputs (then affinely mapped into [0, 1]).
    const auto relu_cam = widen(cam);
    const double hi = std::max(0.0, *std::max_element(relu_cam.begin(), relu_cam.end()));
    for (const T v : out) {
      const double value = static_cast<double>(v);
      EXPECT_GE(value, 0.0);
      EXPECT_LE(value, normalize ? 1.0 : hi * (1 + 1e-6) + 1e-12);
    }
    std::vector<T> grad_cam(in_h * in_w);
    const auto grad_out = cast<T>(pattern(out_h * out_w, 0.4, 0.9));
    std::vector<tk::opmath_t<T>> backward_workspace(tk::cam_postprocess_backward_workspace_size(in_h, in_w, out_w));
    tk::cam_postprocess_backward(grad_out.data(), cam.data(), grad_cam.data(), storage.plan(), true, normalize,
                                 backward_workspace.data());
    for (const T v : grad_cam) EXPECT_TRUE(std::isfinite(static_cast<double>(v)));
  }
}

} // namespace

TEST(TinySizes, CamPostprocessForwardAndBackward) {
  const std::vector<std::pair<int64_t, int64_t>> shapes = {{1, 1}, {1, 2}, {2, 1}, {1, 3}, {3, 5}, {7, 2}, {9, 17}};
  for (const auto& [in_h, in_w] : shapes) {
    for (const auto& [out_h, out_w] : shapes) {
      check_postprocess<double>(in_h, in_w, out_h, out_w);
      check_postprocess<float>(in_h, in_w, out_h, out_w);
      check_postprocess<c10::Half>(in_h, in_w, out_h, out_w);
      check_postprocess<c10::BFloat16>(in_h, in_w, out_h, out_w);
    }
  }
}

TEST(TinySizes, TSGBConv2dConservesRelevance) {
  // 1 and odd spatial sizes, kernels 1 and 3, padding, stride 2 and dilation: sum X * grad_X = sum G * Z
  // whenever every window has some input (no all-zero windows here).
  struct Case {
    int64_t h, w, kernel, stride, pad, dilation;
  };
  for (const Case& c : {Case{1, 1, 1, 1, 0, 1}, Case{1, 1, 3, 1, 1, 1}, Case{1, 3, 1, 2, 0, 1}, Case{3, 1, 3, 1, 1, 1},
                        Case{5, 7, 3, 2, 1, 1}, Case{9, 2, 3, 1, 2, 2}, Case{2, 9, 1, 1, 0, 1}}) {
    const int64_t out_h = (c.h + 2 * c.pad - c.dilation * (c.kernel - 1) - 1) / c.stride + 1;
    const int64_t out_w = (c.w + 2 * c.pad - c.dilation * (c.kernel - 1) - 1) / c.stride + 1;
    const tk::Conv2dGeometry geo{c.h,      c.w,      out_h, out_w, c.kernel,   c.kernel,
                                 c.stride, c.stride, c.pad, c.pad, c.dilation, c.dilation};
    const int64_t in_channels = 3, out_channels = 2;
    auto x = pattern(in_channels * c.h * c.w, 0.8, 0.5);
    for (double& v : x) v += 1.5; // no zero inputs, so no window sums to zero
    const auto z = pattern(out_channels * out_h * out_w, 0.6, 0.2);
    const auto g = pattern(out_channels * out_h * out_w, 0.35, 1.1);
    const auto grad = tsgb_conv_grad(x, z, g, in_channels, out_channels, geo);
    double relevance_in = 0, relevance_out = 0;
    for (size_t i = 0; i < x.size(); ++i) relevance_in += x[i] * grad[i];
    for (size_t i = 0; i < z.size(); ++i) relevance_out += g[i] * z[i];
    // Every output window covers at least one real input here, so relevance is conserved.
    EXPECT_NEAR(relevance_in, relevance_out, 1e-8) << "h=" << c.h << " w=" << c.w << " k=" << c.kernel;
  }
}

namespace {

template <typename T>
void check_elementwise_backwards(int64_t n) {
  const auto x64 = pattern(n, 1.1, 0.25), g64 = pattern(n, 0.7, 0.6);
  const auto x = cast<T>(x64), g = cast<T>(g64);
  std::vector<tk::opmath_t<T>> workspace(3 * n);
  for (const auto rule : {torchcam_ops::ReluRectification::Guided, torchcam_ops::ReluRectification::Deconvnet,
                          torchcam_ops::ReluRectification::Plain}) {
    std::vector<T> out(n);
    tk::rectified_relu_backward(g.data(), x.data(), out.data(), n, rule, workspace.data());
    for (int64_t i = 0; i < n; ++i) {
      const double gi = static_cast<double>(g[i]), xi = static_cast<double>(x[i]);
      const double expected = rule == torchcam_ops::ReluRectification::Guided      ? (xi > 0 && gi > 0 ? gi : 0.0)
                              : rule == torchcam_ops::ReluRectification::Deconvnet ? std::max(gi, 0.0)
                                                                                   : (xi > 0 ? gi : 0.0);
      EXPECT_EQ(static_cast<double>(out[i]), expected) << "n=" << n << " i=" << i;
    }
  }
  const double scale = 1.5, shift = -0.25;
  std::vector<T> grad_x(n);
  tk::tsgb_batch_norm_backward_plane(g.data(), x.data(), grad_x.data(), n, static_cast<tk::opmath_t<T>>(scale),
                                     static_cast<tk::opmath_t<T>>(shift), workspace.data());
  for (int64_t i = 0; i < n; ++i) {
    const double xi = static_cast<double>(x[i]), gi = static_cast<double>(g[i]);
    const double expected = xi == 0 ? 0.0 : gi * (scale * xi + shift) / xi;
    EXPECT_NEAR(static_cast<double>(grad_x[i]), expected, 1e-2 * (1 + std::abs(expected))) << "n=" << n << " i=" << i;
  }
  // The pass-through with Y given: buffers of exactly n values, 4 * n of workspace.
  const auto y = cast<T>(pattern(n, 0.9, -0.3));
  std::vector<tk::opmath_t<T>> pass_workspace(4 * n);
  std::vector<T> passed(n);
  tk::tsgb_pass_through_backward_span(g.data(), x.data(), y.data(), passed.data(), n, pass_workspace.data());
  for (int64_t i = 0; i < n; ++i) {
    const double xi = static_cast<double>(x[i]), gi = static_cast<double>(g[i]), yi = static_cast<double>(y[i]);
    const double expected = xi == 0 ? 0.0 : gi * yi / xi;
    EXPECT_NEAR(static_cast<double>(passed[i]), expected, 1e-2 * (1 + std::abs(expected))) << "n=" << n << " i=" << i;
  }
}

} // namespace

TEST(TinySizes, RectifiedReluAndBatchNormBackward) {
  for (int64_t n : kOddSizes) {
    check_elementwise_backwards<double>(n);
    check_elementwise_backwards<float>(n);
    check_elementwise_backwards<c10::Half>(n);
    check_elementwise_backwards<c10::BFloat16>(n);
  }
}

TEST(TSGBPassThrough, ByHand) {
  // X = [2, 0, -4, 0], Y = [3, 5, 1, NaN], G = [1, 2, 2, 1]: G Y / X = [1.5, 0, -0.5, 0] (exactly 0 at X = 0,
  // also where Y is NaN)
  const std::vector<float> x = {2, 0, -4, 0}, y = {3, 5, 1, std::numeric_limits<float>::quiet_NaN()};
  const std::vector<float> g = {1, 2, 2, 1};
  std::vector<float> out(4);
  tk::tsgb_pass_through_backward_span(g.data(), x.data(), y.data(), out.data(), 4, nullptr);
  EXPECT_EQ(out, (std::vector<float>{1.5f, 0.0f, -0.5f, 0.0f}));
}

TEST(NmfSweep, GaussSeidelRowByHand) {
  // row [1, 1], gram [2 1; 1 2], products [4, 1]:
  //   t = 0: g = 2 * 1 + 1 * 1 - 4 = -1, row[0] = 1 + 1/2 = 1.5;
  //   t = 1: g = 1 * 1.5 + 2 * 1 - 1 = 2.5 (sees the new row[0]), row[1] = max(1 - 2.5/2, 0) = 0.
  // violation |-1| + |2.5| = 3.5
  std::vector<double> row = {1, 1};
  const std::vector<double> gram = {2, 1, 1, 2}, products = {4, 1};
  EXPECT_EQ(tk::nmf_sweep_row(row.data(), gram.data(), products.data(), 2), 3.5);
  EXPECT_EQ(row, (std::vector<double>{1.5, 0.0}));
}

TEST(NmfSweep, BoundAndFlatComponents) {
  // t = 0 at the bound with g = 0 * 1 + 3 * 0 + 2 = 2 > 0: stays 0, no violation;
  // t = 1 with no curvature (gram[1][1] = 0) and g = -5: stays 3, violation 5
  std::vector<float> row = {0, 3};
  const std::vector<float> gram = {1, 0, 0, 0}, products = {-2, 5};
  EXPECT_EQ(tk::nmf_sweep_row(row.data(), gram.data(), products.data(), 2), 5.0f);
  EXPECT_EQ(row, (std::vector<float>{0.0f, 3.0f}));
}
