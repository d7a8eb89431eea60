// Fusion of semantic labels and instances: majority vote, stuff-area filter, panoptic write.
//
// Algorithm (docs/merge-semantics.md steps 6-8), in the stage split of deeplab2's GPU merge:
//   1. per-pixel statistics (SegmentStats::add): each instance's area and, per class, the area of
//      pixels without an instance; while K x C is small, also the instance x class histogram;
//   2. per-instance vote (resolve_segments): the most frequent class of each instance (ties to the
//      smallest class). Without the dense histogram a counting sort groups the instance pixels'
//      classes by instance first, so memory stays O(pixels) however many instances and classes;
//      instances are numbered per class in centre order (empty ones use no id) and stuff classes
//      whose unassigned area reaches stuff_area keep class * label_divisor, the rest is void;
//   3. per-pixel write (panoptic_label) through two small tables: instance -> id, class -> id.
// Labels are table indices directly while they are small (ClassIndex); very large label values
// are first compacted through the sorted list of those present, so nothing is capped.
#pragma once

#include <cstdint>
#include <limits>
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

// A segment's score as every path reports it: a NaN score (NaN or infinite logits) is the one
// positive quiet NaN, since the sign of a NaN follows the order of the operations that made it,
// which the paths do not share.
inline double reported_score(double score) {
  return score == score ? score : std::numeric_limits<double>::quiet_NaN();
}

// Maps label values to table indices: the value itself below kDenseLabelLimit, else its rank
// among the labels present in the image.
struct ClassIndex {
  static constexpr int64_t kDenseLabelLimit = int64_t{1} << 16;
  bool dense = true;
  int64_t size = 0;
  std::vector<int64_t> labels;  // sorted distinct labels (compacted mode only)

  int64_t index(int64_t label) const { return dense ? label : compacted_index(label); }
  int64_t label(int64_t index) const { return dense ? index : labels[index]; }
  int64_t find(int64_t label) const;  // -1 when absent
  int64_t compacted_index(int64_t label) const;
};

template <typename TSem>
ClassIndex make_class_index(Plane<const TSem> sem, int64_t height, int64_t width,
                            int64_t max_label);

// Raw view of one SegmentStats for hot loops (no vector indirection per pixel).
struct SegmentCounter {
  int64_t* area = nullptr;
  int64_t* unassigned = nullptr;
  int64_t* pairs = nullptr;  // nullptr unless dense pairs are kept
  int64_t num_classes = 0;

  PDL_HOST_DEVICE void add(int32_t instance, int64_t class_index, int64_t count = 1) const {
    if (instance > 0) {
      area[instance] += count;
      if (pairs) pairs[instance * num_classes + class_index] += count;
    } else {
      unassigned[class_index] += count;
    }
  }
};

// Counts runs of equal (instance, class) pixels before adding them: neighbouring pixels mostly
// agree, and one add per run avoids a dependent memory increment per pixel.
class RunCounter {
 public:
  explicit RunCounter(const SegmentCounter& counter) : counter_(counter) {}
  ~RunCounter() { flush(); }
  void add(int32_t instance, int64_t class_index, int64_t count = 1) {
    if (instance == instance_ && class_index == class_index_) {
      length_ += count;
      return;
    }
    flush();
    instance_ = instance;
    class_index_ = class_index;
    length_ = count;
  }
  void flush() {
    if (length_ > 0) counter_.add(instance_, class_index_, length_);
    length_ = 0;
  }

 private:
  SegmentCounter counter_;
  int32_t instance_ = 0;
  int64_t class_index_ = 0;
  int64_t length_ = 0;
};

// Step 1 accumulators of one thread.
struct SegmentStats {
  int64_t num_instances = 0, num_classes = 0;
  bool dense_pairs = false;
  std::vector<int64_t> area;        // [K + 1]
  std::vector<int64_t> unassigned;  // [C]: pixels of each class without an instance
  std::vector<int64_t> pairs;       // [(K + 1) * C] when dense_pairs

  SegmentStats(int64_t instances, int64_t classes, bool with_pairs);
  SegmentCounter counter() {
    return SegmentCounter{area.data(), unassigned.data(), dense_pairs ? pairs.data() : nullptr,
                          num_classes};
  }
  void merge_from(const SegmentStats& other);
};

// Whether the instance x class histogram is small enough to keep per thread.
bool use_dense_pairs(int64_t num_instances, int64_t num_classes, int threads);

// Panoptic id of one pixel from its instance (0 = none) and its class's table entry.
template <typename TOut>
PDL_HOST_DEVICE TOut panoptic_label(int32_t instance, int64_t class_index,
                                    const TOut* instance_label, const TOut* class_label) {
  return instance > 0 ? instance_label[instance] : class_label[class_index];
}

// Step 2 result: the lookup tables of step 3 and the segment list (scores still 1).
template <typename TOut>
struct FuseTables {
  std::vector<TOut> instance_label;  // [K + 1]
  std::vector<TOut> class_label;     // [C]
  std::vector<int64_t> class_of;     // [K + 1] majority class index (-1 for empty instances)
  std::vector<Segment> segments;     // things in centre order, then stuff by class
};

// Step 2. Without dense pairs the instance map and labels are read once more (counting sort).
template <typename TSem, typename TOut>
FuseTables<TOut> resolve_segments(const SegmentStats& stats, const ClassIndex& classes,
                                  const FuseParams& params, Plane<const TSem> sem,
                                  const int32_t* instance, int64_t height, int64_t width,
                                  int num_threads);

// Step 1 on a given instance map (the fuse stage on its own).
template <typename TSem>
SegmentStats count_segments(Plane<const TSem> sem, const int32_t* instance, int64_t height,
                            int64_t width, int64_t num_instances, const ClassIndex& classes,
                            int num_threads);

// Step 3. `out` may alias `instance` (int32 output written in place).
template <typename TSem, typename TOut>
void write_panoptic(Plane<const TSem> sem, const int32_t* instance, const ClassIndex& classes,
                    const FuseTables<TOut>& tables, int64_t height, int64_t width, TOut* out,
                    int num_threads);

// Score sums with logits run over blocks of this many rows, a sequential sum per segment in
// row-major order and the blocks added in order: identical for every thread count, and on the
// GPU (cpp/cuda/fusion.cu), whose blocks fold in parallel (small blocks: short serial chains
// there; the CPU keeps each block's sums only for the segments the block touches).
constexpr int64_t kScoreBlockRows = 4;

// Segment scores: heatmap value at the centre (things), times the mean softmax probability of the
// segment's class over its pixels when logits [1, C, H, W] are given (data == nullptr: none).
template <typename TSem, typename TOut>
void score_segments(Plane<const TSem> sem, const int32_t* instance, const ClassIndex& classes,
                    FuseTables<TOut>& tables, const std::vector<double>& center_scores,
                    const StridedView& logits, int64_t height, int64_t width, int num_threads);

}  // namespace pdl_post
