// Per-pixel semantic math on logits: argmax (first maximum wins, NaN never wins) and the softmax
// probability of one class (for instance scores). Shared by the CPU and CUDA paths.
#pragma once

#include <cmath>
#include <cstdint>

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

// softmax(logits)[target] in double: exp(l_t - m) / sum_c exp(l_c - m), m = max_c l_c.
template <typename T>
PDL_HOST_DEVICE double softmax_probability(const T* logits, int64_t stride, int64_t channels,
                                           int64_t target) {
  double m = static_cast<double>(logits[0]);
  for (int64_t c = 1; c < channels; ++c) m = std::fmax(m, static_cast<double>(logits[c * stride]));
  double total = 0.0;
  for (int64_t c = 0; c < channels; ++c)
    total += std::exp(static_cast<double>(logits[c * stride]) - m);
  return std::exp(static_cast<double>(logits[target * stride]) - m) / total;
}

// Labels [B, 1, H, W] int32 from logits [B, C, H, W] float32/float64.
void argmax_logits_cpu(const StridedView& logits, const StridedView& labels, int num_threads);

}  // namespace pdl_post
