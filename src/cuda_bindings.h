// The CUDA path's bindings (CudaMerge and device queries), shared by _core (built with CUDA) and
// the test-only _cuda_emulation module (the same sources on the host emulator). Glue only.
#pragma once

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "binding_helpers.h"
#include "pdl_post/cuda_pipeline.h"

namespace pdl_post_bindings {

// A device array described by the Python layer: (pointer, dtype name, shape[4], strides[4] in
// elements), or None.
inline StridedView device_view_of(const py::object& o, const char* name) {
  if (o.is_none()) return StridedView{};
  const auto t = o.cast<py::tuple>();
  StridedView v;
  v.data = reinterpret_cast<void*>(t[0].cast<uintptr_t>());
  const auto dtype = t[1].cast<std::string>();
  const std::pair<const char*, DType> names[] = {
      {"uint8", DType::kUInt8}, {"int16", DType::kInt16},     {"int32", DType::kInt32},
      {"int64", DType::kInt64}, {"float32", DType::kFloat32}, {"float64", DType::kFloat64}};
  bool found = false;
  for (const auto& [n, d] : names) {
    if (dtype == n) {
      v.dtype = d;
      found = true;
    }
  }
  if (!found) throw py::type_error(std::string(name) + ": unsupported dtype " + dtype);
  const auto shape = t[2].cast<std::vector<int64_t>>();
  const auto strides = t[3].cast<std::vector<int64_t>>();
  if (shape.size() != 4 || strides.size() != 4) {
    throw py::value_error(std::string(name) + ": the core expects a 4-D view");
  }
  for (int i = 0; i < 4; ++i) {
    v.shape[i] = shape[i];
    v.strides[i] = strides[i];
  }
  return v;
}

// finish's per-image results as [(centers, scores, segments), ...].
inline py::list image_results_to_python(const std::vector<ImageResult>& results) {
  py::list out;
  for (const auto& r : results) {
    py::tuple centers = centers_to_python(r.centers);
    out.append(py::make_tuple(centers[0], centers[1], segments_to_python(r.segments)));
  }
  return out;
}

inline void bind_cuda(py::module_& m) {
  m.def("cuda_device_count", &cuda_device_count);
  m.def("cuda_pointer_device", &cuda_pointer_device, py::arg("pointer"));
  m.def("cuda_release_memory", &cuda_release_memory, py::call_guard<py::gil_scoped_release>());
  m.def("cuda_stream_wait", &cuda_stream_wait, py::arg("device"), py::arg("stream"),
        py::arg("producer"));
  m.def(
      "cuda_group_pixels",
      [](const py::object& sem, const py::object& logits, const py::object& off,
         const py::object& mask, int device, uintptr_t stream, std::vector<int64_t> thing_ids,
         const std::vector<py::array_t<int64_t, py::array::c_style>>& centers,
         const py::object& out, bool wait) {
        CudaGroupInputs in;
        in.sem = device_view_of(sem, "sem");
        in.logits = device_view_of(logits, "sem");
        in.off = device_view_of(off, "off");
        in.mask = device_view_of(mask, "foreground_mask");
        in.device = device;
        in.stream = stream;
        std::vector<std::vector<int64_t>> yx;
        for (const auto& c : centers) yx.emplace_back(c.data(), c.data() + c.size());
        const StridedView o = device_view_of(out, "out");
        py::gil_scoped_release release;
        cuda_group_pixels(in, thing_ids, yx, o, wait);
      },
      py::arg("sem"), py::arg("logits"), py::arg("off"), py::arg("mask"), py::arg("device"),
      py::arg("stream"), py::arg("thing_ids"), py::arg("centers"), py::arg("out"), py::arg("wait"));
  // Test and benchmark hook: the vote's pixels in chunks per warp (see set_cuda_vote_chunks).
  m.def("_set_cuda_vote_chunks", &set_cuda_vote_chunks, py::arg("chunks"),
        "Returns the previous setting.");
  // Test and benchmark hook: the vote's centres pruned per warp (see set_cuda_vote_box).
  m.def("_set_cuda_vote_box", &set_cuda_vote_box, py::arg("box"), "Returns the previous setting.");
  // Test and benchmark hook: the peaks written by a warp per row (see set_cuda_warp_peaks).
  m.def("_set_cuda_warp_peaks", &set_cuda_warp_peaks, py::arg("by_warp"),
        "Returns the previous setting.");
  // Test and benchmark hook: 4 pixels per load where the inputs allow (see set_cuda_packed_loads).
  m.def("_set_cuda_packed_loads", &set_cuda_packed_loads, py::arg("packed"),
        "Returns the previous setting.");
  // Test and benchmark hook: the speculative second phase (see set_cuda_speculation).
  m.def("_set_cuda_speculation", &set_cuda_speculation, py::arg("speculate"),
        "Returns the previous setting; off forgets the capacities learnt.");
  // module_local: _core and _cuda_emulation each bind their own build of CudaMerge.
  py::class_<CudaMerge>(m, "CudaMerge", py::module_local())
      .def(py::init([](const py::object& sem, const py::object& logits, const py::object& ctr,
                       const py::object& off, const py::object& mask, int device, uintptr_t stream,
                       std::vector<int64_t> thing_ids, int64_t label_divisor, int64_t stuff_area,
                       int64_t void_label, double threshold, int64_t nms_kernel, int64_t top_k,
                       const std::string& topk_mode) {
             CudaMergeInputs in;
             in.sem = device_view_of(sem, "sem");
             in.logits = device_view_of(logits, "sem");
             in.ctr = device_view_of(ctr, "ctr");
             in.off = device_view_of(off, "off");
             in.mask = device_view_of(mask, "foreground_mask");
             in.device = device;
             in.stream = stream;
             const CenterOptions options{threshold, nms_kernel, top_k, topk_mode_of(topk_mode)};
             const FuseParams params =
                 fuse_params(std::move(thing_ids), label_divisor, stuff_area, void_label);
             py::gil_scoped_release release;
             return std::make_unique<CudaMerge>(in, options, params);
           }),
           py::arg("sem"), py::arg("logits"), py::arg("ctr"), py::arg("off"), py::arg("mask"),
           py::arg("device"), py::arg("stream"), py::arg("thing_ids"), py::arg("label_divisor"),
           py::arg("stuff_area"), py::arg("void_label"), py::arg("threshold"),
           py::arg("nms_kernel"), py::arg("top_k"), py::arg("topk_mode"))
      .def_static(
          "for_fuse",
          [](const py::object& sem, const py::object& logits, const py::object& instance,
             int device, uintptr_t stream, std::vector<int64_t> thing_ids, int64_t label_divisor,
             int64_t stuff_area, int64_t void_label) {
            CudaMergeInputs in;
            in.sem = device_view_of(sem, "sem");
            in.logits = device_view_of(logits, "sem");
            in.instance = device_view_of(instance, "instance");
            in.fuse = true;
            in.device = device;
            in.stream = stream;
            const FuseParams params =
                fuse_params(std::move(thing_ids), label_divisor, stuff_area, void_label);
            py::gil_scoped_release release;
            return std::make_unique<CudaMerge>(in, CenterOptions{}, params);
          },
          py::arg("sem"), py::arg("logits"), py::arg("instance"), py::arg("device"),
          py::arg("stream"), py::arg("thing_ids"), py::arg("label_divisor"), py::arg("stuff_area"),
          py::arg("void_label"))
      .def("label_range", &CudaMerge::label_range, py::call_guard<py::gil_scoped_release>())
      .def("instance_range", &CudaMerge::instance_range, py::call_guard<py::gil_scoped_release>())
      .def(
          "finish_fuse",
          [](CudaMerge& job, const py::object& out, const py::object& instance,
             const std::vector<int64_t>& counts, bool wait) {
            const StridedView o = device_view_of(out, "out");
            const StridedView i = device_view_of(instance, "instance");
            py::gil_scoped_release release;
            job.finish_fuse(o, i, counts, wait);
          },
          py::arg("out"), py::arg("instance"), py::arg("counts"), py::arg("wait"))
      .def(
          "finish",
          [](CudaMerge& job, const py::object& out, bool with_segments, bool wait) {
            const StridedView o = device_view_of(out, "out");
            std::vector<ImageResult> results;
            {
              py::gil_scoped_release release;
              results = job.finish(o, with_segments, wait);
            }
            return image_results_to_python(results);
          },
          py::arg("out"), py::arg("with_segments"), py::arg("wait"))
      .def(
          "finish_if_fits",
          [](CudaMerge& job, const py::object& out, int64_t max_label, bool with_segments,
             bool wait) -> py::object {
            const StridedView o = device_view_of(out, "out");
            std::optional<std::vector<ImageResult>> results;
            {
              py::gil_scoped_release release;
              results = job.finish_if_fits(o, max_label, with_segments, wait);
            }
            if (!results) return py::none();
            return image_results_to_python(*results);
          },
          py::arg("out"), py::arg("max_label"), py::arg("with_segments"), py::arg("wait"))
      .def("finish_centers",
           [](CudaMerge& job) {
             std::vector<ImageCenters> centers;
             {
               py::gil_scoped_release release;
               centers = job.finish_centers();
             }
             py::list out;
             for (const auto& c : centers) out.append(centers_to_python(c));
             return out;
           })
      .def("release", &CudaMerge::release, py::call_guard<py::gil_scoped_release>());
}

}  // namespace pdl_post_bindings
