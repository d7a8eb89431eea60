// CPU batch driver: dtype dispatch, image- or row-parallel scheduling, stage composition.
#include <algorithm>
#include <atomic>
#include <limits>
#include <string>
#include <type_traits>

#include "pdl_post/offset_voting.h"
#include "pdl_post/parallel_region.h"
#include "pdl_post/pipeline.h"

#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__unix__) || defined(__APPLE__)
#include <pthread.h>
#endif

namespace pdl_post {

bool openmp_enabled() {
#ifdef _OPENMP
  return true;
#else
  return false;
#endif
}

namespace {

// fork(): GNU OpenMP keeps a pool of worker threads for each thread that leads teams. A child of
// fork() has only the thread that forked and, if that thread led a team in the parent (ours, or
// torch's: its Linux wheels load the same libgomp), its pool, listing workers that were not
// copied: the child's next team waits for them for ever (tests/test_fork.py; torch's own ops
// hang there too). So the forking thread's pool is released before every fork
// (omp_pause_resource_all joins its workers; the parent's next region starts new ones, tens of
// microseconds) and the child starts a pool of its own. Where it cannot be released (a fork from
// inside a parallel region, a runtime without omp_pause_resource_all, or the test hook) the child
// runs every region on its calling thread instead: the same answers.
std::atomic<bool> release_pool_at_fork{true};  // set_release_pool_at_fork (tests)
thread_local bool pool_kept_at_fork = false;   // the forking thread's, copied into the child
std::atomic<bool> single_threaded_child{false};

[[maybe_unused]] void before_fork() {
#if defined(_OPENMP) && defined(PDL_POST_HAVE_OMP_PAUSE)
  pool_kept_at_fork = !release_pool_at_fork.load() || omp_pause_resource_all(omp_pause_hard) != 0;
#else
  pool_kept_at_fork = true;
#endif
}

[[maybe_unused]] void in_child_after_fork() {
  if (pool_kept_at_fork) single_threaded_child.store(true);
}

[[maybe_unused]] const bool fork_handlers_registered = [] {
#if defined(_OPENMP) && (defined(__unix__) || defined(__APPLE__))
  return pthread_atfork(before_fork, nullptr, in_child_after_fork) == 0;
#else
  return false;
#endif
}();

}  // namespace

bool single_threaded_after_fork() { return single_threaded_child.load(std::memory_order_relaxed); }

bool set_release_pool_at_fork(bool release) { return release_pool_at_fork.exchange(release); }

int resolve_threads(int requested) {
#ifdef _OPENMP
  if (single_threaded_after_fork()) return 1;
  return requested > 0 ? requested : std::max(1, omp_get_max_threads());
#else
  (void)requested;
  return 1;
#endif
}

namespace {

// body(b, threads_for_this_image) for every image: image-parallel when there are at least as many
// images as threads, else image by image with at most one thread per row (images of `height`
// rows: a request beyond the work starts no idle threads, which by the ten thousand would fail
// to start at all). The first error (in image order) is rethrown.
template <typename F>
void for_each_image(int64_t batch, int64_t height, int threads, F&& body) {
  if (batch > 1 && threads > 1 && batch >= threads) {
    ParallelRegion images;
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1)
    for (int64_t b = 0; b < batch; ++b) images.run([&] { body(b, 1); }, b);
    images.rethrow();
  } else {
    for (int64_t b = 0; b < batch; ++b) body(b, row_threads(threads, height));
  }
}

template <typename T>
ImageCenters centers_of_image(const StridedView& ctr, int64_t b, const CenterOptions& options,
                              int threads) {
  const int64_t width = ctr.width();
  std::vector<Peak> peaks =
      find_peaks_cpu<T>(plane_of<const T>(ctr, b, 0), ctr.height(), width,
                        static_cast<T>(options.threshold), options.nms_kernel, threads);
  select_top_k(peaks, options.top_k, options.topk_mode);
  ImageCenters centers;
  for (const Peak& p : peaks) {
    centers.y.push_back(p.index / width);
    centers.x.push_back(p.index % width);
    centers.score.push_back(p.score);
  }
  return centers;
}

ImageCenters find_image_centers(const StridedView& ctr, int64_t b, const CenterOptions& options,
                                int threads) {
  return with_float_type(ctr.dtype, "ctr", [&](auto tag) {
    return centers_of_image<decltype(tag)>(ctr, b, options, threads);
  });
}

// Storage behind ThingClasses: a byte table for ids below 2^16, else only the sorted ids.
struct ThingTable {
  static constexpr int64_t kMaxTableSize = int64_t{1} << 16;
  std::vector<uint8_t> bytes;
  std::vector<int64_t> sorted;
  bool use_table;

  explicit ThingTable(const std::vector<int64_t>& thing_ids) : sorted(thing_ids) {
    std::sort(sorted.begin(), sorted.end());
    sorted.erase(std::unique(sorted.begin(), sorted.end()), sorted.end());
    // Compared before adding 1: the largest id may be INT64_MAX.
    use_table = sorted.empty() || sorted.back() < kMaxTableSize;
    if (use_table) {
      const int64_t size = sorted.empty() ? 0 : sorted.back() + 1;
      bytes.assign(static_cast<size_t>(size), 0);
      for (int64_t t : sorted) bytes[t] = 1;  // ids are validated >= 0
    }
  }
  ThingClasses view() const {
    return ThingClasses{use_table ? bytes.data() : nullptr, static_cast<int64_t>(bytes.size()),
                        sorted.data(), static_cast<int64_t>(sorted.size())};
  }
};

// Where thing pixels come from: a mask plane, or labels looked up in the thing classes.
struct ThingSource {
  Plane<const uint8_t> mask;  // mask.data == nullptr: use the classes
  ThingClasses classes;
};

// Votes of rows [y0, y1) of one image; with kCount, step 1 of the fusion in the same pass.
// Thing pixels come from the mask (kFromMask) or from the labels and the thing table.
template <bool kFromMask, bool kCount, typename TSem, typename TOff>
void vote_rows(Plane<const TSem> sem, const ThingSource& things, Plane<const TOff> dy,
               Plane<const TOff> dx, int64_t y0, int64_t y1, int64_t width, CenterIndex& index,
               int32_t* instance, const ClassIndex* classes, SegmentStats* stats) {
  const ThingClasses thing_classes = things.classes;
  RunCounter counter(kCount ? stats->counter() : SegmentCounter{});
  const bool dense_classes = kCount && classes->dense;
  const bool have_centers = index.size() > 0;
  CenterIndex::Cache cache;
  for (int64_t y = y0; y < y1; ++y) {
    int32_t* out = instance + y * width;
    for (int64_t x = 0; x < width;) {
      const int64_t label = sem.data ? static_cast<int64_t>(sem(y, x)) : 0;
      if (!kFromMask && !thing_classes.contains(label)) {
        // A run of one non-thing label (stuff regions are long runs): no votes, one count.
        int64_t end = x + 1;
        while (end < width && static_cast<int64_t>(sem(y, end)) == label) ++end;
        std::fill(out + x, out + end, 0);
        if constexpr (kCount)
          counter.add(0, dense_classes ? label : classes->index(label), end - x);
        x = end;
        continue;
      }
      const bool thing = kFromMask ? things.mask(y, x) != 0 : true;
      const int32_t inst =
          thing && have_centers ? vote_pixel(y, x, dy(y, x), dx(y, x), index, cache) : 0;
      out[x] = inst;
      if constexpr (kCount) counter.add(inst, dense_classes ? label : classes->index(label));
      ++x;
    }
  }
}

template <bool kCount, typename TSem, typename TOff>
void vote_rows_any_source(Plane<const TSem> sem, const ThingSource& things, Plane<const TOff> dy,
                          Plane<const TOff> dx, int64_t y0, int64_t y1, int64_t width,
                          CenterIndex& index, int32_t* instance, const ClassIndex* classes,
                          SegmentStats* stats) {
  if (things.mask.data) {
    vote_rows<true, kCount>(sem, things, dy, dx, y0, y1, width, index, instance, classes, stats);
  } else {
    vote_rows<false, kCount>(sem, things, dy, dx, y0, y1, width, index, instance, classes, stats);
  }
}

template <typename TSem, typename TOff>
void vote_image(Plane<const TSem> sem, const ThingSource& things, Plane<const TOff> dy,
                Plane<const TOff> dx, int64_t height, int64_t width, CenterIndex& index,
                int32_t* instance, int threads) {
  const int64_t strips = row_strips(height, threads);
  ParallelRegion vote_strips;
#pragma omp parallel for num_threads(threads) if (threads > 1) schedule(dynamic, 1)
  for (int64_t s = 0; s < strips; ++s) {
    vote_strips.run([&] {
      vote_rows_any_source<false>(sem, things, dy, dx, height * s / strips,
                                  height * (s + 1) / strips, width, index, instance, nullptr,
                                  nullptr);
    });
  }
  vote_strips.rethrow();
}

// Fusion steps 2-3 (and scores) once the statistics exist; `instance` may be `out` itself.
template <typename TSem, typename TOut>
std::vector<Segment> finish_fusion(Plane<const TSem> sem, const int32_t* instance,
                                   const SegmentStats& stats, const ClassIndex& classes,
                                   const FuseParams& params, const std::vector<double>& scores,
                                   const StridedView& logits, int64_t height, int64_t width,
                                   TOut* out, int threads) {
  FuseTables<TOut> tables =
      resolve_segments<TSem, TOut>(stats, classes, params, sem, instance, height, width, threads);
  score_segments(sem, instance, classes, tables, scores, logits, height, width, threads);
  write_panoptic(sem, instance, classes, tables, height, width, out, threads);
  return std::move(tables.segments);
}

template <typename TSem, typename TOff, typename TOut>
std::vector<Segment> merge_image(Plane<const TSem> sem, const ThingSource& things,
                                 Plane<const TOff> dy, Plane<const TOff> dx, int64_t height,
                                 int64_t width, const ImageCenters& centers, int64_t max_label,
                                 const FuseParams& params, const StridedView& logits, TOut* out,
                                 int threads) {
  if (height * width == 0) return {};
  CenterIndex index(height, width, centers.y, centers.x);
  const ClassIndex classes = make_class_index(sem, height, width, max_label);
  const int64_t K = index.size();
  const int64_t strips = row_strips(height, threads);
  const bool dense = use_dense_pairs(K, classes.size, static_cast<int>(strips));
  std::vector<int32_t> scratch;
  int32_t* instance;
  if constexpr (std::is_same_v<TOut, int32_t>) {
    instance = out;  // instance ids first, panoptic ids written over them
  } else {
    scratch.resize(static_cast<size_t>(height * width));
    instance = scratch.data();
  }
  std::vector<SegmentStats> partial(static_cast<size_t>(strips),
                                    SegmentStats(K, classes.size, dense));
  ParallelRegion count_strips;
#pragma omp parallel for num_threads(threads) if (threads > 1) schedule(dynamic, 1)
  for (int64_t s = 0; s < strips; ++s) {
    count_strips.run([&] {
      vote_rows_any_source<true>(sem, things, dy, dx, height * s / strips,
                                 height * (s + 1) / strips, width, index, instance, &classes,
                                 &partial[s]);
    });
  }
  count_strips.rethrow();
  for (int64_t s = 1; s < strips; ++s) partial[0].merge_from(partial[s]);
  return finish_fusion(sem, instance, partial[0], classes, params, centers.score, logits, height,
                       width, out, threads);
}

template <typename TSem, typename TOut>
std::vector<Segment> fuse_image(Plane<const TSem> sem, const int32_t* instance, int64_t height,
                                int64_t width, int64_t num_instances, int64_t max_label,
                                const FuseParams& params, const std::vector<double>& scores,
                                const StridedView& logits, TOut* out, int threads) {
  if (height * width == 0) return {};
  const ClassIndex classes = make_class_index(sem, height, width, max_label);
  const SegmentStats stats =
      count_segments(sem, instance, height, width, num_instances, classes, threads);
  return finish_fusion(sem, instance, stats, classes, params, scores, logits, height, width, out,
                       threads);
}

}  // namespace

std::pair<int64_t, int64_t> label_range(const StridedView& sem, int num_threads) {
  const IeeeFloatModes float_modes;  // the calling thread's (float_mode.h)
  const int64_t height = sem.height(), width = sem.width();
  const int64_t rows = sem.batch() * height;
  if (rows * width == 0) return {0, -1};
  const int threads = row_threads(resolve_threads(num_threads), rows);
  return with_label_type(sem.dtype, "sem", [&](auto tag) {
    using TSem = decltype(tag);
    TSem lo = std::numeric_limits<TSem>::max(), hi = std::numeric_limits<TSem>::min();
    ParallelRegion range_rows;
#pragma omp parallel for num_threads(threads) if (threads > 1) schedule(static) \
    reduction(min : lo) reduction(max : hi)
    for (int64_t r = 0; r < rows; ++r) {
      range_rows.run([&] {
        const Plane<const TSem> plane = plane_of<const TSem>(sem, r / height, 0);
        const TSem* row = plane.row(r % height);
        if (plane.stride_x == 1) {  // vectorisable
          for (int64_t x = 0; x < width; ++x) {
            lo = std::min(lo, row[x]);
            hi = std::max(hi, row[x]);
          }
        } else {
          for (int64_t x = 0; x < width; ++x) {
            lo = std::min(lo, row[x * plane.stride_x]);
            hi = std::max(hi, row[x * plane.stride_x]);
          }
        }
      });
    }
    range_rows.rethrow();
    return std::pair<int64_t, int64_t>{lo, hi};
  });
}

std::vector<ImageCenters> find_centers(const StridedView& ctr, const CenterOptions& options,
                                       int num_threads) {
  const IeeeFloatModes float_modes;  // the calling thread's (float_mode.h)
  std::vector<ImageCenters> result(static_cast<size_t>(ctr.batch()));
  for_each_image(
      ctr.batch(), ctr.height(), resolve_threads(num_threads),
      [&](int64_t b, int threads) { result[b] = find_image_centers(ctr, b, options, threads); });
  return result;
}

void group_pixels(const StridedView& sem, const std::vector<int64_t>& thing_ids,
                  const StridedView& thing_mask, const StridedView& off,
                  const std::vector<ImageCenters>& centers, const StridedView& instance,
                  int num_threads) {
  const IeeeFloatModes float_modes;  // the calling thread's (float_mode.h)
  const ThingTable table(thing_ids);
  const int64_t height = off.height(), width = off.width();
  const DType sem_dtype = sem.data ? sem.dtype : DType::kUInt8;
  for_each_image(
      off.batch(), off.height(), resolve_threads(num_threads), [&](int64_t b, int threads) {
        const ThingSource things{thing_mask.data ? plane_of<const uint8_t>(thing_mask, b, 0)
                                                 : Plane<const uint8_t>{nullptr, 0, 0},
                                 table.view()};
        CenterIndex index(height, width, centers[b].y, centers[b].x);
        int32_t* out = static_cast<int32_t*>(instance.data) + b * height * width;
        with_label_type(sem_dtype, "sem", [&](auto sem_tag) {
          using TSem = decltype(sem_tag);
          const Plane<const TSem> labels =
              sem.data ? plane_of<const TSem>(sem, b, 0) : Plane<const TSem>{nullptr, 0, 0};
          with_float_type(off.dtype, "off", [&](auto off_tag) {
            using TOff = decltype(off_tag);
            vote_image(labels, things, plane_of<const TOff>(off, b, 0),
                       plane_of<const TOff>(off, b, 1), height, width, index, out, threads);
          });
        });
      });
}

std::vector<std::vector<Segment>> fuse(const StridedView& sem, const StridedView& instance,
                                       const std::vector<int64_t>& num_instances, int64_t max_label,
                                       const FuseParams& params, const StridedView& logits,
                                       const std::vector<ImageCenters>& centers,
                                       const StridedView& out, int num_threads) {
  const IeeeFloatModes float_modes;  // the calling thread's (float_mode.h)
  std::vector<std::vector<Segment>> result(static_cast<size_t>(sem.batch()));
  const int64_t height = sem.height(), width = sem.width();
  for_each_image(
      sem.batch(), sem.height(), resolve_threads(num_threads), [&](int64_t b, int threads) {
        const int32_t* inst = static_cast<const int32_t*>(instance.data) + b * height * width;
        const std::vector<double> no_scores;
        const std::vector<double>& scores = centers.empty() ? no_scores : centers[b].score;
        result[b] = with_label_type(sem.dtype, "sem", [&](auto sem_tag) {
          using TSem = decltype(sem_tag);
          return with_output_type(out.dtype, [&](auto out_tag) {
            using TOut = decltype(out_tag);
            return fuse_image(plane_of<const TSem>(sem, b, 0), inst, height, width,
                              num_instances[b], max_label, params, scores, logits.image(b),
                              static_cast<TOut*>(out.data) + b * height * width, threads);
          });
        });
      });
  return result;
}

std::vector<ImageResult> merge(const StridedView& sem, const StridedView& ctr,
                               const StridedView& off, const StridedView& thing_mask,
                               const StridedView& logits, int64_t max_label,
                               const CenterOptions& center_options, const FuseParams& params,
                               const StridedView& out, int num_threads) {
  const IeeeFloatModes float_modes;  // the calling thread's (float_mode.h)
  std::vector<ImageResult> result(static_cast<size_t>(sem.batch()));
  const ThingTable table(params.thing_ids);
  const int64_t height = sem.height(), width = sem.width();
  for_each_image(
      sem.batch(), sem.height(), resolve_threads(num_threads), [&](int64_t b, int threads) {
        ImageResult& r = result[b];
        r.centers = find_image_centers(ctr, b, center_options, threads);
        const ThingSource things{thing_mask.data ? plane_of<const uint8_t>(thing_mask, b, 0)
                                                 : Plane<const uint8_t>{nullptr, 0, 0},
                                 table.view()};
        r.segments = with_label_type(sem.dtype, "sem", [&](auto sem_tag) {
          using TSem = decltype(sem_tag);
          return with_float_type(off.dtype, "off", [&](auto off_tag) {
            using TOff = decltype(off_tag);
            return with_output_type(out.dtype, [&](auto out_tag) {
              using TOut = decltype(out_tag);
              return merge_image(plane_of<const TSem>(sem, b, 0), things,
                                 plane_of<const TOff>(off, b, 0), plane_of<const TOff>(off, b, 1),
                                 height, width, r.centers, max_label, params, logits.image(b),
                                 static_cast<TOut*>(out.data) + b * height * width, threads);
            });
          });
        });
      });
  return result;
}

}  // namespace pdl_post
