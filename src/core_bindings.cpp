// pybind11 bindings of the pdl_post core. Glue only: arrays become StridedViews, results become
// numpy arrays; validation lives in python/pdl_post, algorithms in cpp/.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>
#include <vector>

#include "binding_helpers.h"
#ifdef PDL_POST_HAVE_CUDA
#include "cuda_bindings.h"
#endif
#include "pdl_post/float_mode.h"
#include "pdl_post/panoptic_targets.h"
#include "pdl_post/pipeline.h"
#include "pdl_post/semantic_argmax.h"

namespace py = pybind11;
using namespace pdl_post;
using namespace pdl_post_bindings;

namespace {

DType dtype_of(const py::array& a, const char* name) {
  if (a.itemsize() > 1 && a.dtype().byteorder() == '>') {
    throw py::type_error(std::string(name) + ": expected native byte order, got big-endian");
  }
  const char kind = a.dtype().kind();
  const auto size = a.itemsize();
  if ((kind == 'u' || kind == 'b') && size == 1) return DType::kUInt8;
  if (kind == 'i' && size == 2) return DType::kInt16;
  if (kind == 'i' && size == 4) return DType::kInt32;
  if (kind == 'i' && size == 8) return DType::kInt64;
  if (kind == 'f' && size == 4) return DType::kFloat32;
  if (kind == 'f' && size == 8) return DType::kFloat64;
  throw py::type_error(std::string(name) + ": unsupported dtype " +
                       py::str(a.dtype()).cast<std::string>());
}

StridedView view_of(const py::array& a, const char* name) {
  if (a.ndim() != 4) throw py::value_error(std::string(name) + ": the core expects a 4-D view");
  StridedView v;
  v.data = const_cast<void*>(a.data());
  v.dtype = dtype_of(a, name);
  for (int i = 0; i < 4; ++i) {
    v.shape[i] = a.shape(i);
    if (a.strides(i) % a.itemsize() != 0) {
      throw py::value_error(std::string(name) + ": strides must be multiples of the item size");
    }
    v.strides[i] = a.strides(i) / a.itemsize();
  }
  return v;
}

StridedView optional_view(const py::object& o, const char* name) {
  return o.is_none() ? StridedView{} : view_of(o.cast<py::array>(), name);
}

ImageCenters centers_from_python(
    const py::array_t<int64_t, py::array::c_style | py::array::forcecast>& a) {
  ImageCenters c;
  auto m = a.unchecked<2>();
  for (py::ssize_t i = 0; i < m.shape(0); ++i) {
    c.y.push_back(m(i, 0));
    c.x.push_back(m(i, 1));
  }
  return c;
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "pdl_post compiled core (CPU). Use the pdl_post package API, not this module.";

  m.def("build_info", [] {
    py::dict d;
    d["version"] = PDL_POST_VERSION;
    d["compiler"] = PDL_POST_COMPILER;
    d["build_type"] = PDL_POST_BUILD_TYPE;
    d["openmp"] = openmp_enabled();
    d["max_threads"] = resolve_threads(0);
    d["cpu_avx2"] = cpu_avx2_in_use();
    d["cuda"] = PDL_POST_CUDA_STATUS;
#ifdef PDL_POST_HAVE_CUDA
    d["cuda_compiled"] = true;
    d["cuda_build"] = cuda_build_description();
#else
    d["cuda_compiled"] = false;
#endif
    return d;
  });

#ifdef PDL_POST_HAVE_CUDA
  bind_cuda(m);
#endif

  m.def(
      "label_range",
      [](const py::array& sem, int num_threads) {
        const StridedView v = view_of(sem, "sem");
        py::gil_scoped_release release;
        return label_range(v, num_threads);
      },
      py::arg("sem"), py::arg("num_threads"));

  m.def(
      "argmax_logits",
      [](const py::array& logits, const py::array& out, int num_threads) {
        const StridedView in = view_of(logits, "logits"), o = view_of(out, "out");
        py::gil_scoped_release release;
        argmax_logits_cpu(in, o, num_threads);
      },
      py::arg("logits"), py::arg("out"), py::arg("num_threads"));

  m.def("_single_threaded_after_fork", &single_threaded_after_fork,
        "Whether this process is a child of fork() whose parent's OpenMP threads could not be "
        "released (its calls then run on one thread).");
  m.def("_set_release_pool_at_fork", &set_release_pool_at_fork, py::arg("release"),
        "Tests: release the forking thread's OpenMP threads before fork() (default True); "
        "returns the previous setting.");
  m.def("_get_float_modes", &IeeeFloatModes::read,
        "The calling thread's floating-point modes (x86 MXCSR, AArch64 FPCR; 0 elsewhere).");
  m.def("_set_float_modes", &IeeeFloatModes::write, py::arg("modes"),
        "Sets the calling thread's floating-point modes (a value from _get_float_modes).");
  m.def("_ieee_float_modes", &IeeeFloatModes::ieee, py::arg("modes"),
        "`modes` with round to nearest, subnormals kept and exceptions masked (float_mode.h).");

  m.def("_set_cpu_avx2", &set_cpu_avx2, py::arg("enabled"),
        "Tests: use the AVX2 copies where the processor has them (default True); returns the "
        "previous setting.");

  py::enum_<NmsStrategy>(m, "_NmsStrategy")
      .value("auto", NmsStrategy::kAuto)
      .value("sparse", NmsStrategy::kSparse)
      .value("filter", NmsStrategy::kFilter);
  m.def("_set_nms_strategy", &set_nms_strategy, py::arg("strategy"),
        "Tests: force the CPU's NMS path (sparse window tests or the max filter; default auto); "
        "returns the previous setting.");
  m.def(
      "_nms_path_counts",
      []() {
        const NmsPathCounts c = nms_path_counts();
        return py::dict(py::arg("sparse") = c.sparse, py::arg("filter") = c.filter,
                        py::arg("sparse_given_up") = c.sparse_given_up);
      },
      "Tests: heatmap planes done by each CPU NMS path since the process started.");

  m.def(
      "find_centers",
      [](const py::array& ctr, double threshold, int64_t nms_kernel, int64_t top_k,
         const std::string& topk_mode, int num_threads) {
        const StridedView v = view_of(ctr, "ctr");
        const CenterOptions options{threshold, nms_kernel, top_k, topk_mode_of(topk_mode)};
        std::vector<ImageCenters> centers;
        {
          py::gil_scoped_release release;
          centers = find_centers(v, options, num_threads);
        }
        py::list out;
        for (const auto& c : centers) out.append(centers_to_python(c));
        return out;
      },
      py::arg("ctr"), py::arg("threshold"), py::arg("nms_kernel"), py::arg("top_k"),
      py::arg("topk_mode"), py::arg("num_threads"));

  m.def(
      "group_pixels",
      [](const py::object& sem, std::vector<int64_t> thing_ids, const py::object& thing_mask,
         const py::array& off, const py::list& centers, const py::array& instance,
         int num_threads) {
        const StridedView s = optional_view(sem, "sem"),
                          t = optional_view(thing_mask, "thing_mask");
        const StridedView o = view_of(off, "off"), i = view_of(instance, "instance");
        std::vector<ImageCenters> c;
        for (const auto& item : centers) c.push_back(centers_from_python(item.cast<py::array>()));
        py::gil_scoped_release release;
        group_pixels(s, thing_ids, t, o, c, i, num_threads);
      },
      py::arg("sem"), py::arg("thing_ids"), py::arg("thing_mask"), py::arg("off"),
      py::arg("centers"), py::arg("instance"), py::arg("num_threads"));

  m.def(
      "fuse",
      [](const py::array& sem, const py::array& instance, std::vector<int64_t> num_instances,
         int64_t max_label, std::vector<int64_t> thing_ids, int64_t label_divisor,
         int64_t stuff_area, int64_t void_label, const py::object& logits,
         const py::object& center_scores, const py::array& out, int num_threads) {
        const StridedView s = view_of(sem, "sem"), i = view_of(instance, "instance");
        const StridedView l = optional_view(logits, "logits"), o = view_of(out, "out");
        std::vector<ImageCenters> centers;
        if (!center_scores.is_none()) {
          for (const auto& item : center_scores.cast<py::list>()) {
            ImageCenters c;
            c.score = item.cast<std::vector<double>>();
            centers.push_back(std::move(c));
          }
        }
        const FuseParams params =
            fuse_params(std::move(thing_ids), label_divisor, stuff_area, void_label);
        std::vector<std::vector<Segment>> segments;
        {
          py::gil_scoped_release release;
          segments = fuse(s, i, num_instances, max_label, params, l, centers, o, num_threads);
        }
        py::list result;
        for (const auto& seg : segments) result.append(segments_to_python(seg));
        return result;
      },
      py::arg("sem"), py::arg("instance"), py::arg("num_instances"), py::arg("max_label"),
      py::arg("thing_ids"), py::arg("label_divisor"), py::arg("stuff_area"), py::arg("void_label"),
      py::arg("logits"), py::arg("center_scores"), py::arg("out"), py::arg("num_threads"));

  m.def(
      "merge",
      [](const py::array& sem, const py::array& ctr, const py::array& off,
         const py::object& thing_mask, const py::object& logits, int64_t max_label,
         std::vector<int64_t> thing_ids, int64_t label_divisor, int64_t stuff_area,
         int64_t void_label, double threshold, int64_t nms_kernel, int64_t top_k,
         const std::string& topk_mode, const py::array& out, int num_threads) {
        const StridedView s = view_of(sem, "sem"), c = view_of(ctr, "ctr"), o = view_of(off, "off");
        const StridedView t = optional_view(thing_mask, "foreground_mask");
        const StridedView l = optional_view(logits, "logits"), dst = view_of(out, "out");
        const CenterOptions options{threshold, nms_kernel, top_k, topk_mode_of(topk_mode)};
        const FuseParams params =
            fuse_params(std::move(thing_ids), label_divisor, stuff_area, void_label);
        std::vector<ImageResult> results;
        {
          py::gil_scoped_release release;
          results = merge(s, c, o, t, l, max_label, options, params, dst, num_threads);
        }
        py::list out_list;
        for (const auto& r : results) {
          py::tuple centers = centers_to_python(r.centers);
          out_list.append(py::make_tuple(centers[0], centers[1], segments_to_python(r.segments)));
        }
        return out_list;
      },
      py::arg("sem"), py::arg("ctr"), py::arg("off"), py::arg("thing_mask"), py::arg("logits"),
      py::arg("max_label"), py::arg("thing_ids"), py::arg("label_divisor"), py::arg("stuff_area"),
      py::arg("void_label"), py::arg("threshold"), py::arg("nms_kernel"), py::arg("top_k"),
      py::arg("topk_mode"), py::arg("out"), py::arg("num_threads"));

  m.def(
      "panoptic_targets",
      [](const py::array& panoptic, std::vector<int64_t> segment_ids,
         std::vector<int64_t> category_ids, std::vector<uint8_t> iscrowd,
         std::vector<int64_t> thing_ids, int64_t ignore_label, int64_t radius,
         int64_t small_instance_area, double small_instance_weight, bool ignore_crowd_in_semantic,
         const py::array_t<float, py::array::c_style | py::array::forcecast>& gaussian,
         const py::array& semantic, const py::array& semantic_weights, const py::array& center,
         const py::array& offset, const py::array& center_weights, const py::array& offset_weights,
         int num_threads) {
        const StridedView p = view_of(panoptic, "panoptic");
        const TargetOutputs out{view_of(semantic, "semantic"),
                                view_of(semantic_weights, "semantic_weights"),
                                view_of(center, "center"),
                                view_of(offset, "offset"),
                                view_of(center_weights, "center_weights"),
                                view_of(offset_weights, "offset_weights")};
        TargetSegments segments{std::move(segment_ids), std::move(category_ids),
                                std::move(iscrowd)};
        TargetParams params;
        params.thing_ids = std::move(thing_ids);
        params.ignore_label = ignore_label;
        params.radius = radius;
        params.small_instance_area = small_instance_area;
        params.small_instance_weight = small_instance_weight;
        params.ignore_crowd_in_semantic = ignore_crowd_in_semantic;
        py::gil_scoped_release release;
        panoptic_targets_cpu(p, segments, params, gaussian.data(), gaussian.size(), out,
                             num_threads);
      },
      py::arg("panoptic"), py::arg("segment_ids"), py::arg("category_ids"), py::arg("iscrowd"),
      py::arg("thing_ids"), py::arg("ignore_label"), py::arg("radius"),
      py::arg("small_instance_area"), py::arg("small_instance_weight"),
      py::arg("ignore_crowd_in_semantic"), py::arg("gaussian"), py::arg("semantic"),
      py::arg("semantic_weights"), py::arg("center"), py::arg("offset"), py::arg("center_weights"),
      py::arg("offset_weights"), py::arg("num_threads"));
}
