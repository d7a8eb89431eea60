// CPU centre finding: a window test per candidate on sparse heatmaps, else the thresholded van
// Herk max filter (rows, then streamed columns); top-k.
#include <algorithm>
#include <atomic>
#include <memory>
#include <numeric>
#include <vector>

#include "pdl_post/center_nms.h"
#include "pdl_post/parallel_region.h"

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

// Number of candidates in row y: pixels with h > 0, i.e. value > max(threshold, 0) (NaN never is).
template <typename T>
int64_t row_candidates(Plane<const T> ctr, int64_t y, int64_t width, T threshold) {
  const T cut = std::max(threshold, T(0));
  const T* src = ctr.row(y);
  int64_t count = 0;
  if (ctr.stride_x == 1) {
    for (int64_t x = 0; x < width; ++x) count += src[x] > cut;
  } else {
    for (int64_t x = 0; x < width; ++x) count += src[x * ctr.stride_x] > cut;
  }
  return count;
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
                  const std::vector<int64_t>& candidates, int64_t height, int64_t width,
                  T threshold, int64_t k, int64_t y0, int64_t y1, std::vector<Peak>& peaks) {
  const int64_t r = k / 2;
  const int64_t block_rows = std::min(k, height);
  std::vector<T> suffix(static_cast<size_t>(block_rows * width));
  std::vector<T> prefix(static_cast<size_t>(width));
  int64_t suffix_block = -1;
  int64_t prefix_last = -1;  // last row folded into `prefix` (-1: none)
  for (int64_t y = y0; y < y1; ++y) {
    if (candidates[y] == 0) continue;  // no candidate peak in this row
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
      if (candidates[row] == 0) continue;  // a zero row changes no relevant maximum
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

// The filter path: row window maxima of the rows with candidates (the others share a row of
// zeros), then the streamed column pass over contiguous strips of rows, into strip_peaks.
template <typename T>
void filter_peaks(Plane<const T> ctr, const std::vector<int64_t>& candidates, int64_t height,
                  int64_t width, T threshold, int64_t k, int threads,
                  std::vector<std::vector<Peak>>& strip_peaks) {
  std::vector<int64_t> slot(static_cast<size_t>(height), -1);
  int64_t positive_rows = 0;
  for (int64_t y = 0; y < height; ++y) {
    if (candidates[y] != 0) slot[y] = positive_rows++;
  }
  std::unique_ptr<T[]> storage(new T[static_cast<size_t>(positive_rows * width)]);
  const std::vector<T> zeros(static_cast<size_t>(width), T(0));
  std::vector<const T*> row_max(static_cast<size_t>(height), zeros.data());
  for (int64_t y = 0; y < height; ++y) {
    if (slot[y] >= 0) row_max[y] = storage.get() + slot[y] * width;
  }
  ParallelRegion rows;
#pragma omp parallel num_threads(threads) if (threads > 1)
  {
    std::vector<T> scratch;  // per thread, taken in the first row (inside run: it may throw)
#pragma omp for schedule(dynamic, 16)
    for (int64_t y = 0; y < height; ++y) {
      if (slot[y] < 0) continue;
      rows.run([&] {
        scratch.resize(static_cast<size_t>(3 * width));
        threshold_row(ctr, y, width, threshold, scratch.data());
        row_window_max(scratch.data(), width, k, scratch.data() + width, scratch.data() + 2 * width,
                       storage.get() + slot[y] * width);
      });
    }
  }
  rows.rethrow();
  const int64_t strips = static_cast<int64_t>(strip_peaks.size());
  ParallelRegion columns;
#pragma omp parallel for num_threads(threads) if (threads > 1) schedule(dynamic, 1)
  for (int64_t t = 0; t < strips; ++t) {
    columns.run([&] {
      column_peaks(ctr, row_max, candidates, height, width, threshold, k, height * t / strips,
                   height * (t + 1) / strips, strip_peaks[t]);
    });
  }
  columns.rethrow();
}

// The sparse path: each candidate tested against its window (is_window_peak, the GPU's per-pixel
// test): most candidates cost a few reads, but plateaus and wide windows cost up to k^2. Rows
// [y0, y1) stop, returning false, once another
// strip has (`gave_up`; nullptr: never stop) or they have read more than kSparseReadsPerPixel
// values per pixel of their candidate rows so far plus k rows: about what the filter would spend
// on them (a pass over each row holding a candidate, and the k rows of a window block); checked
// after every window test, so that a band of a few rows under a wide window is given up within
// its first row.
constexpr int64_t kSparseReadsPerPixel = 5;

template <typename T>
bool sparse_peaks(Plane<const T> ctr, const std::vector<int64_t>& candidates, int64_t height,
                  int64_t width, T threshold, int64_t k, int64_t y0, int64_t y1,
                  const std::atomic<bool>* gave_up, std::vector<Peak>& peaks) {
  const T cut = std::max(threshold, T(0));
  int64_t reads = 0, candidate_rows = 0;
  for (int64_t y = y0; y < y1; ++y) {
    if (candidates[y] == 0) continue;
    ++candidate_rows;
    const int64_t allowed = kSparseReadsPerPixel * width * (candidate_rows + k);
    if (gave_up && (reads > allowed || gave_up->load(std::memory_order_relaxed))) return false;
    const T* src = ctr.row(y);
    for (int64_t x = 0; x < width; ++x) {
      const T h = src[x * ctr.stride_x];
      if (!(h > cut)) continue;  // not a candidate: skipped without a call
      if (is_window_peak(ctr, y, x, height, width, threshold, k / 2, &reads)) {
        peaks.push_back(Peak{y * width + x, static_cast<double>(h)});
      }
      if (gave_up && reads > allowed) return false;
    }
  }
  return true;
}

std::atomic<int> g_nms_strategy{static_cast<int>(NmsStrategy::kAuto)};
std::atomic<int64_t> g_sparse_planes{0}, g_filter_planes{0}, g_sparse_given_up{0};

// Whether the sparse path may pay: not when even the candidates' 3 x 3 neighbours would exceed
// its budget (a heatmap mostly above the threshold).
bool sparse_may_pay(int64_t candidates, int64_t height, int64_t width, int64_t k) {
  const double near = static_cast<double>(std::min<int64_t>(k, 3));
  return static_cast<double>(candidates) * near * near <=
         static_cast<double>(kSparseReadsPerPixel) * static_cast<double>(height) *
             static_cast<double>(width);
}

}  // namespace

template <typename T>
std::vector<Peak> find_peaks_cpu(Plane<const T> ctr, int64_t height, int64_t width, T threshold,
                                 int64_t nms_kernel, int num_threads) {
  std::vector<Peak> peaks;
  if (height <= 0 || width <= 0) return peaks;
  const int64_t k = nms_kernel;
  const int threads = row_threads(num_threads, height);
  // Pass 1: candidates (h > 0) per row.
  std::vector<int64_t> candidates(static_cast<size_t>(height), 0);
  ParallelRegion candidate_rows;
#pragma omp parallel for num_threads(threads) if (threads > 1) schedule(static)
  for (int64_t y = 0; y < height; ++y) {
    candidate_rows.run([&] { candidates[y] = row_candidates(ctr, y, width, threshold); });
  }
  candidate_rows.rethrow();
  const int64_t total = std::accumulate(candidates.begin(), candidates.end(), int64_t{0});
  if (total == 0) return peaks;
  // Contiguous strips (a few per thread: candidate rows cluster), concatenated in order: the
  // peak list is row-major for any thread count and either path.
  const int64_t strips = row_strips(height, threads);
  std::vector<std::vector<Peak>> strip_peaks(static_cast<size_t>(strips));
  const auto strategy = static_cast<NmsStrategy>(g_nms_strategy.load(std::memory_order_relaxed));
  bool sparse = strategy == NmsStrategy::kSparse ||
                (strategy == NmsStrategy::kAuto && sparse_may_pay(total, height, width, k));
  if (sparse) {
    // The budget is a speed guard only: a forced sparse path (tests) never gives up. One strip
    // giving up stops the others (the filter then does the whole plane).
    std::atomic<bool> gave_up{false};
    const std::atomic<bool>* stop = strategy == NmsStrategy::kAuto ? &gave_up : nullptr;
    ParallelRegion sparse_strips;
#pragma omp parallel for num_threads(threads) if (threads > 1) schedule(dynamic, 1)
    for (int64_t t = 0; t < strips; ++t) {
      sparse_strips.run([&] {
        if (!sparse_peaks(ctr, candidates, height, width, threshold, k, height * t / strips,
                          height * (t + 1) / strips, stop, strip_peaks[t])) {
          gave_up.store(true, std::memory_order_relaxed);
        }
      });
    }
    sparse_strips.rethrow();
    sparse = !gave_up.load();
    if (!sparse) g_sparse_given_up.fetch_add(1, std::memory_order_relaxed);
  }
  if (sparse) {
    g_sparse_planes.fetch_add(1, std::memory_order_relaxed);
  } else {
    for (auto& strip : strip_peaks) strip.clear();
    filter_peaks(ctr, candidates, height, width, threshold, k, threads, strip_peaks);
    g_filter_planes.fetch_add(1, std::memory_order_relaxed);
  }
  for (auto& strip : strip_peaks) peaks.insert(peaks.end(), strip.begin(), strip.end());
  return peaks;
}

NmsStrategy set_nms_strategy(NmsStrategy strategy) {
  return static_cast<NmsStrategy>(g_nms_strategy.exchange(static_cast<int>(strategy)));
}

NmsPathCounts nms_path_counts() {
  return NmsPathCounts{g_sparse_planes.load(), g_filter_planes.load(), g_sparse_given_up.load()};
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
