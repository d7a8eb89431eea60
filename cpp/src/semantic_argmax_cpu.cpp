// CPU argmax over logits channels, parallel over rows of every image, channel by channel over
// runs of a row (see kLogitRunPixels); the softmax of such a run for the segment scores.
#include <algorithm>
#include <atomic>
#include <vector>

#include "pdl_post/parallel_region.h"
#include "pdl_post/semantic_argmax.h"

namespace pdl_post {
namespace {

// One channel's argmax_step over a run of pixels whose states are kept as arrays (value, best,
// have): without aliasing and branches the compiler vectorises it (with unit stride).
template <typename T>
void argmax_run_step(const T* __restrict logits, int64_t stride_x, int64_t n, int32_t channel,
                     T* __restrict value, int32_t* __restrict best, int32_t* __restrict have) {
  for (int64_t i = 0; i < n; ++i) {
    ArgmaxState<T> state{value[i], best[i], have[i] != 0};
    argmax_step(state, logits[i * stride_x], channel);
    value[i] = state.value;
    best[i] = state.best;
    have[i] = state.have;
  }
}

template <typename T>
void argmax_typed(const StridedView& logits, const StridedView& labels, int num_threads) {
  const int64_t batch = logits.batch(), channels = logits.channels();
  const int64_t height = logits.height(), width = logits.width();
  const int64_t rows = batch * height;
  const int64_t stride_c = logits.strides[1], stride_x = logits.strides[3];
  num_threads = row_threads(resolve_threads(num_threads), rows);  // 0: all cores
  ParallelRegion label_rows;
#pragma omp parallel num_threads(num_threads) if (num_threads > 1)
  {
    // Per thread, taken in the first row (inside run: allocating may throw).
    const size_t run = static_cast<size_t>(std::min(width, kLogitRunPixels));
    std::vector<T> value;
    std::vector<int32_t> best, have;
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      label_rows.run([&] {
        value.resize(run);
        best.resize(run);
        have.resize(run);
        const int64_t b = r / height, y = r % height;
        const Plane<const T> src = plane_of<const T>(logits, b, 0);
        const Plane<int32_t> dst = plane_of<int32_t>(labels, b, 0);
        for (int64_t x0 = 0; x0 < width; x0 += kLogitRunPixels) {
          const int64_t n = std::min(kLogitRunPixels, width - x0);
          const T* first = &src(y, x0);
          for (int64_t i = 0; i < n; ++i) {
            const ArgmaxState<T> state = argmax_first(first[i * stride_x]);
            value[i] = state.value;
            best[i] = state.best;
            have[i] = state.have;
          }
          for (int64_t c = 1; c < channels; ++c) {
            const T* plane = first + c * stride_c;
            const int32_t channel = static_cast<int32_t>(c);
            if (stride_x == 1) {  // the usual layout: contiguous loads
              argmax_run_step(plane, 1, n, channel, value.data(), best.data(), have.data());
            } else {
              argmax_run_step(plane, stride_x, n, channel, value.data(), best.data(), have.data());
            }
          }
          for (int64_t i = 0; i < n; ++i) dst(y, x0 + i) = best[i];
        }
      });
    }
  }
  label_rows.rethrow();
}

// softmax_run_cpu's loops (kUnitStride: contiguous loads, which vectorise best). Every pixel of
// the run is computed, also those whose result is not used, so that the loads stay contiguous.
template <typename TL, bool kUnitStride>
[[gnu::always_inline]] inline void softmax_run_loops(const TL* run, int64_t stride_c,
                                                     int64_t stride_x, int64_t n, int64_t channels,
                                                     const int64_t* __restrict targets,
                                                     double* __restrict maxima,
                                                     double* __restrict totals,
                                                     double* __restrict mines) {
  const int64_t step = kUnitStride ? 1 : stride_x;
  for (int64_t i = 0; i < n; ++i) maxima[i] = static_cast<double>(run[i * step]);
  for (int64_t c = 1; c < channels; ++c) {
    const TL* channel = run + c * stride_c;
    for (int64_t i = 0; i < n; ++i) {
      maxima[i] = softmax_max_step(maxima[i], static_cast<double>(channel[i * step]));
    }
  }
  for (int64_t i = 0; i < n; ++i) totals[i] = mines[i] = 0.0;
  for (int64_t c = 0; c < channels; ++c) {
    const TL* channel = run + c * stride_c;
    for (int64_t i = 0; i < n; ++i) {
      SoftmaxTerms terms{totals[i], mines[i]};
      softmax_term_step(terms, static_cast<double>(channel[i * step]), maxima[i], c == targets[i]);
      totals[i] = terms.total;
      mines[i] = terms.mine;
    }
  }
}

// The body of both copies below: the loops for the run's stride.
template <typename TL>
[[gnu::always_inline]] inline void softmax_run_body(const TL* run, int64_t stride_c,
                                                    int64_t stride_x, int64_t n, int64_t channels,
                                                    const int64_t* targets, double* maxima,
                                                    double* totals, double* mines) {
  if (stride_x == 1) {
    softmax_run_loops<TL, true>(run, stride_c, 1, n, channels, targets, maxima, totals, mines);
  } else {
    softmax_run_loops<TL, false>(run, stride_c, stride_x, n, channels, targets, maxima, totals,
                                 mines);
  }
}

template <typename TL>
void softmax_run_plain(const TL* run, int64_t stride_c, int64_t stride_x, int64_t n,
                       int64_t channels, const int64_t* targets, double* maxima, double* totals,
                       double* mines) {
  softmax_run_body(run, stride_c, stride_x, n, channels, targets, maxima, totals, mines);
}

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define PDL_POST_HAVE_AVX2_COPIES 1
// The same loops compiled for AVX2 (no FMA: -ffp-contract=off holds and the target has none).
template <typename TL>
[[gnu::target("avx2")]] void softmax_run_avx2(const TL* run, int64_t stride_c, int64_t stride_x,
                                              int64_t n, int64_t channels, const int64_t* targets,
                                              double* maxima, double* totals, double* mines) {
  softmax_run_body(run, stride_c, stride_x, n, channels, targets, maxima, totals, mines);
}

bool cpu_has_avx2() {
  static const bool has = __builtin_cpu_supports("avx2");
  return has;
}
#endif

std::atomic<bool> g_avx2_enabled{true};

}  // namespace

template <typename TL>
void softmax_run_cpu(const TL* run, int64_t stride_c, int64_t stride_x, int64_t n, int64_t channels,
                     const int64_t* targets, double* maxima, double* totals, double* mines) {
#ifdef PDL_POST_HAVE_AVX2_COPIES
  if (cpu_avx2_in_use()) {
    return softmax_run_avx2(run, stride_c, stride_x, n, channels, targets, maxima, totals, mines);
  }
#endif
  softmax_run_plain(run, stride_c, stride_x, n, channels, targets, maxima, totals, mines);
}

template void softmax_run_cpu<float>(const float*, int64_t, int64_t, int64_t, int64_t,
                                     const int64_t*, double*, double*, double*);
template void softmax_run_cpu<double>(const double*, int64_t, int64_t, int64_t, int64_t,
                                      const int64_t*, double*, double*, double*);

bool set_cpu_avx2(bool enabled) { return g_avx2_enabled.exchange(enabled); }

bool cpu_avx2_in_use() {
#ifdef PDL_POST_HAVE_AVX2_COPIES
  return cpu_has_avx2() && g_avx2_enabled.load(std::memory_order_relaxed);
#else
  return false;
#endif
}

void argmax_logits_cpu(const StridedView& logits, const StridedView& labels, int num_threads) {
  const IeeeFloatModes float_modes;  // the calling thread's (float_mode.h)
  if (labels.dtype != DType::kInt32) throw ValueError("argmax_logits: labels must be int32");
  if (logits.channels() < 1) throw ValueError("argmax_logits: logits need at least one channel");
  if (logits.dtype == DType::kFloat32) return argmax_typed<float>(logits, labels, num_threads);
  if (logits.dtype == DType::kFloat64) return argmax_typed<double>(logits, labels, num_threads);
  throw ValueError(std::string("argmax_logits: expected float32 or float64 logits, got ") +
                   dtype_name(logits.dtype));
}

}  // namespace pdl_post
