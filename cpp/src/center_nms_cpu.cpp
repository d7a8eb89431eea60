// CPU centre finding: thresholded van Herk max filter (rows, then streamed columns) and top-k.
#include <algorithm>
#include <memory>
#include <numeric>
#include <vector>

#include "pdl_post/center_nms.h"

namespace pdl_post {
namespace {

// Prefix / suffix maxima within consecutive blocks of length k over n values.
template <typename T>
void block_prefix_suffix(const T* values, int64_t n, int64_t k, T* prefix, T* suffix) {
  for (int64_t start = 0; start < n; start += k) {
    const int64_t end = std::min(start + k, n);
    T run = values[start];
    for (int64_t i = start; i < end; ++i) prefix[i] = run = std::max(run, values[i]);
    run = values[end - 1];
    for (int64_t i = end - 1; i >= start; --i) suffix[i] = run = std::max(run, values[i]);
  }
}

// Thresholds row y of the heatmap into h[0..W).
template <typename T>
void threshold_row(Plane<const T> ctr, int64_t y, int64_t width, T threshold, T* h) {
  const T* src = ctr.row(y);
  if (ctr.stride_x == 1) {  // the common, vectorisable layout
    for (int64_t x = 0; x < width; ++x) h[x] = threshold_center(src[x], threshold);
  } else {
    for (int64_t x = 0; x < width; ++x) h[x] = threshold_center(src[x * ctr.stride_x], threshold);
  }
}

// Whether row y has any h > 0, i.e. any value > max(threshold, 0) (NaN never is).
template <typename T>
bool row_has_candidate(Plane<const T> ctr, int64_t y, int64_t width, T threshold) {
  const T cut = std::max(threshold, T(0));
  const T* src = ctr.row(y);
  bool any = false;
  if (ctr.stride_x == 1) {
    for (int64_t x = 0; x < width; ++x) any |= src[x] > cut;
  } else {
    for (int64_t x = 0; x < width; ++x) any |= src[x * ctr.stride_x] > cut;
  }
  return any;
}

// out[x] = max of h over [x - r, x + r] clipped to [0, W), via block prefix / suffix maxima.
template <typename T>
void row_window_max(const T* h, int64_t width, int64_t k, T* prefix, T* suffix, T* out) {
  block_prefix_suffix(h, width, k, prefix, suffix);
  const int64_t r = k / 2;
  const int64_t interior_begin = std::min(r, width);
  const int64_t interior_end = std::max(interior_begin, width - r);
  auto clipped = [&](int64_t x) {
    const int64_t a = std::max<int64_t>(0, x - r);
    const int64_t b = std::min<int64_t>(width - 1, x + r);
    out[x] = window_max_from_blocks(suffix[a], prefix[b], a, b, k);
  };
  for (int64_t x = 0; x < interior_begin; ++x) clipped(x);
  // Unclipped windows have length k: suffix and prefix together cover exactly the window.
  for (int64_t x = interior_begin; x < interior_end; ++x) {
    out[x] = std::max(suffix[x - r], prefix[x + r]);
  }
  for (int64_t x = interior_end; x < width; ++x) clipped(x);
}

// Column pass over rows [y0, y1): streams the suffix rows of one block and a running prefix row.
// row_max[y] is the row's window maximum, or a shared row of zeros when the row has no h > 0:
// values <= 0 never change a maximum that is compared with a positive h.
template <typename T>
void column_peaks(Plane<const T> ctr, const std::vector<const T*>& row_max,
                  const std::vector<char>& row_positive, int64_t height, int64_t width, T threshold,
                  int64_t k, int64_t y0, int64_t y1, std::vector<Peak>& peaks) {
  const int64_t r = k / 2;
  const int64_t block_rows = std::min(k, height);
  std::vector<T> suffix(static_cast<size_t>(block_rows * width));
  std::vector<T> prefix(static_cast<size_t>(width));
  int64_t suffix_block = -1;
  int64_t prefix_last = -1;  // last row folded into `prefix` (-1: none)
  for (int64_t y = y0; y < y1; ++y) {
    if (!row_positive[y]) continue;  // no candidate peak in this row
    const int64_t a = std::max<int64_t>(0, y - r);
    const int64_t b = std::min<int64_t>(height - 1, y + r);
    if (a / k != suffix_block) {
      suffix_block = a / k;
      const int64_t start = suffix_block * k;
      const int64_t end = std::min(start + k, height);
      T* last = suffix.data() + (end - 1 - start) * width;
      std::copy(row_max[end - 1], row_max[end - 1] + width, last);
      for (int64_t row = end - 2; row >= start; --row) {
        T* dst = suffix.data() + (row - start) * width;
        const T* below = dst + width;
        const T* src = row_max[row];
        for (int64_t x = 0; x < width; ++x) dst[x] = std::max(src[x], below[x]);
      }
    }
    int64_t fold_from = prefix_last + 1;
    if (prefix_last < 0 || prefix_last / k != b / k || prefix_last > b) {
      fold_from = (b / k) * k;
      std::copy(row_max[fold_from], row_max[fold_from] + width, prefix.data());
      ++fold_from;
    }
    for (int64_t row = fold_from; row <= b; ++row) {
      if (!row_positive[row]) continue;  // a zero row changes no relevant maximum
      const T* src = row_max[row];
      for (int64_t x = 0; x < width; ++x) prefix[x] = std::max(prefix[x], src[x]);
    }
    prefix_last = b;
    // [a, b] spans two blocks, or one block from its start (prefix) or to its end (suffix).
    const bool two_blocks = a / k != b / k;
    const T* suffix_a = suffix.data() + (a - suffix_block * k) * width;
    const T* one_block = (a % k == 0) ? prefix.data() : suffix_a;
    // h > 0 exactly where ctr > max(threshold, 0), and there h == ctr.
    const T cut = std::max(threshold, T(0));
    const T* src = ctr.row(y);
    for (int64_t x = 0; x < width; ++x) {
      const T h = src[x * ctr.stride_x];
      if (!(h > cut)) continue;
      const T m = two_blocks ? std::max(suffix_a[x], prefix[x]) : one_block[x];
      if (is_center_peak(h, m)) peaks.push_back(Peak{y * width + x, static_cast<double>(h)});
    }
  }
}

}  // namespace

template <typename T>
std::vector<Peak> find_peaks_cpu(Plane<const T> ctr, int64_t height, int64_t width, T threshold,
                                 int64_t nms_kernel, int num_threads) {
  std::vector<Peak> peaks;
  if (height <= 0 || width <= 0) return peaks;
  // Rows are independent in the first pass; strips of rows in the second.
  const int64_t k = nms_kernel;
  const int threads = row_threads(num_threads, height);
  // Pass 1a: which rows hold a candidate (h > 0) at all.
  std::vector<char> row_positive(static_cast<size_t>(height), 0);
#pragma omp parallel for num_threads(threads) if (threads > 1) schedule(static)
  for (int64_t y = 0; y < height; ++y)
    row_positive[y] = row_has_candidate(ctr, y, width, threshold);
  std::vector<int64_t> slot(static_cast<size_t>(height), -1);
  int64_t positive_rows = 0;
  for (int64_t y = 0; y < height; ++y) {
    if (row_positive[y]) slot[y] = positive_rows++;
  }
  if (positive_rows == 0) return peaks;
  // Pass 1b: row window maxima of those rows; the others share a row of zeros.
  std::unique_ptr<T[]> storage(new T[static_cast<size_t>(positive_rows * width)]);
  const std::vector<T> zeros(static_cast<size_t>(width), T(0));
  std::vector<const T*> row_max(static_cast<size_t>(height), zeros.data());
  for (int64_t y = 0; y < height; ++y) {
    if (slot[y] >= 0) row_max[y] = storage.get() + slot[y] * width;
  }
#pragma omp parallel num_threads(threads) if (threads > 1)
  {
    std::vector<T> scratch(static_cast<size_t>(3 * width));
    T* h = scratch.data();
#pragma omp for schedule(dynamic, 16)
    for (int64_t y = 0; y < height; ++y) {
      if (!row_positive[y]) continue;
      threshold_row(ctr, y, width, threshold, h);
      row_window_max(h, width, k, scratch.data() + width, scratch.data() + 2 * width,
                     storage.get() + slot[y] * width);
    }
  }
  // Contiguous strips (a few per thread: candidate rows cluster), concatenated in order: the
  // peak list is row-major for any thread count.
  const int64_t strips = row_strips(height, threads);
  std::vector<std::vector<Peak>> strip_peaks(static_cast<size_t>(strips));
#pragma omp parallel for num_threads(threads) if (threads > 1) schedule(dynamic, 1)
  for (int64_t t = 0; t < strips; ++t) {
    const int64_t y0 = height * t / strips;
    const int64_t y1 = height * (t + 1) / strips;
    column_peaks(ctr, row_max, row_positive, height, width, threshold, k, y0, y1, strip_peaks[t]);
  }
  for (auto& strip : strip_peaks) peaks.insert(peaks.end(), strip.begin(), strip.end());
  return peaks;
}

void select_top_k(std::vector<Peak>& peaks, int64_t top_k, TopKMode mode) {
  const int64_t count = static_cast<int64_t>(peaks.size());
  if (top_k < 0) return;
  if (top_k == 0) {
    peaks.clear();
    return;
  }
  if (count <= top_k && mode == TopKMode::kExact) return;
  if (count < top_k) return;  // detectron2: the k-th largest of all values is <= 0
  if (mode == TopKMode::kDetectron2) {
    std::vector<double> scores(peaks.size());
    for (size_t i = 0; i < peaks.size(); ++i) scores[i] = peaks[i].score;
    std::nth_element(scores.begin(), scores.begin() + (top_k - 1), scores.end(),
                     std::greater<double>());
    const double t = scores[top_k - 1];
    peaks.erase(
        std::remove_if(peaks.begin(), peaks.end(), [t](const Peak& p) { return !(p.score > t); }),
        peaks.end());
    return;
  }
  // Exact: rank by score, ties to the earlier pixel (lower position in the row-major list).
  std::vector<int64_t> order(peaks.size());
  std::iota(order.begin(), order.end(), int64_t{0});
  auto better = [&peaks](int64_t i, int64_t j) {
    return peaks[i].score > peaks[j].score || (peaks[i].score == peaks[j].score && i < j);
  };
  std::nth_element(order.begin(), order.begin() + (top_k - 1), order.end(), better);
  order.resize(static_cast<size_t>(top_k));
  std::sort(order.begin(), order.end());
  std::vector<Peak> kept;
  kept.reserve(order.size());
  for (int64_t i : order) kept.push_back(peaks[i]);
  peaks.swap(kept);
}

template std::vector<Peak> find_peaks_cpu<float>(Plane<const float>, int64_t, int64_t, float,
                                                 int64_t, int);
template std::vector<Peak> find_peaks_cpu<double>(Plane<const double>, int64_t, int64_t, double,
                                                  int64_t, int);

}  // namespace pdl_post
