// CPU fusion: segment statistics, majority vote, stuff filter, panoptic write, segment scores.
#include <algorithm>
#include <atomic>
#include <limits>
#include <string>
#include <vector>

#include "pdl_post/majority_vote.h"
#include "pdl_post/parallel_region.h"
#include "pdl_post/semantic_argmax.h"

namespace pdl_post {
namespace {

// Per-thread instance x class histograms up to this many counters in total.
constexpr int64_t kDensePairBudget = int64_t{1} << 22;
// Per-thread score tables (16 bytes a segment) up to this many bytes in all, one thread at least.
constexpr int64_t kScoreTableBytes = int64_t{256} << 20;

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

// Majority class of every instance from a counting sort of its pixels' classes.
template <typename TSem>
std::vector<int64_t> majority_by_sorting(const SegmentStats& stats, const ClassIndex& classes,
                                         Plane<const TSem> sem, const int32_t* instance,
                                         int64_t height, int64_t width, int num_threads) {
  const int64_t K = stats.num_instances, C = stats.num_classes;
  const int threads = row_threads(num_threads, height);
  // Per strip and instance: where the strip's pixels of the instance start in `grouped`.
  std::vector<std::vector<int64_t>> counts(threads, std::vector<int64_t>(K + 1, 0));
  ParallelRegion instance_counts;
#pragma omp parallel for num_threads(threads) if (threads > 1) schedule(static, 1)
  for (int t = 0; t < threads; ++t) {
    instance_counts.run([&] {
      for (int64_t y = height * t / threads; y < height * (t + 1) / threads; ++y) {
        for (int64_t x = 0; x < width; ++x) ++counts[t][instance[y * width + x]];
      }
    });
  }
  instance_counts.rethrow();
  std::vector<int64_t> start(K + 2, 0);
  for (int64_t k = 1; k <= K; ++k) start[k + 1] = start[k] + stats.area[k];
  for (int64_t k = 1; k <= K; ++k) {
    int64_t position = start[k];
    for (int t = 0; t < threads; ++t) {
      const int64_t n = counts[t][k];
      counts[t][k] = position;
      position += n;
    }
  }
  std::vector<int32_t> grouped(static_cast<size_t>(start[K + 1]));
  ParallelRegion grouping;
#pragma omp parallel for num_threads(threads) if (threads > 1) schedule(static, 1)
  for (int t = 0; t < threads; ++t) {
    grouping.run([&] {
      int64_t* position = counts[t].data();
      for (int64_t y = height * t / threads; y < height * (t + 1) / threads; ++y) {
        for (int64_t x = 0; x < width; ++x) {
          const int32_t inst = instance[y * width + x];
          if (inst > 0) {
            grouped[position[inst]++] = static_cast<int32_t>(classes.index(sem(y, x)));
          }
        }
      }
    });
  }
  grouping.rethrow();
  std::vector<int64_t> class_of(K + 1, -1);
  ParallelRegion majorities;
#pragma omp parallel num_threads(threads) if (threads > 1)
  {
    std::vector<int64_t> histogram;  // per thread, taken in the first instance (inside run)
    std::vector<int32_t> touched;
#pragma omp for schedule(dynamic, 4)
    for (int64_t k = 1; k <= K; ++k) {
      if (stats.area[k] == 0) continue;
      majorities.run([&] {
        histogram.resize(static_cast<size_t>(C));
        for (int64_t i = start[k]; i < start[k + 1]; ++i) {
          if (histogram[grouped[i]]++ == 0) touched.push_back(grouped[i]);
        }
        int64_t best = -1, best_count = 0;
        for (int32_t c : touched) {
          if (histogram[c] > best_count || (histogram[c] == best_count && c < best)) {
            best = c;
            best_count = histogram[c];
          }
          histogram[c] = 0;
        }
        touched.clear();
        class_of[k] = best;
      });
    }
  }
  majorities.rethrow();
  return class_of;
}

template <typename TL, typename TSem, typename TOut>
void accumulate_probabilities(const StridedView& logits, Plane<const TSem> sem,
                              const int32_t* instance, const ClassIndex& classes,
                              const FuseTables<TOut>& tables,
                              const std::vector<int64_t>& slot_of_instance,
                              const std::vector<int64_t>& slot_of_class, int64_t height,
                              int64_t width, int64_t num_slots, std::vector<double>& sums,
                              int num_threads) {
  const Plane<const TL> plane = plane_of<const TL>(logits, 0, 0);
  const int64_t channels = logits.channels();
  const int64_t stride_c = logits.strides[1], stride_x = logits.strides[3];
  const int64_t blocks = (height + kScoreBlockRows - 1) / kScoreBlockRows;
  // Each block keeps only the slots its pixels touch (at most its pixel count): blocks x slots
  // partial sums would take gigabytes when every pixel is its own instance (top_k=None).
  std::vector<std::vector<int64_t>> block_slots(static_cast<size_t>(blocks));
  std::vector<std::vector<double>> block_sums(static_cast<size_t>(blocks));
  // Per thread, the current block's sum per slot, valid where last_block names the block: 16
  // bytes a slot, so the threads share kScoreTableBytes when slots abound (the sums do not
  // depend on the thread count). Allocated here: an allocation failure raises, not aborts.
  const int64_t table_bytes = std::max<int64_t>(num_slots, 1) * int64_t{2 * sizeof(int64_t)};
  const int threads = static_cast<int>(
      std::clamp<int64_t>(kScoreTableBytes / table_bytes, 1, std::max(num_threads, 1)));
  std::vector<std::vector<double>> acc(threads, std::vector<double>(num_slots));
  std::vector<std::vector<int64_t>> last_block(threads, std::vector<int64_t>(num_slots, -1));
  std::atomic<int64_t> next_block{0};  // blocks handed out in order, one at a time
  ParallelRegion probability_threads;
#pragma omp parallel for num_threads(threads) if (threads > 1) schedule(static, 1)
  for (int t = 0; t < threads; ++t) {
    probability_threads.run([&] {
      // One run of a row: each pixel's slot (-1: not scored) and target class, its softmax terms.
      const size_t run = static_cast<size_t>(std::min(width, kLogitRunPixels));
      std::vector<int64_t> slots(run), targets(run);
      std::vector<double> maxima(run), totals(run), mines(run);
      double* sum_of = acc[t].data();
      int64_t* block_of = last_block[t].data();
      for (int64_t blk = next_block++; blk < blocks; blk = next_block++) {
        std::vector<int64_t>& touched = block_slots[blk];
        const int64_t y1 = std::min(height, (blk + 1) * kScoreBlockRows);
        for (int64_t y = blk * kScoreBlockRows; y < y1; ++y) {
          for (int64_t x0 = 0; x0 < width; x0 += kLogitRunPixels) {
            const int64_t n = std::min(width - x0, kLogitRunPixels);
            bool any = false;
            for (int64_t i = 0; i < n; ++i) {
              const int64_t x = x0 + i;
              const int32_t inst = instance[y * width + x];
              const int64_t c = inst > 0 ? tables.class_of[inst] : classes.index(sem(y, x));
              slots[i] = inst > 0 ? slot_of_instance[inst] : slot_of_class[c];
              targets[i] = slots[i] < 0 ? -1 : classes.label(c);
              any |= slots[i] >= 0;
            }
            if (!any) continue;
            softmax_run_cpu(&plane(y, x0), stride_c, stride_x, n, channels, targets.data(),
                            maxima.data(), totals.data(), mines.data());
            // Into the block's sums in row-major order, as softmax_probability one pixel at a time.
            for (int64_t i = 0; i < n; ++i) {
              const int64_t slot = slots[i];
              if (slot < 0) continue;
              if (block_of[slot] != blk) {
                block_of[slot] = blk;
                sum_of[slot] = 0.0;
                touched.push_back(slot);
              }
              sum_of[slot] += mines[i] / totals[i];
            }
          }
        }
        block_sums[blk].reserve(touched.size());
        for (int64_t slot : touched) block_sums[blk].push_back(sum_of[slot]);
      }
    });
  }
  probability_threads.rethrow();
  // Blocks added in order; a slot a block did not touch would add +0.0 there, which changes
  // nothing (the sums are never -0.0).
  sums.assign(static_cast<size_t>(num_slots), 0.0);
  for (int64_t blk = 0; blk < blocks; ++blk) {
    for (size_t i = 0; i < block_slots[blk].size(); ++i) {
      sums[block_slots[blk][i]] += block_sums[blk][i];
    }
  }
}

}  // namespace

int64_t ClassIndex::compacted_index(int64_t label) const {
  return lower_bound_index(labels.data(), static_cast<int64_t>(labels.size()), label);
}

int64_t ClassIndex::find(int64_t label) const {
  if (dense) return (label >= 0 && label < size) ? label : -1;
  const int64_t at = lower_bound_index(labels.data(), static_cast<int64_t>(labels.size()), label);
  return (at < static_cast<int64_t>(labels.size()) && labels[at] == label) ? at : -1;
}

template <typename TSem>
ClassIndex make_class_index(Plane<const TSem> sem, int64_t height, int64_t width,
                            int64_t max_label) {
  ClassIndex ci;
  if (max_label < ClassIndex::kDenseLabelLimit) {
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
  if (ci.size > std::numeric_limits<int32_t>::max()) {
    throw ValueError("fuse: " + std::to_string(ci.size) + " distinct classes exceed int32");
  }
  return ci;
}

SegmentStats::SegmentStats(int64_t instances, int64_t classes, bool with_pairs)
    : num_instances(instances),
      num_classes(classes),
      dense_pairs(with_pairs),
      area(static_cast<size_t>(instances + 1), 0),
      unassigned(static_cast<size_t>(classes), 0) {
  if (with_pairs) pairs.assign(static_cast<size_t>((instances + 1) * classes), 0);
}

void SegmentStats::merge_from(const SegmentStats& other) {
  for (size_t i = 0; i < area.size(); ++i) area[i] += other.area[i];
  for (size_t i = 0; i < unassigned.size(); ++i) unassigned[i] += other.unassigned[i];
  for (size_t i = 0; i < pairs.size(); ++i) pairs[i] += other.pairs[i];
}

bool use_dense_pairs(int64_t num_instances, int64_t num_classes, int threads) {
  return (num_instances + 1) * num_classes * std::max(1, threads) <= kDensePairBudget;
}

template <typename TSem>
SegmentStats count_segments(Plane<const TSem> sem, const int32_t* instance, int64_t height,
                            int64_t width, int64_t num_instances, const ClassIndex& classes,
                            int num_threads) {
  const int threads = row_threads(num_threads, height);
  const bool dense = use_dense_pairs(num_instances, classes.size, threads);
  std::vector<SegmentStats> partial(threads, SegmentStats(num_instances, classes.size, dense));
  ParallelRegion count_threads;
#pragma omp parallel for num_threads(threads) if (threads > 1) schedule(static, 1)
  for (int t = 0; t < threads; ++t) {
    count_threads.run([&] {
      RunCounter counter(partial[t].counter());
      for (int64_t y = height * t / threads; y < height * (t + 1) / threads; ++y) {
        for (int64_t x = 0; x < width; ++x) {
          counter.add(instance[y * width + x], classes.index(sem(y, x)));
        }
      }
    });
  }
  count_threads.rethrow();
  for (int t = 1; t < threads; ++t) partial[0].merge_from(partial[t]);
  return std::move(partial[0]);
}

template <typename TSem, typename TOut>
FuseTables<TOut> resolve_segments(const SegmentStats& stats, const ClassIndex& classes,
                                  const FuseParams& params, Plane<const TSem> sem,
                                  const int32_t* instance, int64_t height, int64_t width,
                                  int num_threads) {
  const int64_t K = stats.num_instances, C = stats.num_classes;
  FuseTables<TOut> t;
  if (stats.dense_pairs) {
    t.class_of.assign(static_cast<size_t>(K + 1), -1);
    for (int64_t k = 1; k <= K; ++k) {
      if (stats.area[k] == 0) continue;
      const int64_t* row = stats.pairs.data() + k * C;
      t.class_of[k] = std::max_element(row, row + C) - row;  // first maximum = smallest class
    }
  } else {
    t.class_of = majority_by_sorting(stats, classes, sem, instance, height, width, num_threads);
  }
  // Things, numbered per class in centre order.
  t.instance_label.assign(static_cast<size_t>(K + 1), static_cast<TOut>(params.void_label));
  std::vector<int64_t> per_class(static_cast<size_t>(C), 0);
  for (int64_t k = 1; k <= K; ++k) {
    if (stats.area[k] == 0) continue;
    const int64_t c = t.class_of[k];
    const int64_t n = ++per_class[c];
    if (n >= params.label_divisor) {
      throw ValueError("label_divisor: class " + std::to_string(classes.label(c)) + " has " +
                       std::to_string(n) + " or more instances, which does not fit label_divisor=" +
                       std::to_string(params.label_divisor) + "; use a larger label_divisor");
    }
    t.instance_label[k] = checked_id<TOut>(classes.label(c), params.label_divisor, n);
    t.segments.push_back(Segment{static_cast<int64_t>(t.instance_label[k]), classes.label(c), true,
                                 stats.area[k], 1.0, k});
  }
  // Stuff: every non-thing class whose unassigned area reaches stuff_area.
  std::vector<uint8_t> is_thing(static_cast<size_t>(C), 0);
  for (int64_t id : params.thing_ids) {
    const int64_t c = classes.find(id);
    if (c >= 0) is_thing[c] = 1;
  }
  t.class_label.assign(static_cast<size_t>(C), static_cast<TOut>(params.void_label));
  for (int64_t c = 0; c < C; ++c) {
    const int64_t area = stats.unassigned[c];
    if (is_thing[c] || area == 0 || area < params.stuff_area) continue;
    t.class_label[c] = checked_id<TOut>(classes.label(c), params.label_divisor, 0);
    t.segments.push_back(
        Segment{static_cast<int64_t>(t.class_label[c]), classes.label(c), false, area, 1.0, 0});
  }
  return t;
}

template <typename TSem, typename TOut>
void write_panoptic(Plane<const TSem> sem, const int32_t* instance, const ClassIndex& classes,
                    const FuseTables<TOut>& tables, int64_t height, int64_t width, TOut* out,
                    int num_threads) {
  const TOut* instance_label = tables.instance_label.data();
  const TOut* class_label = tables.class_label.data();
  ParallelRegion panoptic_rows;
#pragma omp parallel for num_threads(num_threads) if (num_threads > 1) schedule(static)
  for (int64_t y = 0; y < height; ++y) {
    panoptic_rows.run([&] {
      for (int64_t x = 0; x < width; ++x) {
        const int64_t p = y * width + x;
        out[p] = panoptic_label(instance[p], classes.index(sem(y, x)), instance_label, class_label);
      }
    });
  }
  panoptic_rows.rethrow();
}

template <typename TSem, typename TOut>
void score_segments(Plane<const TSem> sem, const int32_t* instance, const ClassIndex& classes,
                    FuseTables<TOut>& tables, const std::vector<double>& center_scores,
                    const StridedView& logits, int64_t height, int64_t width, int num_threads) {
  for (Segment& s : tables.segments) {
    if (s.isthing && s.instance - 1 < static_cast<int64_t>(center_scores.size())) {
      s.score = center_scores[s.instance - 1];
    }
  }
  if (logits.data == nullptr) return;
  const int64_t K = static_cast<int64_t>(tables.class_of.size()) - 1;
  std::vector<int64_t> slot_of_instance(static_cast<size_t>(K + 1), -1);
  std::vector<int64_t> slot_of_class(tables.class_label.size(), -1);
  int64_t slots = 0;
  for (const Segment& s : tables.segments) {
    if (s.isthing) {
      slot_of_instance[s.instance] = slots++;
    } else {
      slot_of_class[classes.find(s.category_id)] = slots++;
    }
  }
  std::vector<double> sums;
  const int threads = std::max(1, num_threads);
  if (logits.dtype == DType::kFloat32) {
    accumulate_probabilities<float>(logits, sem, instance, classes, tables, slot_of_instance,
                                    slot_of_class, height, width, slots, sums, threads);
  } else {
    accumulate_probabilities<double>(logits, sem, instance, classes, tables, slot_of_instance,
                                     slot_of_class, height, width, slots, sums, threads);
  }
  for (size_t i = 0; i < tables.segments.size(); ++i) {
    Segment& s = tables.segments[i];
    s.score = reported_score(s.score * (sums[i] / static_cast<double>(s.area)));
  }
}

#define PDL_INSTANTIATE_LABEL(TSem)                                                               \
  template ClassIndex make_class_index<TSem>(Plane<const TSem>, int64_t, int64_t, int64_t);       \
  template SegmentStats count_segments<TSem>(Plane<const TSem>, const int32_t*, int64_t, int64_t, \
                                             int64_t, const ClassIndex&, int);
#define PDL_INSTANTIATE_LABEL_OUT(TSem, TOut)                                                      \
  template FuseTables<TOut> resolve_segments<TSem, TOut>(const SegmentStats&, const ClassIndex&,   \
                                                         const FuseParams&, Plane<const TSem>,     \
                                                         const int32_t*, int64_t, int64_t, int);   \
  template void write_panoptic<TSem, TOut>(Plane<const TSem>, const int32_t*, const ClassIndex&,   \
                                           const FuseTables<TOut>&, int64_t, int64_t, TOut*, int); \
  template void score_segments<TSem, TOut>(Plane<const TSem>, const int32_t*, const ClassIndex&,   \
                                           FuseTables<TOut>&, const std::vector<double>&,          \
                                           const StridedView&, int64_t, int64_t, int);
#define PDL_INSTANTIATE_ALL(TSem)          \
  PDL_INSTANTIATE_LABEL(TSem)              \
  PDL_INSTANTIATE_LABEL_OUT(TSem, int32_t) \
  PDL_INSTANTIATE_LABEL_OUT(TSem, int64_t)
PDL_INSTANTIATE_ALL(uint8_t)
PDL_INSTANTIATE_ALL(int16_t)
PDL_INSTANTIATE_ALL(int32_t)
PDL_INSTANTIATE_ALL(int64_t)

}  // namespace pdl_post
