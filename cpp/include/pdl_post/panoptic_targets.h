// Training targets of Panoptic-DeepLab from a panoptic label map (the numpy reference is
// panoptic_targets_reference in models/panoptic_deeplab/targets.py; results match it bit for bit).
//
// Algorithm:
//   0. segment table: segment id -> segment index (a direct table over [min id, max id] while that
//      range is small, else binary search in the sorted ids); ids not listed are "unlabelled" and
//      take the extra index S;
//   1. statistics pass over row strips (one strip per thread): per segment, its area and the exact
//      int64 sums of the row and column indices of its pixels, added once per run of equal ids;
//      the strips' integer sums are added afterwards, so any thread count gives the same totals.
//      The runs (segment index, end) are recorded for step 3: 12 bytes per run, at most per pixel;
//   2. per segment: centroid (cy, cx) = sum / area in double. numpy's mean of integer indices is
//      this same division (its float64 sum of integers < 2^53 is exact). Also the per-segment
//      values every pixel of the segment receives (category, weights, offset flag);
//   3. write pass over rows, replaying the recorded runs (no second scan, no second lookup):
//      semantic, semantic / centre / offset weights, the offsets (float(cy - y), float(cx - x),
//      computed in double) and a zeroed centre plane;
//   4. Gaussians: for every non-crowd thing segment with pixels, a (2 radius + 1)^2 window at
//      (round(cy), round(cx)) (half to even), clipped to the image, drawn with max. Each thread
//      draws every window clipped to its own rows, so no two threads write the same pixel.
// The Gaussian values come from a float32 table indexed by dy^2 + dx^2 that the caller fills with
// numpy's float64 exp, so they equal the reference's whatever the C library's exp.
// Every output pixel is written from integer statistics or per-pixel math: identical results for
// any thread count.
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

#include "pdl_post/common.h"

namespace pdl_post {

struct TargetParams {
  std::vector<int64_t> thing_ids;
  int64_t ignore_label = 255;
  int64_t radius = 25;  // Gaussian window radius, round(3 sigma + 1)
  int64_t small_instance_area = 4096;
  double small_instance_weight = 3.0;
  bool ignore_crowd_in_semantic = false;
};

struct TargetSegments {
  std::vector<int64_t> ids;           // [S], unique
  std::vector<int64_t> category_ids;  // [S]
  std::vector<uint8_t> iscrowd;       // [S], 0 or 1
};

// Output views, each [1, C, H, W] with C = 1 (offset: C = 2, dy then dx) and unit x stride:
// semantic int64, the others float32.
struct TargetOutputs {
  StridedView semantic, semantic_weights, center, offset, center_weights, offset_weights;
};

// What every pixel of one segment (or of the unlabelled pixels) receives.
struct SegmentTarget {
  int64_t semantic;
  float semantic_weight;
  float center_weight;
  float offset_weight;  // 1 when the pixels get offsets (non-crowd thing)
  double cy, cx;        // centroid (valid when area > 0)
};

// Python's round() of a float: to the nearest integer, halves to even.
PDL_HOST_DEVICE double round_half_even(double v) {
  double f = std::floor(v);
  const double d = v - f;
  if (d > 0.5 || (d == 0.5 && std::fmod(f, 2.0) != 0.0)) f += 1.0;
  return f;
}

// Mean of integer coordinates: the exact integer sum divided once, as numpy's mean does.
PDL_HOST_DEVICE double centroid(int64_t sum, int64_t count) {
  return static_cast<double>(sum) / static_cast<double>(count);
}

// Offset from pixel coordinate p to the centroid c: computed in double, stored as float32.
PDL_HOST_DEVICE float offset_to(double c, int64_t p) {
  return static_cast<float>(c - static_cast<double>(p));
}

// Gaussian window value at (dy, dx) from the table indexed by squared distance.
PDL_HOST_DEVICE float gaussian_at(const float* table, int64_t dy, int64_t dx) {
  return table[dy * dy + dx * dx];
}

// Largest squared distance a window of `radius` can reach inside a height x width image: the
// Gaussian table needs this many entries plus one.
int64_t gaussian_table_extent(int64_t radius, int64_t height, int64_t width);

// All targets of one panoptic map [1, 1, H, W] (uint8, int16, int32 or int64 ids).
// `gaussian` holds gaussian_table_extent(...) + 1 values (gaussian_size checks it).
void panoptic_targets_cpu(const StridedView& panoptic, const TargetSegments& segments,
                          const TargetParams& params, const float* gaussian, int64_t gaussian_size,
                          const TargetOutputs& out, int num_threads);

}  // namespace pdl_post
