// Glue shared by the pybind11 modules (_core and the test-only _cuda_emulation): results to
// Python objects and option parsing. No algorithm logic.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>
#include <utility>
#include <vector>

#include "pdl_post/pipeline.h"

namespace pdl_post_bindings {

namespace py = pybind11;
using namespace pdl_post;

inline py::tuple centers_to_python(const ImageCenters& c) {
  const auto k = static_cast<py::ssize_t>(c.y.size());
  py::array_t<int64_t> yx({k, py::ssize_t{2}});
  py::array_t<double> scores(k);
  auto m = yx.mutable_unchecked<2>();
  auto s = scores.mutable_unchecked<1>();
  for (py::ssize_t i = 0; i < k; ++i) {
    m(i, 0) = c.y[i];
    m(i, 1) = c.x[i];
    s(i) = c.score[i];
  }
  return py::make_tuple(yx, scores);
}

inline py::dict segments_to_python(const std::vector<Segment>& segments) {
  const auto n = static_cast<py::ssize_t>(segments.size());
  py::array_t<int64_t> id(n), category(n), area(n), instance(n);
  py::array_t<bool> isthing(n);
  py::array_t<double> score(n);
  for (py::ssize_t i = 0; i < n; ++i) {
    id.mutable_at(i) = segments[i].id;
    category.mutable_at(i) = segments[i].category_id;
    isthing.mutable_at(i) = segments[i].isthing;
    area.mutable_at(i) = segments[i].area;
    score.mutable_at(i) = segments[i].score;
    instance.mutable_at(i) = segments[i].instance;
  }
  py::dict d;
  d["id"] = id;
  d["category_id"] = category;
  d["isthing"] = isthing;
  d["area"] = area;
  d["score"] = score;
  d["instance"] = instance;
  return d;
}

inline TopKMode topk_mode_of(const std::string& mode) {
  if (mode == "exact") return TopKMode::kExact;
  if (mode == "detectron2") return TopKMode::kDetectron2;
  throw py::value_error("topk_mode: expected 'exact' or 'detectron2', got '" + mode + "'");
}

inline FuseParams fuse_params(std::vector<int64_t> thing_ids, int64_t label_divisor,
                              int64_t stuff_area, int64_t void_label) {
  FuseParams p;
  p.thing_ids = std::move(thing_ids);
  p.label_divisor = label_divisor;
  p.stuff_area = stuff_area;
  p.void_label = void_label;
  return p;
}

}  // namespace pdl_post_bindings
