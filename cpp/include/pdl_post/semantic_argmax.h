// Per-pixel semantic math on logits: argmax (first maximum wins, NaN never wins) and the softmax
// probability of one class (for instance scores). Shared by the CPU and CUDA paths.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "pdl_post/common.h"

namespace pdl_post {

// Index of the largest of `channels` logits read at `stride` apart; NaN never wins (all NaN -> 0).
template <typename T>
PDL_HOST_DEVICE int32_t argmax_channel(const T* logits, int64_t stride, int64_t channels) {
  int32_t best = 0;
  T best_value = logits[0];
  bool have = !std::isnan(best_value);
  for (int64_t c = 1; c < channels; ++c) {
    const T v = logits[c * stride];
    if (!have) {
      if (!std::isnan(v)) {
        best = static_cast<int32_t>(c);
        best_value = v;
        have = true;
      }
    } else if (v > best_value) {
      best = static_cast<int32_t>(c);
      best_value = v;
    }
  }
  return best;
}

// 2^exponent for exponent in [-1022, 1023], exactly.
PDL_HOST_DEVICE double power_of_two(int64_t exponent) {
  const uint64_t bits = static_cast<uint64_t>(exponent + 1023) << 52;
  double value;
  memcpy(&value, &bits, sizeof(value));
  return value;
}

// exp(x) for x <= 0 (and NaN), from + - * and exact power-of-two scaling only, so that the CPU
// and the GPU (both compiled without FMA contraction) round it identically; libm's and CUDA's
// exp() may differ in the last bit. Cody-Waite reduction x = k ln2 + r, |r| <= ln2 / 2, then the
// degree-13 Taylor polynomial of exp(r) (truncation < 5e-18 relative), scaled by 2^k; below
// 2^-1022 in two steps so that the one rounding to a subnormal happens last.
PDL_HOST_DEVICE double exp_nonpositive(double x) {
  if (!(x > -746.0)) return x != x ? x : 0.0;  // NaN stays NaN; -inf and underflow give 0
  // k = round(x / ln 2): adding and subtracting 1.5 * 2^52 rounds to an integer (to nearest).
  const double shifted = x * 1.4426950408889634 + 6755399441055744.0;
  const double k = shifted - 6755399441055744.0;
  // ln 2 = kLn2Hi + kLn2Lo, kLn2Hi with 32 significant bits: k * kLn2Hi is exact.
  const double r = (x - k * 6.93147180369123816490e-01) - k * 1.90821492927058770002e-10;
  // exp(r) = 1 + (r + r^2 q(r)): q by Estrin's scheme (short dependency chains: exp runs ~20
  // times per pixel), the 1 added last so that its rounding is the only large one.
  const double r2 = r * r, r4 = r2 * r2;
  const double high = (1.0 / 720.0 + r * (1.0 / 5040.0)) +
                      r2 * (1.0 / 40320.0 + r * (1.0 / 362880.0)) +
                      r4 * ((1.0 / 3628800.0 + r * (1.0 / 39916800.0)) +
                            r2 * (1.0 / 479001600.0 + r * (1.0 / 6227020800.0)));
  const double q = (0.5 + r * (1.0 / 6.0)) + r2 * (1.0 / 24.0 + r * (1.0 / 120.0)) + r4 * high;
  const double p = 1.0 + (r + r2 * q);
  const int64_t e = static_cast<int64_t>(k);  // in [-1077, 0]
  if (e >= -1021) return p * power_of_two(e);
  return (p * power_of_two(e + 600)) * power_of_two(-600);
}

// softmax(logits)[target] in double: exp(l_t - m) / sum_c exp(l_c - m), m = max_c l_c.
template <typename T>
PDL_HOST_DEVICE double softmax_probability(const T* logits, int64_t stride, int64_t channels,
                                           int64_t target) {
  double m = static_cast<double>(logits[0]);
  for (int64_t c = 1; c < channels; ++c) m = std::fmax(m, static_cast<double>(logits[c * stride]));
  double total = 0.0, mine = 0.0;
  for (int64_t c = 0; c < channels; ++c) {
    const double e = exp_nonpositive(static_cast<double>(logits[c * stride]) - m);
    total += e;
    if (c == target) mine = e;
  }
  return mine / total;
}

// Labels [B, 1, H, W] int32 from logits [B, C, H, W] float32/float64.
void argmax_logits_cpu(const StridedView& logits, const StridedView& labels, int num_threads);

}  // namespace pdl_post
