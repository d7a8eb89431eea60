// Per-pixel semantic math on logits: argmax (first maximum wins, NaN never wins) and the softmax
// probability of one class (for instance scores). Shared by the CPU and CUDA paths.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "pdl_post/common.h"

namespace pdl_post {

// Argmax over channels, one channel at a time in channel order: the first maximum wins, NaN
// never wins (all NaN -> 0). A step per channel, so that the CPU can run a row of pixels channel
// by channel (each logits plane read in order) and the GPU a pixel per thread, alike.
template <typename T>
struct ArgmaxState {
  T value;
  int32_t best;
  bool have;  // value is not NaN
};

template <typename T>
PDL_HOST_DEVICE ArgmaxState<T> argmax_first(T logit) {
  return ArgmaxState<T>{logit, 0, !std::isnan(logit)};
}

template <typename T>
PDL_HOST_DEVICE void argmax_step(ArgmaxState<T>& state, T logit, int32_t channel) {
  if (state.have ? logit > state.value : !std::isnan(logit)) {
    state.value = logit;
    state.best = channel;
    state.have = true;
  }
}

// Index of the largest of `channels` logits read at `stride` apart.
template <typename T>
PDL_HOST_DEVICE int32_t argmax_channel(const T* logits, int64_t stride, int64_t channels) {
  ArgmaxState<T> state = argmax_first(logits[0]);
  for (int64_t c = 1; c < channels; ++c) {
    argmax_step(state, logits[c * stride], static_cast<int32_t>(c));
  }
  return state.best;
}

// 2^e for an integral e in [-1022, 1023], exactly: e + 1023 + 2^52 holds e + 1023 in its low
// mantissa bits, which the shift moves into the exponent field (other e give some bit pattern:
// exp_nonpositive selects around those). Double and 64-bit integer operations only.
PDL_HOST_DEVICE double power_of_two(double e) {
  const double biased = (e + 1023.0) + 4503599627370496.0;
  uint64_t bits;
  memcpy(&bits, &biased, sizeof(bits));
  bits <<= 52;
  double value;
  memcpy(&value, &bits, sizeof(value));
  return value;
}

// exp(x) for x <= 0 (and NaN), from + - *, exact power-of-two scaling and selects only, so
// that the CPU and the GPU (both compiled without FMA contraction) round it identically (libm's
// and CUDA's exp() differ in the last bit), and so that the compiler vectorises a loop of it (no
// table, no branches). x = k ln2 + r with |r| <= ln2 / 2, then exp(x) = 2^k exp(r), exp(r) from
// its degree-13 Taylor polynomial (truncation < 5e-18 relative) in Estrin's scheme; below
// 2^-1022 the scaling takes two steps so that the one rounding to a subnormal happens last.
// Within 1 ulp of glibc's exp on normal results.
PDL_HOST_DEVICE double exp_nonpositive(double x) {
  const bool in_range = x > -746.0;  // false for NaN, -inf and what underflows to 0
  const double t = in_range ? x : 0.0;
  // k = round(x / ln 2), in [-1076, 0]: adding 1.5 * 2^52 rounds to an integer (to nearest).
  const double k = (t * 1.4426950408889634 + 6755399441055744.0) - 6755399441055744.0;
  // ln 2 = hi + lo, hi with 32 significant bits: k * hi is exact.
  const double r = (t - k * 0.6931471803691238) - k * 1.9082149292705877e-10;
  // exp(r) = 1 + (r + r^2 q(r)), q(r) = sum_{i=2..13} r^(i-2) / i!, the 1 added last so that its
  // rounding is the only large one.
  const double r2 = r * r, r4 = r2 * r2, r8 = r4 * r4;
  const double q01 = (1.0 / 2 + r * (1.0 / 6)) + r2 * (1.0 / 24 + r * (1.0 / 120));
  const double q23 = (1.0 / 720 + r * (1.0 / 5040)) + r2 * (1.0 / 40320 + r * (1.0 / 362880));
  const double q45 =
      (1.0 / 3628800 + r * (1.0 / 39916800)) + r2 * (1.0 / 479001600 + r * (1.0 / 6227020800.0));
  const double q = (q01 + r4 * q23) + r8 * q45;
  const double p = 1.0 + (r + r2 * q);
  const double scaled =
      k >= -1021.0 ? p * power_of_two(k) : (p * power_of_two(k + 600.0)) * power_of_two(-600.0);
  return in_range ? scaled : (x != x ? x : 0.0);  // NaN stays NaN; the rest gives 0
}

// softmax(logits)[target] in double: exp(l_t - m) / sum_c exp(l_c - m), m = max_c l_c, in two
// passes over the channels in channel order (the maximum, then the terms). Steps as for the
// argmax, so that the CPU's channel-by-channel rows and the GPU's pixel per thread perform the
// same operations in the same order (the same bits).

// fmax(maximum, logit) (NaN never wins unless both are NaN) as a select, which vectorises; it
// may keep the other zero's sign, which no later result depends on.
PDL_HOST_DEVICE double softmax_max_step(double maximum, double logit) {
  return (logit > maximum || maximum != maximum) ? logit : maximum;
}

struct SoftmaxTerms {
  double total;  // sum of exp(l_c - m) so far
  double mine;   // the target's term
};

PDL_HOST_DEVICE void softmax_term_step(SoftmaxTerms& terms, double logit, double maximum,
                                       bool is_target) {
  const double e = exp_nonpositive(logit - maximum);
  terms.total += e;
  if (is_target) terms.mine = e;
}

template <typename T>
PDL_HOST_DEVICE double softmax_probability(const T* logits, int64_t stride, int64_t channels,
                                           int64_t target) {
  double m = static_cast<double>(logits[0]);
  for (int64_t c = 1; c < channels; ++c) {
    m = softmax_max_step(m, static_cast<double>(logits[c * stride]));
  }
  SoftmaxTerms terms{0.0, 0.0};
  for (int64_t c = 0; c < channels; ++c) {
    softmax_term_step(terms, static_cast<double>(logits[c * stride]), m, c == target);
  }
  return terms.mine / terms.total;
}

// The CPU runs the steps above over runs of this many pixels of a row, channel by channel: every
// logits plane is then read in order, and each channel's step over the run vectorises (a pixel at
// a time, the argmax of 1024x2048x19 took 1.4x as long here, with no vectors).
constexpr int64_t kLogitRunPixels = 256;

// The CPU's softmax_probability over a run of n pixels of a row: pixel i's logit of channel c at
// run[c * stride_c + i * stride_x], its target class targets[i]; leaves sum_c exp(l_c - m) in
// totals[i] and the target's term in mines[i] (maxima: scratch), the steps above channel by
// channel in channel order, so the same bits as softmax_probability. Vectorised, with an AVX2
// copy used where the processor has it (same operations, same bits).
template <typename TL>
void softmax_run_cpu(const TL* run, int64_t stride_c, int64_t stride_x, int64_t n, int64_t channels,
                     const int64_t* targets, double* maxima, double* totals, double* mines);

// Whether the CPU uses its AVX2 copies where the processor has them (default true); tests turn
// them off to compare. Returns the previous setting.
bool set_cpu_avx2(bool enabled);
// Whether the AVX2 copies run: the processor has AVX2 and they are not turned off.
bool cpu_avx2_in_use();

// Labels [B, 1, H, W] int32 from logits [B, C, H, W] float32/float64.
void argmax_logits_cpu(const StridedView& logits, const StridedView& labels, int num_threads);

}  // namespace pdl_post
