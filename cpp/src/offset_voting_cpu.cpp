// CPU offset voting: a grid of cells with exact per-cell candidate lists (see offset_voting.h).
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "pdl_post/offset_voting.h"

namespace pdl_post {
namespace {

constexpr int32_t kNoInstance = 0;
constexpr int32_t kBruteForce = -1;  // vote outside the grid: compare with every centre
// Pending votes store -(2 + cell) in the instance map until their cell's list exists.

struct VoteGrid {
  int64_t cell;      // side of a square cell, in pixels
  int64_t origin_y;  // cell (i, j) covers [origin + i * cell, origin + (i + 1) * cell]
  int64_t origin_x;
  int64_t rows, cols;

  int64_t cell_of_center(int64_t y, int64_t x) const {
    return ((y - origin_y) / cell) * cols + (x - origin_x) / cell;
  }
  // Cell of a finite vote, or -1 outside the grid. floor(q) keeps q inside the chosen cell exactly.
  int64_t cell_of_vote(float qy, float qx) const {
    const double fy = std::floor(static_cast<double>(qy)) - static_cast<double>(origin_y);
    const double fx = std::floor(static_cast<double>(qx)) - static_cast<double>(origin_x);
    if (fy < 0 || fx < 0 || fy >= static_cast<double>(rows * cell) ||
        fx >= static_cast<double>(cols * cell)) {
      return -1;
    }
    return (static_cast<int64_t>(fy) / cell) * cols + static_cast<int64_t>(fx) / cell;
  }
};

VoteGrid make_grid(int64_t height, int64_t width, int64_t num_centers) {
  // About two cells per centre: lists stay short and building them stays cheap.
  const double area = static_cast<double>(height) * static_cast<double>(width);
  int64_t cell = static_cast<int64_t>(std::lround(std::sqrt(area / (2.0 * num_centers))));
  cell = std::clamp<int64_t>(cell, 4, std::max<int64_t>(4, std::max(height, width)));
  VoteGrid g{cell, -cell, -cell, 0, 0};
  // One margin cell on each side catches votes that land just outside the image.
  g.rows = (height + 2 * cell + cell - 1) / cell;
  g.cols = (width + 2 * cell + cell - 1) / cell;
  return g;
}

// Candidate centres for one cell: every centre whose lower bound is <= the smallest upper bound.
void cell_candidates(const VoteGrid& g, int64_t cell_index, const std::vector<int64_t>& bucket_start,
                     const std::vector<int32_t>& bucket_centers, const std::vector<float>& cy,
                     const std::vector<float>& cx, std::vector<int32_t>& out) {
  const int64_t ci = cell_index / g.cols;
  const int64_t cj = cell_index % g.cols;
  const float y_lo = static_cast<float>(g.origin_y + ci * g.cell);
  const float y_hi = y_lo + static_cast<float>(g.cell);
  const float x_lo = static_cast<float>(g.origin_x + cj * g.cell);
  const float x_hi = x_lo + static_cast<float>(g.cell);
  const int64_t last_ring = std::max({ci, g.rows - 1 - ci, cj, g.cols - 1 - cj});

  // Visit the centres in ring r (Chebyshev distance r in cells) of this cell.
  auto for_ring = [&](int64_t r, auto&& visit) {
    for (int64_t i = ci - r; i <= ci + r; ++i) {
      if (i < 0 || i >= g.rows) continue;
      const bool edge_row = (i == ci - r || i == ci + r);
      const int64_t step = edge_row ? 1 : 2 * r;
      for (int64_t j = cj - r; j <= cj + r; j += (step > 0 ? step : 1)) {
        if (j < 0 || j >= g.cols) continue;
        const int64_t b = i * g.cols + j;
        for (int64_t k = bucket_start[b]; k < bucket_start[b + 1]; ++k) visit(bucket_centers[k]);
      }
    }
  };
  // Centres in ring r >= 1 are at least (r - 1) cells away along one axis.
  auto ring_bound = [&](int64_t r) {
    const float gap = static_cast<float>((r - 1) * g.cell);
    return r <= 1 ? 0.0f : gap * gap;
  };

  float best_upper = std::numeric_limits<float>::infinity();
  int64_t rings = 0;
  for (int64_t r = 0; r <= last_ring; ++r) {
    if (ring_bound(r) > best_upper) break;
    rings = r;
    for_ring(r, [&](int32_t c) {
      const float dy = axis_gap_max(cy[c], y_lo, y_hi);
      const float dx = axis_gap_max(cx[c], x_lo, x_hi);
      best_upper = std::min(best_upper, squared_distance_f32(dy, dx));
    });
  }
  out.clear();
  for (int64_t r = 0; r <= rings; ++r) {
    if (ring_bound(r) > best_upper) break;
    for_ring(r, [&](int32_t c) {
      const float dy = axis_gap_min(cy[c], y_lo, y_hi);
      const float dx = axis_gap_min(cx[c], x_lo, x_hi);
      if (squared_distance_f32(dy, dx) <= best_upper) out.push_back(c);
    });
  }
  std::sort(out.begin(), out.end());
}

}  // namespace

template <typename TOff>
void group_pixels_cpu(Plane<const uint8_t> thing, Plane<const TOff> dy, Plane<const TOff> dx,
                      int64_t height, int64_t width, const std::vector<int64_t>& center_y,
                      const std::vector<int64_t>& center_x, int32_t* instance, int num_threads) {
  const int64_t num_centers = static_cast<int64_t>(center_y.size());
  const int threads = std::max(1, num_threads);
  if (num_centers == 0) {
    std::fill(instance, instance + height * width, kNoInstance);
    return;
  }
  if (num_centers >= std::numeric_limits<int32_t>::max()) {
    throw ValueError("group_pixels: " + std::to_string(num_centers) +
                     " centres do not fit the int32 instance map");
  }
  std::vector<float> cy(center_y.begin(), center_y.end());
  std::vector<float> cx(center_x.begin(), center_x.end());
  const VoteGrid g = make_grid(height, width, num_centers);
  const int64_t num_cells = g.rows * g.cols;

  // Centres bucketed by cell (counting sort keeps increasing index order inside a bucket).
  std::vector<int64_t> bucket_start(static_cast<size_t>(num_cells + 1), 0);
  std::vector<int32_t> bucket_centers(static_cast<size_t>(num_centers));
  for (int64_t c = 0; c < num_centers; ++c) ++bucket_start[g.cell_of_center(center_y[c], center_x[c]) + 1];
  for (int64_t b = 0; b < num_cells; ++b) bucket_start[b + 1] += bucket_start[b];
  {
    std::vector<int64_t> fill(bucket_start.begin(), bucket_start.end() - 1);
    for (int64_t c = 0; c < num_centers; ++c) {
      bucket_centers[fill[g.cell_of_center(center_y[c], center_x[c])]++] = static_cast<int32_t>(c);
    }
  }

  // Pass 1: where does each thing pixel vote? Mark the cells that receive votes.
  std::vector<uint8_t> cell_needed(static_cast<size_t>(num_cells), 0);
#pragma omp parallel num_threads(threads) if (threads > 1)
  {
    std::vector<uint8_t> needed(static_cast<size_t>(num_cells), 0);
#pragma omp for schedule(static)
    for (int64_t y = 0; y < height; ++y) {
      int32_t* out = instance + y * width;
      for (int64_t x = 0; x < width; ++x) {
        if (!thing(y, x)) {
          out[x] = kNoInstance;
          continue;
        }
        const float qy = vote_coordinate(y, dy(y, x));
        const float qx = vote_coordinate(x, dx(y, x));
        if (!is_finite_vote(qy, qx)) {
          out[x] = kNoInstance;
          continue;
        }
        const int64_t cell = g.cell_of_vote(qy, qx);
        if (cell < 0) {
          out[x] = kBruteForce;
        } else {
          needed[cell] = 1;
          out[x] = static_cast<int32_t>(-2 - cell);
        }
      }
    }
#pragma omp critical
    for (int64_t b = 0; b < num_cells; ++b) cell_needed[b] |= needed[b];
  }

  // Pass 2: candidate lists of the cells that received votes (CSR).
  std::vector<int64_t> needed_cells;
  for (int64_t b = 0; b < num_cells; ++b) {
    if (cell_needed[b]) needed_cells.push_back(b);
  }
  std::vector<std::vector<int32_t>> lists(needed_cells.size());
#pragma omp parallel for num_threads(threads) if (threads > 1) schedule(dynamic, 16)
  for (int64_t n = 0; n < static_cast<int64_t>(needed_cells.size()); ++n) {
    cell_candidates(g, needed_cells[n], bucket_start, bucket_centers, cy, cx, lists[n]);
  }
  std::vector<int64_t> list_start(static_cast<size_t>(num_cells + 1), 0);
  for (size_t n = 0; n < needed_cells.size(); ++n) list_start[needed_cells[n] + 1] = lists[n].size();
  for (int64_t b = 0; b < num_cells; ++b) list_start[b + 1] += list_start[b];
  std::vector<int32_t> list_centers(static_cast<size_t>(list_start[num_cells]));
  for (size_t n = 0; n < needed_cells.size(); ++n) {
    std::copy(lists[n].begin(), lists[n].end(), list_centers.begin() + list_start[needed_cells[n]]);
  }

  // Pass 3: resolve every pending vote against its cell's list (or all centres).
#pragma omp parallel for num_threads(threads) if (threads > 1) schedule(static)
  for (int64_t y = 0; y < height; ++y) {
    int32_t* out = instance + y * width;
    for (int64_t x = 0; x < width; ++x) {
      const int32_t code = out[x];
      if (code >= 0) continue;
      const float qy = vote_coordinate(y, dy(y, x));
      const float qx = vote_coordinate(x, dx(y, x));
      int32_t nearest;
      if (code == kBruteForce) {
        nearest = nearest_center(cy.data(), cx.data(), nullptr, num_centers, qy, qx);
      } else {
        const int64_t cell = -2 - static_cast<int64_t>(code);
        const int64_t begin = list_start[cell];
        nearest = nearest_center(cy.data(), cx.data(), list_centers.data() + begin,
                                 list_start[cell + 1] - begin, qy, qx);
      }
      out[x] = nearest + 1;
    }
  }
}

template void group_pixels_cpu<float>(Plane<const uint8_t>, Plane<const float>, Plane<const float>,
                                      int64_t, int64_t, const std::vector<int64_t>&,
                                      const std::vector<int64_t>&, int32_t*, int);
template void group_pixels_cpu<double>(Plane<const uint8_t>, Plane<const double>,
                                       Plane<const double>, int64_t, int64_t,
                                       const std::vector<int64_t>&, const std::vector<int64_t>&,
                                       int32_t*, int);

}  // namespace pdl_post
