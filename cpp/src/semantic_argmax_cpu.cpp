// CPU argmax over logits channels, parallel over rows of every image, channel by channel over
// runs of a row (see kLogitRunPixels).
#include <algorithm>
#include <vector>

#include "pdl_post/semantic_argmax.h"

namespace pdl_post {
namespace {

template <typename T>
void argmax_typed(const StridedView& logits, const StridedView& labels, int num_threads) {
  const int64_t batch = logits.batch(), channels = logits.channels();
  const int64_t height = logits.height(), width = logits.width();
  const int64_t rows = batch * height;
  const int64_t stride_c = logits.strides[1], stride_x = logits.strides[3];
#pragma omp parallel num_threads(num_threads) if (num_threads > 1)
  {
    std::vector<ArgmaxState<T>> states(static_cast<size_t>(std::min(width, kLogitRunPixels)));
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t b = r / height, y = r % height;
      const Plane<const T> src = plane_of<const T>(logits, b, 0);
      const Plane<int32_t> dst = plane_of<int32_t>(labels, b, 0);
      for (int64_t x0 = 0; x0 < width; x0 += kLogitRunPixels) {
        const int64_t n = std::min(kLogitRunPixels, width - x0);
        const T* run = &src(y, x0);
        for (int64_t i = 0; i < n; ++i) states[i] = argmax_first(run[i * stride_x]);
        for (int64_t c = 1; c < channels; ++c) {
          const T* plane = run + c * stride_c;
          for (int64_t i = 0; i < n; ++i) {
            argmax_step(states[i], plane[i * stride_x], static_cast<int32_t>(c));
          }
        }
        for (int64_t i = 0; i < n; ++i) dst(y, x0 + i) = states[i].best;
      }
    }
  }
}

}  // namespace

void argmax_logits_cpu(const StridedView& logits, const StridedView& labels, int num_threads) {
  if (labels.dtype != DType::kInt32) throw ValueError("argmax_logits: labels must be int32");
  if (logits.channels() < 1) throw ValueError("argmax_logits: logits need at least one channel");
  if (logits.dtype == DType::kFloat32) return argmax_typed<float>(logits, labels, num_threads);
  if (logits.dtype == DType::kFloat64) return argmax_typed<double>(logits, labels, num_threads);
  throw ValueError(std::string("argmax_logits: expected float32 or float64 logits, got ") +
                   dtype_name(logits.dtype));
}

}  // namespace pdl_post
