// CPU fusion: majority vote by counting sort, stuff-area filter, panoptic write, segment scores.
#include <algorithm>
#include <limits>
#include <string>
#include <vector>

#include "pdl_post/majority_vote.h"
#include "pdl_post/semantic_argmax.h"

namespace pdl_post {
namespace {

// Labels up to this bound index tables directly; larger ones are compacted first.
constexpr int64_t kDenseLabelLimit = int64_t{1} << 16;
// Score sums run over fixed row blocks, added in order: identical for every thread count.
constexpr int64_t kScoreBlockRows = 64;

struct ClassIndex {
  bool dense = true;
  int64_t size = 0;
  std::vector<int64_t> labels;  // sorted distinct labels (compacted mode only)

  int64_t index(int64_t label) const {
    if (dense) return label;
    return std::lower_bound(labels.begin(), labels.end(), label) - labels.begin();
  }
  int64_t label(int64_t index) const { return dense ? index : labels[index]; }
  int64_t find(int64_t label) const {  // -1 when absent
    if (dense) return label < size ? label : -1;
    auto it = std::lower_bound(labels.begin(), labels.end(), label);
    return (it != labels.end() && *it == label) ? it - labels.begin() : -1;
  }
};

template <typename TSem>
ClassIndex make_class_index(Plane<const TSem> sem, int64_t height, int64_t width, int64_t max_label) {
  ClassIndex ci;
  if (max_label < kDenseLabelLimit) {
    ci.size = max_label + 1;
    return ci;
  }
  ci.dense = false;
  ci.labels.reserve(static_cast<size_t>(height * width));
  for (int64_t y = 0; y < height; ++y)
    for (int64_t x = 0; x < width; ++x) ci.labels.push_back(static_cast<int64_t>(sem(y, x)));
  std::sort(ci.labels.begin(), ci.labels.end());
  ci.labels.erase(std::unique(ci.labels.begin(), ci.labels.end()), ci.labels.end());
  ci.size = static_cast<int64_t>(ci.labels.size());
  return ci;
}

template <typename TOut>
TOut checked_id(int64_t label, int64_t label_divisor, int64_t n) {
  const int64_t limit = std::numeric_limits<TOut>::max();
  if (label > (limit - n) / label_divisor) {
    throw ValueError("fuse: panoptic id " + std::to_string(label) + " * " +
                     std::to_string(label_divisor) + " + " + std::to_string(n) +
                     " overflows the output dtype");
  }
  return static_cast<TOut>(label * label_divisor + n);
}

template <typename TL, typename TSem>
void accumulate_scores(const StridedView& logits, Plane<const TSem> sem, const int32_t* instance,
                       const int64_t* class_of, const int64_t* slot_of_instance,
                       const int64_t* slot_of_class, const ClassIndex& ci, int64_t height,
                       int64_t width, int64_t num_slots, std::vector<double>& sums,
                       int num_threads) {
  const Plane<const TL> plane = plane_of<const TL>(logits, 0, 0);
  const int64_t channels = logits.channels();
  const int64_t blocks = (height + kScoreBlockRows - 1) / kScoreBlockRows;
  std::vector<double> partial(static_cast<size_t>(blocks * num_slots), 0.0);
#pragma omp parallel for num_threads(num_threads) if (num_threads > 1) schedule(dynamic, 1)
  for (int64_t blk = 0; blk < blocks; ++blk) {
    double* acc = partial.data() + blk * num_slots;
    const int64_t y1 = std::min(height, (blk + 1) * kScoreBlockRows);
    for (int64_t y = blk * kScoreBlockRows; y < y1; ++y) {
      for (int64_t x = 0; x < width; ++x) {
        const int64_t p = y * width + x;
        const int32_t inst = instance[p];
        const int64_t c = inst > 0 ? class_of[inst] : ci.index(static_cast<int64_t>(sem(y, x)));
        const int64_t slot = inst > 0 ? slot_of_instance[inst] : slot_of_class[c];
        if (slot < 0) continue;
        const int64_t target = ci.label(c);
        acc[slot] += softmax_probability(&plane(y, x), logits.strides[1], channels, target);
      }
    }
  }
  sums.assign(static_cast<size_t>(num_slots), 0.0);
  for (int64_t blk = 0; blk < blocks; ++blk)
    for (int64_t s = 0; s < num_slots; ++s) sums[s] += partial[blk * num_slots + s];
}

}  // namespace

template <typename TSem, typename TOut>
std::vector<Segment> fuse_cpu(Plane<const TSem> sem, const int32_t* instance, int64_t height,
                              int64_t width, int64_t num_instances, int64_t max_label,
                              const FuseParams& params, const ScoreInputs& scores, TOut* out,
                              int num_threads) {
  std::vector<Segment> segments;
  if (height * width == 0) return segments;
  const int threads = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(num_threads, height)));
  const int64_t K = num_instances;
  const ClassIndex ci = make_class_index(sem, height, width, max_label);
  const int64_t C = ci.size;

  if (C > std::numeric_limits<int32_t>::max()) {
    throw ValueError("fuse: " + std::to_string(C) + " distinct classes exceed the int32 class index");
  }
  // Pass 1: instance areas and unassigned class areas, per thread strip.
  std::vector<std::vector<int64_t>> inst_count(threads, std::vector<int64_t>(K + 1, 0));
  std::vector<std::vector<int64_t>> class_count(threads, std::vector<int64_t>(C, 0));
#pragma omp parallel for num_threads(threads) if (threads > 1) schedule(static, 1)
  for (int t = 0; t < threads; ++t) {
    int64_t* ic = inst_count[t].data();
    int64_t* cc = class_count[t].data();
    for (int64_t y = height * t / threads; y < height * (t + 1) / threads; ++y) {
      for (int64_t x = 0; x < width; ++x) {
        const int64_t p = y * width + x;
        const int32_t inst = instance[p];
        if (inst > 0) {
          ++ic[inst];
        } else {
          ++cc[ci.index(static_cast<int64_t>(sem(y, x)))];
        }
      }
    }
  }
  std::vector<int64_t> area(K + 1, 0), unassigned(C, 0);
  for (int t = 0; t < threads; ++t) {
    for (int64_t k = 0; k <= K; ++k) area[k] += inst_count[t][k];
    for (int64_t c = 0; c < C; ++c) unassigned[c] += class_count[t][c];
  }

  // Pass 2: counting sort of the instance pixels' classes by instance.
  std::vector<int64_t> start(K + 2, 0);
  for (int64_t k = 1; k <= K; ++k) start[k + 1] = start[k] + area[k];
  for (int t = threads - 1; t >= 0; --t) {  // thread t writes after threads < t
    for (int64_t k = 1; k <= K; ++k) {
      int64_t before = start[k];
      for (int u = 0; u < t; ++u) before += inst_count[u][k];
      inst_count[t][k] = before;
    }
  }
  std::vector<int32_t> grouped(static_cast<size_t>(start[K + 1]));
#pragma omp parallel for num_threads(threads) if (threads > 1) schedule(static, 1)
  for (int t = 0; t < threads; ++t) {
    int64_t* pos = inst_count[t].data();
    for (int64_t y = height * t / threads; y < height * (t + 1) / threads; ++y) {
      for (int64_t x = 0; x < width; ++x) {
        const int64_t p = y * width + x;
        const int32_t inst = instance[p];
        if (inst > 0) grouped[pos[inst]++] = static_cast<int32_t>(ci.index(sem(y, x)));
      }
    }
  }

  // Majority class of every instance: most frequent, ties to the smallest class.
  std::vector<int64_t> class_of(K + 1, -1);
#pragma omp parallel num_threads(threads) if (threads > 1)
  {
    std::vector<int64_t> histogram(C, 0);
    std::vector<int64_t> touched;
#pragma omp for schedule(dynamic, 4)
    for (int64_t k = 1; k <= K; ++k) {
      if (area[k] == 0) continue;
      for (int64_t i = start[k]; i < start[k + 1]; ++i) {
        if (histogram[grouped[i]]++ == 0) touched.push_back(grouped[i]);
      }
      int64_t best = -1, best_count = 0;
      for (int64_t c : touched) {
        if (histogram[c] > best_count || (histogram[c] == best_count && c < best)) {
          best = c;
          best_count = histogram[c];
        }
        histogram[c] = 0;
      }
      touched.clear();
      class_of[k] = best;
    }
  }

  // Ids: things numbered per class in centre order; stuff kept by area.
  std::vector<TOut> instance_label(K + 1, static_cast<TOut>(params.void_label));
  std::vector<int64_t> per_class_count(C, 0);
  for (int64_t k = 1; k <= K; ++k) {
    if (area[k] == 0) continue;
    const int64_t c = class_of[k];
    const int64_t n = ++per_class_count[c];
    if (n >= params.label_divisor) {
      throw ValueError("fuse: class " + std::to_string(ci.label(c)) + " has " + std::to_string(n) +
                       " or more instances, which does not fit label_divisor=" +
                       std::to_string(params.label_divisor) + "; use a larger label_divisor");
    }
    instance_label[k] = checked_id<TOut>(ci.label(c), params.label_divisor, n);
  }
  std::vector<uint8_t> is_thing(C, 0);
  for (int64_t t : params.thing_ids) {
    const int64_t c = ci.find(t);
    if (c >= 0) is_thing[c] = 1;
  }
  std::vector<TOut> class_label(C, static_cast<TOut>(params.void_label));
  std::vector<uint8_t> stuff_kept(C, 0);
  for (int64_t c = 0; c < C; ++c) {
    if (!is_thing[c] && unassigned[c] > 0 && unassigned[c] >= params.stuff_area) {
      stuff_kept[c] = 1;
      class_label[c] = checked_id<TOut>(ci.label(c), params.label_divisor, 0);
    }
  }

  // Pass 3: write.
#pragma omp parallel for num_threads(threads) if (threads > 1) schedule(static)
  for (int64_t y = 0; y < height; ++y) {
    for (int64_t x = 0; x < width; ++x) {
      const int64_t p = y * width + x;
      out[p] = panoptic_label(instance[p], ci.index(static_cast<int64_t>(sem(y, x))),
                              instance_label.data(), class_label.data());
    }
  }

  // Segments (and mean softmax scores when logits are given).
  std::vector<int64_t> slot_of_instance(K + 1, -1), slot_of_class(C, -1);
  int64_t slots = 0;
  for (int64_t k = 1; k <= K; ++k) {
    if (area[k] > 0) slot_of_instance[k] = slots++;
  }
  for (int64_t c = 0; c < C; ++c) {
    if (stuff_kept[c]) slot_of_class[c] = slots++;
  }
  std::vector<double> prob_sum;
  const bool have_logits = scores.logits.data != nullptr;
  if (have_logits) {
    if (scores.logits.dtype == DType::kFloat32) {
      accumulate_scores<float>(scores.logits, sem, instance, class_of.data(),
                               slot_of_instance.data(), slot_of_class.data(), ci, height, width,
                               slots, prob_sum, threads);
    } else {
      accumulate_scores<double>(scores.logits, sem, instance, class_of.data(),
                                slot_of_instance.data(), slot_of_class.data(), ci, height, width,
                                slots, prob_sum, threads);
    }
  }
  for (int64_t k = 1; k <= K; ++k) {
    if (area[k] == 0) continue;
    double score = k - 1 < static_cast<int64_t>(scores.center_scores.size())
                       ? scores.center_scores[k - 1]
                       : 1.0;
    if (have_logits) score *= prob_sum[slot_of_instance[k]] / static_cast<double>(area[k]);
    segments.push_back(Segment{static_cast<int64_t>(instance_label[k]), ci.label(class_of[k]), true,
                               area[k], score, k});
  }
  for (int64_t c = 0; c < C; ++c) {
    if (!stuff_kept[c]) continue;
    const double score =
        have_logits ? prob_sum[slot_of_class[c]] / static_cast<double>(unassigned[c]) : 1.0;
    segments.push_back(
        Segment{static_cast<int64_t>(class_label[c]), ci.label(c), false, unassigned[c], score, 0});
  }
  return segments;
}

#define PDL_INSTANTIATE_FUSE(TSem, TOut)                                                       \
  template std::vector<Segment> fuse_cpu<TSem, TOut>(Plane<const TSem>, const int32_t*, int64_t, \
                                                     int64_t, int64_t, int64_t, const FuseParams&, \
                                                     const ScoreInputs&, TOut*, int);
#define PDL_INSTANTIATE_FUSE_OUT(TSem) \
  PDL_INSTANTIATE_FUSE(TSem, int32_t)  \
  PDL_INSTANTIATE_FUSE(TSem, int64_t)
PDL_INSTANTIATE_FUSE_OUT(uint8_t)
PDL_INSTANTIATE_FUSE_OUT(int16_t)
PDL_INSTANTIATE_FUSE_OUT(int32_t)
PDL_INSTANTIATE_FUSE_OUT(int64_t)

}  // namespace pdl_post
