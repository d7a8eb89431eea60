// CPU argmax over logits channels, parallel over rows of every image.
#include "pdl_post/semantic_argmax.h"

namespace pdl_post {
namespace {

template <typename T>
void argmax_typed(const StridedView& logits, const StridedView& labels, int num_threads) {
  const int64_t batch = logits.batch(), channels = logits.channels();
  const int64_t height = logits.height(), width = logits.width();
  const int64_t rows = batch * height;
#pragma omp parallel for num_threads(num_threads) if (num_threads > 1) schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t b = r / height, y = r % height;
    const Plane<const T> src = plane_of<const T>(logits, b, 0);
    const Plane<int32_t> dst = plane_of<int32_t>(labels, b, 0);
    for (int64_t x = 0; x < width; ++x) {
      dst(y, x) = argmax_channel(&src(y, x), logits.strides[1], channels);
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
