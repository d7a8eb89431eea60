// Offset voting: every thing pixel joins the centre nearest to where its offset points.
//
// Algorithm (docs/merge-semantics.md step 5): pixel (y, x) votes for q = (y + dy, x + dx) and takes
// the centre with the smallest squared distance, all in float32, ties to the lower centre index.
// Brute force is O(K) per pixel; instead the vote plane is cut into square cells of side s and each
// cell that receives votes gets the list of centres that can be nearest for ANY point in it:
//   UB(c) / LB(c) = largest / smallest float32 distance from centre c to a point of the cell,
//   candidates   = { c : LB(c) <= min over c' of UB(c') }, sorted by (LB, index).
// The bounds are computed with the same float32 operations as the distance itself; rounding is
// monotone, so LB(c) <= d(c, q) <= UB(c) holds exactly for every float q in the cell, and the true
// winner (and every centre tying with it) is always in the list: the result equals brute force bit
// for bit, ties included. A query scans its cell's list in LB order and stops at the first LB above
// the best distance found, so a vote deep inside one instance usually costs one distance. Lists are
// built by searching rings of cells outward from the cell until the ring's distance bound exceeds
// the best upper bound. Votes that land outside the grid (huge offsets) fall back to brute force
// over all centres; non-finite votes join no instance. Memory: O(H*W) for the instance map plus
// O(cells + candidates).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <vector>

#include "pdl_post/common.h"

namespace pdl_post {

// The coordinate a pixel votes for: both terms rounded to float32, then added in float32.
template <typename T>
PDL_HOST_DEVICE float vote_coordinate(int64_t pixel, T offset) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(static_cast<float>(pixel), static_cast<float>(offset));
#else
  return static_cast<float>(pixel) + static_cast<float>(offset);
#endif
}

PDL_HOST_DEVICE bool is_finite_vote(float qy, float qx) {
  return std::isfinite(qy) && std::isfinite(qx);
}

// f32(f32(dy * dy) + f32(dx * dx)); every operation rounded on its own (never fused).
PDL_HOST_DEVICE float squared_distance_f32(float dy, float dx) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(__fmul_rn(dy, dy), __fmul_rn(dx, dx));
#else
  return dy * dy + dx * dx;
#endif
}

PDL_HOST_DEVICE float center_distance(float cy, float cx, float qy, float qx) {
#if defined(__CUDA_ARCH__)
  return squared_distance_f32(__fsub_rn(cy, qy), __fsub_rn(cx, qx));
#else
  return squared_distance_f32(cy - qy, cx - qx);
#endif
}

// Nearest of all `count` centres, ties to the lower index. Distances that overflow to +inf tie
// like any other value.
PDL_HOST_DEVICE int32_t nearest_center_brute_force(const float* cy, const float* cx, int64_t count,
                                                   float qy, float qx) {
  int32_t best = 0;
  float best_distance = center_distance(cy[0], cx[0], qy, qx);
  for (int64_t c = 1; c < count; ++c) {
    const float d = center_distance(cy[c], cx[c], qy, qx);
    if (d < best_distance) {
      best_distance = d;
      best = static_cast<int32_t>(c);
    }
  }
  return best;
}

// A cell's candidate: a centre and a lower bound of its distance to any point of the cell.
struct Candidate {
  float lower_bound;
  int32_t center;
};

// Nearest among a cell's candidates sorted by (lower_bound, center): the scan stops at the first
// candidate whose bound exceeds the best distance, since no later one can be nearer or tie.
PDL_HOST_DEVICE int32_t nearest_candidate(const float* cy, const float* cx,
                                          const Candidate* candidates, int64_t count, float qy,
                                          float qx) {
  int32_t best = candidates[0].center;
  if (count == 1) return best;
  float best_distance = center_distance(cy[best], cx[best], qy, qx);
  for (int64_t i = 1; i < count && !(candidates[i].lower_bound > best_distance); ++i) {
    const int32_t c = candidates[i].center;
    const float d = center_distance(cy[c], cx[c], qy, qx);
    if (d < best_distance || (d == best_distance && c < best)) {
      best_distance = d;
      best = c;
    }
  }
  return best;
}

// Exact float32 bounds of |c - q| over q in [lo, hi] (all integers below 2^24, so exact).
PDL_HOST_DEVICE float axis_gap_min(float c, float lo, float hi) {
  return c < lo ? lo - c : (c > hi ? c - hi : 0.0f);
}
PDL_HOST_DEVICE float axis_gap_max(float c, float lo, float hi) {
  const float a = std::fabs(c - lo);
  const float b = std::fabs(c - hi);
  return a > b ? a : b;
}

// The thing classes: a byte table while the largest id is small, else a sorted id list (binary
// search), so any int64 class id works without a table sized by the id.
struct ThingClasses {
  const uint8_t* table;  // table[label] != 0 for things, or nullptr
  int64_t table_size;
  const int64_t* sorted;  // used when table is nullptr
  int64_t sorted_size;

  PDL_HOST_DEVICE bool contains(int64_t label) const {
    if (table) return label >= 0 && label < table_size && table[label] != 0;
    const int64_t at = lower_bound_index(sorted, sorted_size, label);
    return at < sorted_size && sorted[at] == label;
  }
};

// Square cells of side 2^shift; cell (i, j) covers [origin + i * side, origin + (i + 1) * side]
// on each axis. The grid spans the image plus one margin cell on every side.
struct VoteGrid {
  int shift;
  int64_t side;
  int64_t origin;  // = -side on both axes
  int64_t rows, cols;

  PDL_HOST_DEVICE int64_t cell_of_center(int64_t y, int64_t x) const {
    return ((y - origin) >> shift) * cols + ((x - origin) >> shift);
  }
  // Cell of a finite vote, or -1 outside the grid. floor(q) keeps q inside the chosen cell exactly.
  PDL_HOST_DEVICE int64_t cell_of_vote(float qy, float qx) const {
    const float lo = static_cast<float>(origin);
    if (!(qy >= lo && qx >= lo && qy < static_cast<float>(origin + rows * side) &&
          qx < static_cast<float>(origin + cols * side))) {
      return -1;
    }
    return ((floor_to_int(qy) - origin) >> shift) * cols + ((floor_to_int(qx) - origin) >> shift);
  }
  PDL_HOST_DEVICE static int64_t floor_to_int(float q) {  // q is in range: the conversion is exact
    const int64_t t = static_cast<int64_t>(q);
    return (static_cast<float>(t) > q) ? t - 1 : t;
  }
  // The last ring (Chebyshev distance in cells) around `cell` that still lies in the grid.
  PDL_HOST_DEVICE int64_t last_ring(int64_t cell) const {
    const int64_t ci = cell / cols, cj = cell % cols;
    const int64_t a = ci > rows - 1 - ci ? ci : rows - 1 - ci;
    const int64_t b = cj > cols - 1 - cj ? cj : cols - 1 - cj;
    return a > b ? a : b;
  }
  // A lower bound of the float32 distance from any point of a cell to any centre in its ring r:
  // from r = 2 on, such a centre is at least (r - 1) whole cells away along one axis, and every
  // float operation of center_distance() rounds monotonically.
  PDL_HOST_DEVICE float ring_lower_bound(int64_t r) const {
    const float gap = static_cast<float>((r - 1) * side);
    return r <= 1 ? 0.0f : gap * gap;
  }
  // A lower bound of the float32 distance from any point of [y_lo, y_hi] x [x_lo, x_hi] to any
  // centre bucketed in cell (ci, cj) (integer coordinates inside its square): the gaps between the
  // intervals, rounded as center_distance() rounds (monotonically), so that no centre of the
  // cell is nearer. Searches skip a cell's centres when it exceeds the best distance: a ring far
  // from the centres is mostly cells far off to its sides.
  PDL_HOST_DEVICE float cell_lower_bound(int64_t ci, int64_t cj, float y_lo, float y_hi, float x_lo,
                                         float x_hi) const {
    const float top = static_cast<float>(origin + ci * side);
    const float left = static_cast<float>(origin + cj * side);
    const float last = static_cast<float>(side - 1);
    return squared_distance_f32(interval_gap(top, top + last, y_lo, y_hi),
                                interval_gap(left, left + last, x_lo, x_hi));
  }
  PDL_HOST_DEVICE static float interval_gap(float lo, float hi, float q_lo, float q_hi) {
    return lo > q_hi ? lo - q_hi : (hi < q_lo ? q_lo - hi : 0.0f);
  }
  // Occupied cells in the square of rings 0..r around cell (ci, cj), clipped to the grid, from
  // occupied_sums: the grid's summed-area table of occupied cells, (rows + 1) x (cols + 1) with
  // row and column 0 zero (build_occupied_sums on the CPU, occupied_rows_kernel and
  // occupied_columns_kernel on the GPU).
  PDL_HOST_DEVICE int64_t occupied_in_square(const int32_t* occupied_sums, int64_t ci, int64_t cj,
                                             int64_t r) const {
    const int64_t i0 = ci - r > 0 ? ci - r : 0, i1 = ci + r + 1 < rows ? ci + r + 1 : rows;
    const int64_t j0 = cj - r > 0 ? cj - r : 0, j1 = cj + r + 1 < cols ? cj + r + 1 : cols;
    const int64_t w = cols + 1;
    return int64_t{occupied_sums[i1 * w + j1]} - occupied_sums[i0 * w + j1] -
           occupied_sums[i1 * w + j0] + occupied_sums[i0 * w + j0];
  }
  // The first ring around `cell` that holds a centre: the rings inside it are empty, so a search
  // may start there (votes far from every centre would walk thousands of empty cells). The
  // square of rings 0..r holds one from that r on: a binary search. last_ring + 1 when the grid
  // holds no centre.
  PDL_HOST_DEVICE int64_t first_occupied_ring(const int32_t* occupied_sums, int64_t cell) const {
    const int64_t ci = cell / cols, cj = cell % cols;
    int64_t lo = 0, hi = last_ring(cell) + 1;
    while (lo < hi) {
      const int64_t mid = lo + (hi - lo) / 2;
      if (occupied_in_square(occupied_sums, ci, cj, mid) > 0) {
        hi = mid;
      } else {
        lo = mid + 1;
      }
    }
    return lo;
  }
  // Calls visit(cell, i, j) for every cell (i, j) of ring r around `cell`, nearest to the cell's
  // row and column first (t = 0, 1, ... cells off them), so that searches find a near centre
  // early and skip the far cells (cell_lower_bound). Results never depend on the order.
  template <typename Visit>
  PDL_HOST_DEVICE void for_each_ring_cell(int64_t cell, int64_t r, Visit&& visit) const {
    const int64_t ci = cell / cols, cj = cell % cols;
    const auto at = [&](int64_t i, int64_t j) {
      if (i >= 0 && i < rows && j >= 0 && j < cols) visit(i * cols + j, i, j);
    };
    if (r == 0) {
      at(ci, cj);
      return;
    }
    for (int64_t t = 0; t <= r; ++t) {
      at(ci - r, cj - t);  // the top and bottom rows, corners included
      at(ci + r, cj - t);
      if (t > 0) {
        at(ci - r, cj + t);
        at(ci + r, cj + t);
      }
      if (t < r) {  // the left and right columns between them
        at(ci - t, cj - r);
        at(ci - t, cj + r);
        if (t > 0) {
          at(ci + t, cj - r);
          at(ci + t, cj + r);
        }
      }
    }
  }
};

// About two cells per centre (measured best among 1-16 on the CPU): lists stay short, few are
// built, and the LB-ordered scan makes long lists cheap. At most 2^26 cells whatever the number
// of centres.
inline VoteGrid make_vote_grid(int64_t height, int64_t width, int64_t num_centers) {
  const double area = static_cast<double>(height) * static_cast<double>(width);
  const double target = std::sqrt(std::max(area / (2.0 * static_cast<double>(num_centers)),
                                           area / static_cast<double>(int64_t{1} << 26)));
  int shift = 2;
  while (shift < 24 && static_cast<double>(int64_t{1} << (shift + 1)) <= target) ++shift;
  VoteGrid g{shift, int64_t{1} << shift, -(int64_t{1} << shift), 0, 0};
  g.rows = ((height + 2 * g.side - 1) >> shift) + 1;
  g.cols = ((width + 2 * g.side - 1) >> shift) + 1;
  return g;
}

// Exact nearest-centre queries for the votes of one image (the cell grid described above).
// Candidate lists are built on first use by whichever thread needs a cell first; queries from
// several threads at once are safe.
class CenterIndex {
 public:
  // Remembers the last cell a thread queried: neighbouring pixels mostly vote into one cell.
  struct Cache {
    int64_t cell = -1;
    const std::vector<Candidate>* list = nullptr;
  };

  CenterIndex(int64_t height, int64_t width, const std::vector<int64_t>& center_y,
              const std::vector<int64_t>& center_x);
  ~CenterIndex();
  CenterIndex(const CenterIndex&) = delete;
  CenterIndex& operator=(const CenterIndex&) = delete;

  int64_t size() const { return static_cast<int64_t>(cy_.size()); }

  // Index of the centre nearest to a finite vote (size() must be > 0).
  int32_t nearest(float qy, float qx, Cache& cache) {
    const int64_t cell = grid_.cell_of_vote(qy, qx);
    if (cell < 0) {  // far outside the image: compare with every centre
      return nearest_center_brute_force(cy_.data(), cx_.data(), size(), qy, qx);
    }
    if (cell != cache.cell) {
      cache.list = &candidates(cell);
      cache.cell = cell;
    }
    return nearest_candidate(cy_.data(), cx_.data(), cache.list->data(),
                             static_cast<int64_t>(cache.list->size()), qy, qx);
  }

 private:
  struct Lists;  // per-cell candidate lists, built on first use
  const std::vector<Candidate>& candidates(int64_t cell);

  std::vector<float> cy_, cx_;
  VoteGrid grid_{};
  std::unique_ptr<Lists> lists_;
};

// Instance of one pixel (index.size() must be > 0): 0 when its vote is not finite, else
// 1 + the nearest centre's index.
template <typename TOff>
inline int32_t vote_pixel(int64_t y, int64_t x, TOff dy, TOff dx, CenterIndex& index,
                          CenterIndex::Cache& cache) {
  const float qy = vote_coordinate(y, dy);
  const float qx = vote_coordinate(x, dx);
  if (!is_finite_vote(qy, qx)) return 0;
  return index.nearest(qy, qx, cache) + 1;
}

}  // namespace pdl_post
