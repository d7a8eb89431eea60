// Fusion of semantic labels and the instance map: majority vote, stuff-area filter, panoptic write.
//
// Algorithm (docs/merge-semantics.md steps 6-8):
//   1. one pass counts each instance's area and, for pixels without an instance, each class's area;
//   2. a counting sort groups the instance pixels' classes by instance (O(pixels) memory, no
//      K x C table), and each instance's most frequent class is read from a histogram (ties go to
//      the smallest class id);
//   3. instances are numbered per class in centre order (empty ones use no id); stuff classes whose
//      unassigned area reaches stuff_area keep class * label_divisor, everything else is void;
//   4. one pass writes every pixel through two small tables (instance -> id, class -> id).
// Class ids are used directly as table indices while they are small; very large ids are first
// compacted through the sorted list of the classes present (exotic data only), so nothing is capped.
#pragma once

#include <cstdint>
#include <vector>

#include "pdl_post/common.h"

namespace pdl_post {

struct FuseParams {
  std::vector<int64_t> thing_ids;
  int64_t label_divisor = 1000;
  int64_t stuff_area = 2048;
  int64_t void_label = -1;
};

struct Segment {
  int64_t id;
  int64_t category_id;
  bool isthing;
  int64_t area;
  double score;
  int64_t instance;  // 1-based instance for things, 0 for stuff
};

// Panoptic id of one pixel from its instance (0 = none) and its class's table entry.
template <typename TOut>
PDL_HOST_DEVICE TOut panoptic_label(int32_t instance, int64_t class_index, const TOut* instance_label,
                                    const TOut* class_label) {
  return instance > 0 ? instance_label[instance] : class_label[class_index];
}

// Optional inputs for segment scores: logits [C, H, W] of this image (data == nullptr: none) and
// each centre's heatmap value (empty: scores of things are 1).
struct ScoreInputs {
  StridedView logits;  // batch dimension already selected: shape [1, C, H, W]
  std::vector<double> center_scores;
};

// Fuse one image. `instance` is a contiguous H x W map with ids in [0, num_instances];
// `max_label` bounds the labels (from label_range). Writes `out` (contiguous H x W).
template <typename TSem, typename TOut>
std::vector<Segment> fuse_cpu(Plane<const TSem> sem, const int32_t* instance, int64_t height,
                              int64_t width, int64_t num_instances, int64_t max_label,
                              const FuseParams& params, const ScoreInputs& scores, TOut* out,
                              int num_threads);

}  // namespace pdl_post
