// CPU training targets: segment statistics, per-segment values, per-pixel write, Gaussians.
#include <algorithm>
#include <limits>
#include <string>
#include <vector>

#include "pdl_post/panoptic_targets.h"
#include "pdl_post/parallel_region.h"

namespace pdl_post {
namespace {

// Direct id -> index table while max id - min id stays below this (or below 4 S).
constexpr int64_t kDenseIdRange = int64_t{1} << 20;
// Rows written before the Gaussians of those rows are drawn (the centre rows stay in cache).
constexpr int64_t kBlockRows = 32;

// Segment id -> index in [0, S); S for ids that are not segments (unlabelled pixels).
class SegmentIndex {
 public:
  explicit SegmentIndex(const std::vector<int64_t>& ids) : unlabelled_(ids.size()) {
    sorted_ = ids;
    std::sort(sorted_.begin(), sorted_.end());
    if (std::adjacent_find(sorted_.begin(), sorted_.end()) != sorted_.end()) {
      throw ValueError("panoptic_targets: segment_ids must be unique, got the id " +
                       std::to_string(*std::adjacent_find(sorted_.begin(), sorted_.end())) +
                       " twice");
    }
    if (ids.empty()) return;
    lo_ = sorted_.front();
    hi_ = sorted_.back();
    // hi - lo computed in unsigned arithmetic: it may exceed int64 for extreme ids.
    const uint64_t range = static_cast<uint64_t>(hi_) - static_cast<uint64_t>(lo_);
    const uint64_t dense_limit = static_cast<uint64_t>(
        std::max<int64_t>(kDenseIdRange, 4 * static_cast<int64_t>(ids.size())));
    if (range < dense_limit) {
      dense_.assign(static_cast<size_t>(range + 1), static_cast<int32_t>(unlabelled_));
      for (size_t i = 0; i < ids.size(); ++i) {
        dense_[static_cast<size_t>(static_cast<uint64_t>(ids[i]) - static_cast<uint64_t>(lo_))] =
            static_cast<int32_t>(i);
      }
    } else {
      order_.resize(ids.size());
      for (size_t i = 0; i < ids.size(); ++i) {
        order_[std::lower_bound(sorted_.begin(), sorted_.end(), ids[i]) - sorted_.begin()] =
            static_cast<int32_t>(i);
      }
    }
  }

  int32_t find(int64_t id) const {
    if (sorted_.empty() || id < lo_ || id > hi_) return static_cast<int32_t>(unlabelled_);
    if (!dense_.empty()) {
      return dense_[static_cast<size_t>(static_cast<uint64_t>(id) - static_cast<uint64_t>(lo_))];
    }
    auto it = std::lower_bound(sorted_.begin(), sorted_.end(), id);
    return *it == id ? order_[it - sorted_.begin()] : static_cast<int32_t>(unlabelled_);
  }

 private:
  size_t unlabelled_;
  int64_t lo_ = 0, hi_ = -1;
  std::vector<int64_t> sorted_;
  std::vector<int32_t> dense_;  // [hi - lo + 1] when the id range is small
  std::vector<int32_t> order_;  // sorted position -> segment index otherwise
};

// Calls f(id, x0, x1) for each run [x0, x1) of equal ids in one row.
template <bool kUnitStride, typename TP, typename F>
inline void for_each_run(const TP* row, int64_t stride, int64_t width, F&& f) {
  const int64_t step = kUnitStride ? 1 : stride;
  int64_t x = 0;
  while (x < width) {
    const TP v = row[x * step];
    int64_t end = x + 1;
    while (end < width && row[end * step] == v) ++end;
    f(static_cast<int64_t>(v), x, end);
    x = end;
  }
}

template <typename TP, typename F>
inline void for_each_run(const TP* row, int64_t stride, int64_t width, F&& f) {
  if (stride == 1) {
    for_each_run<true>(row, stride, width, f);
  } else {
    for_each_run<false>(row, stride, width, f);
  }
}

// Per-segment area and coordinate sums (index S: unlabelled pixels).
struct SegmentSums {
  std::vector<int64_t> area, sum_y, sum_x;
  explicit SegmentSums(size_t n) : area(n, 0), sum_y(n, 0), sum_x(n, 0) {}
};

// The runs of equal ids found by the statistics pass, kept so that the write pass neither
// rescans the map nor looks ids up again. Run i of a strip covers [end[i - 1], end[i]) of its row
// (from 0 for a row's first run) and belongs to segment index segment[i].
struct StripRuns {
  std::vector<int32_t> segment;
  std::vector<int64_t> end;
  std::vector<size_t> row_begin;  // first run of each of the strip's rows, plus the total
};

template <typename TP>
SegmentSums segment_sums(const Plane<const TP>& pan, const SegmentIndex& index, int64_t height,
                         int64_t width, size_t num_slots, int threads,
                         std::vector<StripRuns>& runs) {
  std::vector<SegmentSums> partial(threads, SegmentSums(num_slots));
  runs.assign(threads, StripRuns{});
  ParallelRegion sum_threads;
#pragma omp parallel for num_threads(threads) if (threads > 1) schedule(static, 1)
  for (int t = 0; t < threads; ++t) {
    sum_threads.run([&] {
      int64_t* area = partial[t].area.data();
      int64_t* sum_y = partial[t].sum_y.data();
      int64_t* sum_x = partial[t].sum_x.data();
      StripRuns& strip = runs[t];
      for (int64_t y = height * t / threads; y < height * (t + 1) / threads; ++y) {
        strip.row_begin.push_back(strip.end.size());
        for_each_run(pan.row(y), pan.stride_x, width, [&](int64_t id, int64_t x0, int64_t x1) {
          const int32_t k = index.find(id);
          const int64_t n = x1 - x0;
          area[k] += n;
          sum_y[k] += y * n;
          sum_x[k] += (x0 + x1 - 1) * n / 2;
          strip.segment.push_back(k);
          strip.end.push_back(x1);
        });
      }
      strip.row_begin.push_back(strip.end.size());
    });
  }
  sum_threads.rethrow();
  SegmentSums total(num_slots);
  for (const SegmentSums& p : partial) {
    for (size_t k = 0; k < num_slots; ++k) {
      total.area[k] += p.area[k];
      total.sum_y[k] += p.sum_y[k];
      total.sum_x[k] += p.sum_x[k];
    }
  }
  return total;
}

void check_output(const StridedView& v, const char* name, DType dtype, int64_t channels,
                  int64_t height, int64_t width) {
  if (v.dtype != dtype || v.shape[0] != 1 || v.shape[1] != channels || v.shape[2] != height ||
      v.shape[3] != width || v.strides[3] != 1) {
    throw ValueError(std::string("panoptic_targets: output ") + name + " must be a " +
                     dtype_name(dtype) + " array [1, " + std::to_string(channels) + ", " +
                     std::to_string(height) + ", " + std::to_string(width) +
                     "] with unit x stride, got " + dtype_name(v.dtype));
  }
}

struct Window {
  int64_t y, x;  // rounded centroid
};

template <typename TP>
void targets_typed(const StridedView& panoptic, const TargetSegments& segments,
                   const TargetParams& params, const float* gaussian, const TargetOutputs& out,
                   int num_threads) {
  const int64_t height = panoptic.height(), width = panoptic.width();
  const size_t S = segments.ids.size();
  const SegmentIndex index(segments.ids);
  const int threads = row_threads(num_threads, height);
  const Plane<const TP> pan = plane_of<const TP>(panoptic, 0, 0);
  std::vector<StripRuns> runs;
  const SegmentSums sums = segment_sums(pan, index, height, width, S + 1, threads, runs);

  std::vector<int64_t> things = params.thing_ids;
  std::sort(things.begin(), things.end());
  std::vector<SegmentTarget> table(S + 1);
  std::vector<Window> windows;
  for (size_t k = 0; k < S; ++k) {
    const int64_t category = segments.category_ids[k];
    const bool crowd = segments.iscrowd[k] != 0;
    const bool thing = std::binary_search(things.begin(), things.end(), category);
    const int64_t area = sums.area[k];
    SegmentTarget& t = table[k];
    t.semantic = (params.ignore_crowd_in_semantic && crowd) ? params.ignore_label : category;
    t.semantic_weight = (thing && area > 0 && area < params.small_instance_area)
                            ? static_cast<float>(params.small_instance_weight)
                            : 1.0f;
    t.center_weight = crowd ? 0.0f : 1.0f;
    t.offset_weight = (thing && !crowd) ? 1.0f : 0.0f;
    t.cy = t.cx = 0.0;
    if (thing && !crowd && area > 0) {
      t.cy = centroid(sums.sum_y[k], area);
      t.cx = centroid(sums.sum_x[k], area);
      windows.push_back(Window{static_cast<int64_t>(round_half_even(t.cy)),
                               static_cast<int64_t>(round_half_even(t.cx))});
    }
  }
  table[S] = SegmentTarget{params.ignore_label, 1.0f, 0.0f, 0.0f, 0.0, 0.0};

  const Plane<int64_t> semantic = plane_of<int64_t>(out.semantic, 0, 0);
  const Plane<float> sem_w = plane_of<float>(out.semantic_weights, 0, 0);
  const Plane<float> center = plane_of<float>(out.center, 0, 0);
  const Plane<float> off_y = plane_of<float>(out.offset, 0, 0);
  const Plane<float> off_x = plane_of<float>(out.offset, 0, 1);
  const Plane<float> ctr_w = plane_of<float>(out.center_weights, 0, 0);
  const Plane<float> off_w = plane_of<float>(out.offset_weights, 0, 0);
  const int64_t r = params.radius;
  const int64_t blocks = (height + kBlockRows - 1) / kBlockRows;
  ParallelRegion target_blocks;
#pragma omp parallel for num_threads(threads) if (threads > 1) schedule(static)
  for (int64_t b = 0; b < blocks; ++b) {
    target_blocks.run([&] {
      const int64_t y0 = b * kBlockRows, y1 = std::min(height, y0 + kBlockRows);
      for (int64_t y = y0; y < y1; ++y) {
        int64_t* sem_row = semantic.row(y);
        float *sw = sem_w.row(y), *cw = ctr_w.row(y), *ow = off_w.row(y);
        float *oy = off_y.row(y), *ox = off_x.row(y);
        std::fill(center.row(y), center.row(y) + width, 0.0f);
        // The statistics pass split the rows the same way: strip t holds rows
        // [height * t / threads, height * (t + 1) / threads).
        const int64_t t = ((y + 1) * threads - 1) / height;
        const StripRuns& strip = runs[t];
        const size_t row = static_cast<size_t>(y - height * t / threads);
        int64_t x0 = 0;
        for (size_t i = strip.row_begin[row]; i < strip.row_begin[row + 1]; ++i) {
          const int64_t x1 = strip.end[i];
          const SegmentTarget& s = table[strip.segment[i]];
          std::fill(sem_row + x0, sem_row + x1, s.semantic);
          std::fill(sw + x0, sw + x1, s.semantic_weight);
          std::fill(cw + x0, cw + x1, s.center_weight);
          std::fill(ow + x0, ow + x1, s.offset_weight);
          if (s.offset_weight != 0.0f) {
            std::fill(oy + x0, oy + x1, offset_to(s.cy, y));
            const double cx = s.cx;
            for (int64_t x = x0; x < x1; ++x) {
              ox[x] = static_cast<float>(cx - static_cast<double>(static_cast<int32_t>(x)));
            }
          } else {
            std::fill(oy + x0, oy + x1, 0.0f);
            std::fill(ox + x0, ox + x1, 0.0f);
          }
          x0 = x1;
        }
      }
      // Gaussians clipped to this block's rows: max over windows, order-independent.
      for (const Window& w : windows) {
        const int64_t wy0 = std::max(y0, w.y - r), wy1 = std::min(y1, w.y + r + 1);
        const int64_t wx0 = std::max<int64_t>(0, w.x - r), wx1 = std::min(width, w.x + r + 1);
        for (int64_t y = wy0; y < wy1; ++y) {
          float* row = center.row(y);
          for (int64_t x = wx0; x < wx1; ++x) {
            row[x] = std::max(row[x], gaussian_at(gaussian, y - w.y, x - w.x));
          }
        }
      }
    });
  }
  target_blocks.rethrow();
}

}  // namespace

int64_t gaussian_table_extent(int64_t radius, int64_t height, int64_t width) {
  const int64_t ry = std::min(radius, std::max<int64_t>(height - 1, 0));
  const int64_t rx = std::min(radius, std::max<int64_t>(width - 1, 0));
  return ry * ry + rx * rx;
}

void panoptic_targets_cpu(const StridedView& panoptic, const TargetSegments& segments,
                          const TargetParams& params, const float* gaussian, int64_t gaussian_size,
                          const TargetOutputs& out, int num_threads) {
  const IeeeFloatModes float_modes;  // the calling thread's (float_mode.h)
  const int64_t height = panoptic.height(), width = panoptic.width();
  if (panoptic.shape[0] != 1 || panoptic.shape[1] != 1) {
    throw ValueError("panoptic_targets: panoptic must be one [1, 1, H, W] map");
  }
  const size_t S = segments.ids.size();
  if (segments.category_ids.size() != S || segments.iscrowd.size() != S) {
    throw ValueError("panoptic_targets: segment_ids, category_ids and iscrowd lengths differ (" +
                     std::to_string(S) + ", " + std::to_string(segments.category_ids.size()) +
                     ", " + std::to_string(segments.iscrowd.size()) + ")");
  }
  if (S >= static_cast<size_t>(std::numeric_limits<int32_t>::max())) {
    throw ValueError("panoptic_targets: too many segments (" + std::to_string(S) + ")");
  }
  if (params.radius < 0) {
    throw ValueError("panoptic_targets: radius must be >= 0, got " + std::to_string(params.radius));
  }
  const int64_t extent = gaussian_table_extent(params.radius, height, width);
  if (gaussian_size < extent + 1) {
    throw ValueError("panoptic_targets: the Gaussian table needs " + std::to_string(extent + 1) +
                     " values, got " + std::to_string(gaussian_size));
  }
  check_output(out.semantic, "semantic", DType::kInt64, 1, height, width);
  check_output(out.semantic_weights, "semantic_weights", DType::kFloat32, 1, height, width);
  check_output(out.center, "center", DType::kFloat32, 1, height, width);
  check_output(out.offset, "offset", DType::kFloat32, 2, height, width);
  check_output(out.center_weights, "center_weights", DType::kFloat32, 1, height, width);
  check_output(out.offset_weights, "offset_weights", DType::kFloat32, 1, height, width);
  if (height == 0 || width == 0) return;
  const int threads = resolve_threads(num_threads);
  with_label_type(panoptic.dtype, "panoptic", [&](auto tag) {
    targets_typed<decltype(tag)>(panoptic, segments, params, gaussian, out, threads);
  });
}

}  // namespace pdl_post
