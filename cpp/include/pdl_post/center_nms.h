// Centre finding: threshold, k x k non-maximum suppression, peak list and top-k selection.
//
// Algorithm (docs/merge-semantics.md steps 1-4):
//   h = ctr if ctr > threshold else -1            (compared in the heatmap's own dtype; NaN -> -1)
//   m = max of h over the k x k window, clipped at the image border
//   peaks = pixels with h > 0 and h == m, in row-major order
// The max filter is separable and uses the van Herk / Gil-Werman scheme in both directions: split
// the axis into blocks of k, keep the running maximum from each block's start (prefix) and from
// each block's end (suffix); a window of length <= k touches at most two blocks, so its maximum is
// one comparison of a suffix and a prefix. That is O(1) work per pixel whatever k is. Rows are
// streamed per thread (suffix rows of one block, a running prefix row), so the extra memory is one
// H x W row max buffer plus O(k W) per thread. max() is exact, so the result equals the naive k^2
// filter.
// Sparse heatmaps (the usual case: a few blobs above the threshold) skip the filter: a candidate
// (h > 0) is a peak iff no value of its clipped window is greater, which is the same rule (h > 0,
// so m == h unless a greater value is in the window). It reads at most k^2 values per candidate
// (a few on slopes), needs no row max buffer, and is tried unless even the candidates' 3 x 3
// neighbours would take more than a few reads per pixel; it gives up for the filter once its
// reads pass what the filter would spend on the rows it has done. Both give the same peaks.
//
// Top-k: "exact" keeps the k largest peaks (ties to the earlier pixel) in row-major order;
// "detectron2" keeps peaks > t, t = the k-th largest peak value when there are >= k peaks.
#pragma once

#include <cstdint>
#include <vector>

#include "pdl_post/common.h"

namespace pdl_post {

template <typename T>
PDL_HOST_DEVICE T threshold_center(T value, T threshold) {
  return value > threshold ? value : T(-1);
}

template <typename T>
PDL_HOST_DEVICE bool is_center_peak(T thresholded, T window_max) {
  return thresholded > T(0) && thresholded == window_max;
}

// Maximum over [a, b] of a block-decomposed axis, from its block prefix / suffix maxima.
// Blocks have length k and start at 0; b - a + 1 <= k, so [a, b] touches at most two blocks and
// when it lies in one block it starts at that block's start or ends at its (clipped) end.
template <typename T>
PDL_HOST_DEVICE T window_max_from_blocks(T suffix_at_a, T prefix_at_b, int64_t a, int64_t b,
                                         int64_t k) {
  if (a / k != b / k) return suffix_at_a > prefix_at_b ? suffix_at_a : prefix_at_b;
  return (a % k == 0) ? prefix_at_b : suffix_at_a;
}

// The first thresholded value larger than h in rows [y0, y1] x columns [x0, x1] (row-major), or h
// when there is none: the window's maximum exceeds h exactly when such a value exists. `reads`
// (nullptr: not counted) gets the number of values read.
template <typename T>
PDL_HOST_DEVICE T first_larger(Plane<const T> ctr, int64_t y0, int64_t y1, int64_t x0, int64_t x1,
                               T threshold, T h, int64_t* reads) {
  for (int64_t yy = y0; yy <= y1; ++yy) {
    if (reads) *reads += x1 - x0 + 1;
    for (int64_t xx = x0; xx <= x1; ++xx) {
      const T v = threshold_center(ctr(yy, xx), threshold);
      if (v > h) return v;
    }
  }
  return h;
}

// Whether pixel (y, x) is a peak, tested against its clipped window directly (steps 1-3, exact:
// the window's maximum exceeds h iff a larger value is in it). The 3 x 3 neighbours are read
// first: on a slope they hold a larger value, so only local maxima read the whole window. The
// GPU's per-pixel NMS and the CPU's sparse path; `reads` as in first_larger.
template <typename T>
PDL_HOST_DEVICE bool is_window_peak(Plane<const T> ctr, int64_t y, int64_t x, int64_t height,
                                    int64_t width, T threshold, int64_t radius, int64_t* reads) {
  const T h = threshold_center(ctr(y, x), threshold);
  if (!(h > T(0))) return false;
  const auto clipped = [](int64_t v, int64_t size) {
    return v < 0 ? 0 : (v >= size ? size - 1 : v);
  };
  if (radius > 1) {
    const T near = first_larger(ctr, clipped(y - 1, height), clipped(y + 1, height),
                                clipped(x - 1, width), clipped(x + 1, width), threshold, h, reads);
    if (!is_center_peak(h, near)) return false;
  }
  const T m =
      first_larger(ctr, clipped(y - radius, height), clipped(y + radius, height),
                   clipped(x - radius, width), clipped(x + radius, width), threshold, h, reads);
  return is_center_peak(h, m);
}

enum class TopKMode { kExact, kDetectron2 };

struct Peak {
  int64_t index;  // y * W + x
  double score;   // the heatmap value (exact for float32 and float64 inputs)
};

// Which NMS path find_peaks_cpu takes: chosen from the data (kAuto), or forced (tests compare the
// two). Returns the previous setting; process-wide.
enum class NmsStrategy { kAuto, kSparse, kFilter };
NmsStrategy set_nms_strategy(NmsStrategy strategy);
// Heatmap planes done by each path since the process started (sparse_given_up: planes whose
// sparse pass stopped at its budget and that the filter then did); for tests.
struct NmsPathCounts {
  int64_t sparse, filter, sparse_given_up;
};
NmsPathCounts nms_path_counts();

// All peaks of one heatmap plane in row-major order (steps 1-3).
template <typename T>
std::vector<Peak> find_peaks_cpu(Plane<const T> ctr, int64_t height, int64_t width, T threshold,
                                 int64_t nms_kernel, int num_threads);

// Step 4, in place; top_k < 0 keeps all. The kept peaks stay in row-major order.
void select_top_k(std::vector<Peak>& peaks, int64_t top_k, TopKMode mode);

}  // namespace pdl_post
