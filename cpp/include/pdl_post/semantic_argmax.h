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

// 2^exponent for exponent in [-1022, 1023], exactly.
PDL_HOST_DEVICE double power_of_two(int64_t exponent) {
  const uint64_t bits = static_cast<uint64_t>(exponent + 1023) << 52;
  double value;
  memcpy(&value, &bits, sizeof(value));
  return value;
}

// 2^(j/32) for j = 0..31, rounded to double: the table of exp_nonpositive(), one copy for host
// code and one in device memory for kernels.
#define PDL_POST_EXP2_FRACTIONS                                                            \
  {0x1.0000000000000p+0, 0x1.059b0d3158574p+0, 0x1.0b5586cf9890fp+0, 0x1.11301d0125b51p+0, \
   0x1.172b83c7d517bp+0, 0x1.1d4873168b9aap+0, 0x1.2387a6e756238p+0, 0x1.29e9df51fdee1p+0, \
   0x1.306fe0a31b715p+0, 0x1.371a7373aa9cbp+0, 0x1.3dea64c123422p+0, 0x1.44e086061892dp+0, \
   0x1.4bfdad5362a27p+0, 0x1.5342b569d4f82p+0, 0x1.5ab07dd485429p+0, 0x1.6247eb03a5585p+0, \
   0x1.6a09e667f3bcdp+0, 0x1.71f75e8ec5f74p+0, 0x1.7a11473eb0187p+0, 0x1.82589994cce13p+0, \
   0x1.8ace5422aa0dbp+0, 0x1.93737b0cdc5e5p+0, 0x1.9c49182a3f090p+0, 0x1.a5503b23e255dp+0, \
   0x1.ae89f995ad3adp+0, 0x1.b7f76f2fb5e47p+0, 0x1.c199bdd85529cp+0, 0x1.cb720dcef9069p+0, \
   0x1.d5818dcfba487p+0, 0x1.dfc97337b9b5fp+0, 0x1.ea4afa2a490dap+0, 0x1.f50765b6e4540p+0}
inline constexpr double kExp2FractionsHost[32] = PDL_POST_EXP2_FRACTIONS;
#ifdef __CUDACC__
static __device__ const double kExp2FractionsDevice[32] = PDL_POST_EXP2_FRACTIONS;
#endif

// exp(x) for x <= 0 (and NaN), from + - *, a table and exact power-of-two scaling only, so that
// the CPU and the GPU (both compiled without FMA contraction) round it identically; libm's and
// CUDA's exp() differ in the last bit. x = (32 m + j) ln2 / 32 + r with |r| <= ln2 / 64, then
// exp(x) = 2^m * 2^(j/32) * exp(r), exp(r) from its degree-6 Taylor polynomial (truncation
// < 4e-18 relative); below 2^-1022 the scaling takes two steps so that the one rounding to a
// subnormal happens last. Within 2 ulp of a correctly rounded exp.
PDL_HOST_DEVICE double exp_nonpositive(double x) {
  if (!(x > -746.0)) return x != x ? x : 0.0;  // NaN stays NaN; -inf and underflow give 0
  // k = round(32 x / ln 2): adding and subtracting 1.5 * 2^52 rounds to an integer (to nearest).
  const double shifted = x * 46.16624130844683 + 6755399441055744.0;
  const double k = shifted - 6755399441055744.0;
  // ln 2 / 32 = hi + lo, hi with 32 significant bits: k * hi is exact.
  const double r = (x - k * 0.02166084938653512) - k * 5.9631716539705866e-12;
  // exp(r) = 1 + (r + r^2 q(r)), the 1 added last so that its rounding is the only large one.
  const double r2 = r * r;
  const double q =
      (0.5 + r * (1.0 / 6.0)) + r2 * (1.0 / 24.0 + r * (1.0 / 120.0) + r2 * (1.0 / 720.0));
  const double p = 1.0 + (r + r2 * q);
  const int64_t n = static_cast<int64_t>(k);  // in [-34400, 0]
  const int64_t e = n >> 5;                   // floor(n / 32), in [-1075, 0]
#ifdef __CUDA_ARCH__
  const double fraction = kExp2FractionsDevice[n & 31];
#else
  const double fraction = kExp2FractionsHost[n & 31];
#endif
  const double v = fraction * p;
  if (e >= -1021) return v * power_of_two(e);
  return (v * power_of_two(e + 600)) * power_of_two(-600);
}

// softmax(logits)[target] in double: exp(l_t - m) / sum_c exp(l_c - m), m = max_c l_c, in two
// passes over the channels in channel order (the maximum, then the terms). Steps as for the
// argmax, so that the CPU's channel-by-channel rows and the GPU's pixel per thread perform the
// same operations in the same order (the same bits).
PDL_HOST_DEVICE double softmax_max_step(double maximum, double logit) {
  return std::fmax(maximum, logit);
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
// logits plane is then read in order. A pixel at a time, the C planes' same offsets (a power of two
// apart for power-of-two images) share a cache set and evict each other (17x slower at 1024x2048).
constexpr int64_t kLogitRunPixels = 256;

// Labels [B, 1, H, W] int32 from logits [B, C, H, W] float32/float64.
void argmax_logits_cpu(const StridedView& logits, const StridedView& labels, int num_threads);

}  // namespace pdl_post
