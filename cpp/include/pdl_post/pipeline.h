// The batch entry points of the CPU core: dtype dispatch and the per-image composition of
// centre finding (center_nms.h), offset voting (offset_voting.h) and fusion (majority_vote.h).
// merge() votes and counts segment statistics in the same pass over the pixels, then writes the
// panoptic map in a second pass (in place over the instance ids when the output is int32).
//
// All views are 4-D [B, C, H, W] with element strides. Outputs are contiguous [B, 1, H, W].
// Batches run image-parallel when there are at least as many images as threads (each image on one
// thread), else image by image with row parallelism; the results are identical either way.
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

#include "pdl_post/center_nms.h"
#include "pdl_post/common.h"
#include "pdl_post/majority_vote.h"

namespace pdl_post {

struct CenterOptions {
  double threshold = 0.1;
  int64_t nms_kernel = 7;
  int64_t top_k = 200;  // < 0 keeps all
  TopKMode topk_mode = TopKMode::kExact;
};

struct ImageCenters {
  std::vector<int64_t> y, x;
  std::vector<double> score;
};

struct ImageResult {
  ImageCenters centers;
  std::vector<Segment> segments;
};

// (min, max) over an integer label array [B, 1, H, W]; (0, -1) when it is empty.
std::pair<int64_t, int64_t> label_range(const StridedView& sem, int num_threads);

std::vector<ImageCenters> find_centers(const StridedView& ctr, const CenterOptions& options,
                                       int num_threads);

// instance: int32 [B, 1, H, W] contiguous; off: [B, 2, H, W]. Thing pixels are
// thing_mask != 0 (uint8 [B, 1, H, W]) when thing_mask.data is set, else sem in thing_ids.
void group_pixels(const StridedView& sem, const std::vector<int64_t>& thing_ids,
                  const StridedView& thing_mask, const StridedView& off,
                  const std::vector<ImageCenters>& centers, const StridedView& instance,
                  int num_threads);

// out: int32/int64 [B, 1, H, W] contiguous. logits may have data == nullptr; centers may be empty
// (thing scores are then 1 before the logits factor).
std::vector<std::vector<Segment>> fuse(const StridedView& sem, const StridedView& instance,
                                       const std::vector<int64_t>& num_instances, int64_t max_label,
                                       const FuseParams& params, const StridedView& logits,
                                       const std::vector<ImageCenters>& centers,
                                       const StridedView& out, int num_threads);

// The whole pipeline. thing_mask may have data == nullptr (thing pixels then come from thing_ids).
std::vector<ImageResult> merge(const StridedView& sem, const StridedView& ctr,
                               const StridedView& off, const StridedView& thing_mask,
                               const StridedView& logits, int64_t max_label,
                               const CenterOptions& center_options, const FuseParams& params,
                               const StridedView& out, int num_threads);

}  // namespace pdl_post
