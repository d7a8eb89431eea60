// CPU batch driver: dtype dispatch, image- or row-parallel scheduling, stage composition.
#include "pdl_post/pipeline.h"

#include <algorithm>
#include <exception>
#include <limits>
#include <string>

#include "pdl_post/offset_voting.h"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace pdl_post {

bool openmp_enabled() {
#ifdef _OPENMP
  return true;
#else
  return false;
#endif
}

int resolve_threads(int requested) {
#ifdef _OPENMP
  return requested > 0 ? requested : std::max(1, omp_get_max_threads());
#else
  (void)requested;
  return 1;
#endif
}

namespace {

template <typename F>
decltype(auto) with_label_type(DType t, const char* what, F&& f) {
  switch (t) {
    case DType::kUInt8: return f(uint8_t{});
    case DType::kInt16: return f(int16_t{});
    case DType::kInt32: return f(int32_t{});
    case DType::kInt64: return f(int64_t{});
    default:
      throw ValueError(std::string(what) + ": expected uint8, int16, int32 or int64 labels, got " +
                       dtype_name(t));
  }
}

template <typename F>
decltype(auto) with_float_type(DType t, const char* what, F&& f) {
  switch (t) {
    case DType::kFloat32: return f(float{});
    case DType::kFloat64: return f(double{});
    default:
      throw ValueError(std::string(what) + ": expected float32 or float64, got " + dtype_name(t));
  }
}

template <typename F>
decltype(auto) with_output_type(DType t, F&& f) {
  switch (t) {
    case DType::kInt32: return f(int32_t{});
    case DType::kInt64: return f(int64_t{});
    default:
      throw ValueError(std::string("out: expected int32 or int64, got ") + dtype_name(t));
  }
}

// body(b, threads_for_this_image) for every image: image-parallel when there are at least as many
// images as threads, else image by image. The first error (in image order) is rethrown.
template <typename F>
void for_each_image(int64_t batch, int threads, F&& body) {
  if (batch > 1 && threads > 1 && batch >= threads) {
    std::vector<std::exception_ptr> errors(static_cast<size_t>(batch));
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1)
    for (int64_t b = 0; b < batch; ++b) {
      try {
        body(b, 1);
      } catch (...) {
        errors[b] = std::current_exception();
      }
    }
    for (auto& e : errors) {
      if (e) std::rethrow_exception(e);
    }
  } else {
    for (int64_t b = 0; b < batch; ++b) body(b, threads);
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

void group_image(Plane<const uint8_t> thing, const StridedView& off, int64_t b,
                 const ImageCenters& centers, int32_t* instance, int threads) {
  with_float_type(off.dtype, "off", [&](auto tag) {
    using T = decltype(tag);
    group_pixels_cpu<T>(thing, plane_of<const T>(off, b, 0), plane_of<const T>(off, b, 1),
                        off.height(), off.width(), centers.y, centers.x, instance, threads);
  });
}

std::vector<Segment> fuse_image(const StridedView& sem, int64_t b, const int32_t* instance,
                                int64_t num_instances, int64_t max_label, const FuseParams& params,
                                const StridedView& logits, const ImageCenters* centers,
                                const StridedView& out, int threads) {
  ScoreInputs scores{logits.image(b), centers ? centers->score : std::vector<double>{}};
  const int64_t pixels = sem.height() * sem.width();
  return with_label_type(sem.dtype, "sem", [&](auto sem_tag) {
    using TSem = decltype(sem_tag);
    return with_output_type(out.dtype, [&](auto out_tag) {
      using TOut = decltype(out_tag);
      return fuse_cpu<TSem, TOut>(plane_of<const TSem>(sem, b, 0), instance, sem.height(),
                                  sem.width(), num_instances, max_label, params, scores,
                                  static_cast<TOut*>(out.data) + b * pixels, threads);
    });
  });
}

std::vector<uint8_t> thing_table_of(const std::vector<int64_t>& thing_ids) {
  int64_t size = 0;
  for (int64_t t : thing_ids) size = std::max(size, t + 1);
  std::vector<uint8_t> table(static_cast<size_t>(size), 0);
  for (int64_t t : thing_ids) {
    if (t >= 0) table[t] = 1;
  }
  return table;
}

template <typename TSem>
void thing_plane(Plane<const TSem> sem, int64_t height, int64_t width,
                 const std::vector<uint8_t>& table, uint8_t* out, int threads) {
  const int64_t size = static_cast<int64_t>(table.size());
#pragma omp parallel for num_threads(threads) if (threads > 1) schedule(static)
  for (int64_t y = 0; y < height; ++y) {
    for (int64_t x = 0; x < width; ++x) {
      out[y * width + x] = is_thing_label(static_cast<int64_t>(sem(y, x)), table.data(), size);
    }
  }
}

void thing_plane_of_image(const StridedView& sem, int64_t b, const std::vector<uint8_t>& table,
                          uint8_t* out, int threads) {
  with_label_type(sem.dtype, "sem", [&](auto tag) {
    using TSem = decltype(tag);
    thing_plane<TSem>(plane_of<const TSem>(sem, b, 0), sem.height(), sem.width(), table, out,
                      threads);
  });
}

}  // namespace

std::pair<int64_t, int64_t> label_range(const StridedView& sem, int num_threads) {
  const int threads = resolve_threads(num_threads);
  const int64_t height = sem.height(), width = sem.width();
  const int64_t rows = sem.batch() * height;
  if (rows * width == 0) return {0, -1};
  return with_label_type(sem.dtype, "sem", [&](auto tag) {
    using TSem = decltype(tag);
    int64_t lo = std::numeric_limits<int64_t>::max(), hi = std::numeric_limits<int64_t>::min();
#pragma omp parallel for num_threads(threads) if (threads > 1) schedule(static) \
    reduction(min : lo) reduction(max : hi)
    for (int64_t r = 0; r < rows; ++r) {
      const Plane<const TSem> plane = plane_of<const TSem>(sem, r / height, 0);
      for (int64_t x = 0; x < width; ++x) {
        const int64_t v = static_cast<int64_t>(plane(r % height, x));
        lo = std::min(lo, v);
        hi = std::max(hi, v);
      }
    }
    return std::pair<int64_t, int64_t>{lo, hi};
  });
}

void thing_mask_from_labels(const StridedView& sem, const std::vector<int64_t>& thing_ids,
                            const StridedView& out, int num_threads) {
  const std::vector<uint8_t> table = thing_table_of(thing_ids);
  const int64_t pixels = sem.height() * sem.width();
  for_each_image(sem.batch(), resolve_threads(num_threads), [&](int64_t b, int threads) {
    thing_plane_of_image(sem, b, table, static_cast<uint8_t*>(out.data) + b * pixels, threads);
  });
}

std::vector<ImageCenters> find_centers(const StridedView& ctr, const CenterOptions& options,
                                       int num_threads) {
  std::vector<ImageCenters> result(static_cast<size_t>(ctr.batch()));
  for_each_image(ctr.batch(), resolve_threads(num_threads), [&](int64_t b, int threads) {
    result[b] = find_image_centers(ctr, b, options, threads);
  });
  return result;
}

void group_pixels(const StridedView& thing, const StridedView& off,
                  const std::vector<ImageCenters>& centers, const StridedView& instance,
                  int num_threads) {
  const int64_t pixels = off.height() * off.width();
  for_each_image(off.batch(), resolve_threads(num_threads), [&](int64_t b, int threads) {
    group_image(plane_of<const uint8_t>(thing, b, 0), off, b, centers[b],
                static_cast<int32_t*>(instance.data) + b * pixels, threads);
  });
}

std::vector<std::vector<Segment>> fuse(const StridedView& sem, const StridedView& instance,
                                       const std::vector<int64_t>& num_instances, int64_t max_label,
                                       const FuseParams& params, const StridedView& logits,
                                       const std::vector<ImageCenters>& centers,
                                       const StridedView& out, int num_threads) {
  std::vector<std::vector<Segment>> result(static_cast<size_t>(sem.batch()));
  const int64_t pixels = sem.height() * sem.width();
  for_each_image(sem.batch(), resolve_threads(num_threads), [&](int64_t b, int threads) {
    result[b] = fuse_image(sem, b, static_cast<const int32_t*>(instance.data) + b * pixels,
                           num_instances[b], max_label, params, logits,
                           centers.empty() ? nullptr : &centers[b], out, threads);
  });
  return result;
}

std::vector<ImageResult> merge(const StridedView& sem, const StridedView& ctr,
                               const StridedView& off, const StridedView& thing_mask,
                               const StridedView& logits, int64_t max_label,
                               const CenterOptions& center_options, const FuseParams& params,
                               const StridedView& out, int num_threads) {
  std::vector<ImageResult> result(static_cast<size_t>(sem.batch()));
  const std::vector<uint8_t> table = thing_table_of(params.thing_ids);
  const int64_t height = sem.height(), width = sem.width();
  for_each_image(sem.batch(), resolve_threads(num_threads), [&](int64_t b, int threads) {
    ImageResult& r = result[b];
    r.centers = find_image_centers(ctr, b, center_options, threads);
    std::vector<uint8_t> thing_scratch;
    Plane<const uint8_t> thing;
    if (thing_mask.data != nullptr) {
      thing = plane_of<const uint8_t>(thing_mask, b, 0);
    } else {
      thing_scratch.resize(static_cast<size_t>(height * width));
      thing_plane_of_image(sem, b, table, thing_scratch.data(), threads);
      thing = Plane<const uint8_t>{thing_scratch.data(), width, 1};
    }
    std::vector<int32_t> instance(static_cast<size_t>(height * width));
    group_image(thing, off, b, r.centers, instance.data(), threads);
    r.segments = fuse_image(sem, b, instance.data(), static_cast<int64_t>(r.centers.y.size()),
                            max_label, params, logits, &r.centers, out, threads);
  });
  return result;
}

}  // namespace pdl_post
