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
// the best upper bound. Votes that land outside the grid (huge offsets) compare every centre
// while they are few, else search a quadtree over the cells (nearest_center_outside); non-finite
// votes join no instance. Memory: O(H*W) for the instance map plus O(cells + candidates).
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

// Bounds of |c - q| in float32 over q in [lo, hi]: exact for integers below 2^24 (the cells);
// for any floats (the CUDA vote's box of a warp's votes) they bound |f32(c - q)| for every float
// q in [lo, hi], as the rounding of a subtraction is monotone.
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

// A cell or quadtree node without centres.
constexpr int32_t kNoCenter = INT32_MAX;

// The lowest centre index among a cell's centres (kNoCenter when it holds none); cell_start and
// cell_centers bucket the centres by cell, in any order within a cell.
PDL_HOST_DEVICE int32_t lowest_center_in_cell(const int64_t* cell_start,
                                              const int32_t* cell_centers, int64_t cell) {
  int32_t lowest = kNoCenter;
  for (int64_t k = cell_start[cell]; k < cell_start[cell + 1]; ++k) {
    lowest = cell_centers[k] < lowest ? cell_centers[k] : lowest;
  }
  return lowest;
}

// Votes outside the grid search a quadtree over its cells: level 0 is the cells, each level
// above halves the rows and columns (rounding up) up to a single root, and every node holds the
// lowest centre index among its cells (kNoCenter when empty), levels stored one after another
// from level 0. A node's centres lie in a known rectangle, so its float32 lower bound (as
// cell_lower_bound) and its lowest index bound every centre in it.
struct CellPyramid {
  VoteGrid grid;

  PDL_HOST_DEVICE int64_t rows(int level) const { return ((grid.rows - 1) >> level) + 1; }
  PDL_HOST_DEVICE int64_t cols(int level) const { return ((grid.cols - 1) >> level) + 1; }
  PDL_HOST_DEVICE int64_t nodes(int level) const { return rows(level) * cols(level); }
  // The root's level: the first at which one node covers every cell.
  PDL_HOST_DEVICE int top() const {
    int level = 0;
    while (rows(level) > 1 || cols(level) > 1) ++level;
    return level;
  }
  PDL_HOST_DEVICE int64_t offset(int level) const {
    int64_t at = 0;
    for (int l = 0; l < level; ++l) at += nodes(l);
    return at;
  }
  PDL_HOST_DEVICE int64_t size() const { return offset(top() + 1); }

  // Node (i, j) of `level` (>= 1) from its up to four children in the level below.
  PDL_HOST_DEVICE int32_t lowest_of_children(const int32_t* below, int level, int64_t i,
                                             int64_t j) const {
    const int64_t below_rows = rows(level - 1), below_cols = cols(level - 1);
    int32_t lowest = kNoCenter;
    for (int64_t ci = 2 * i; ci < 2 * i + 2 && ci < below_rows; ++ci) {
      for (int64_t cj = 2 * j; cj < 2 * j + 2 && cj < below_cols; ++cj) {
        const int32_t v = below[ci * below_cols + cj];
        lowest = v < lowest ? v : lowest;
      }
    }
    return lowest;
  }

  // Lower bound of the float32 distance from (qy, qx) to any centre in node (i, j) of `level`:
  // its centres have integer coordinates in the node's cells.
  PDL_HOST_DEVICE float lower_bound(int level, int64_t i, int64_t j, float qy, float qx) const {
    const int64_t last_row = ((i + 1) << level) < grid.rows ? ((i + 1) << level) : grid.rows;
    const int64_t last_col = ((j + 1) << level) < grid.cols ? ((j + 1) << level) : grid.cols;
    const float y_lo = static_cast<float>(grid.origin + (i << level) * grid.side);
    const float y_hi = static_cast<float>(grid.origin + last_row * grid.side - 1);
    const float x_lo = static_cast<float>(grid.origin + (j << level) * grid.side);
    const float x_hi = static_cast<float>(grid.origin + last_col * grid.side - 1);
    return squared_distance_f32(VoteGrid::interval_gap(y_lo, y_hi, qy, qy),
                                VoteGrid::interval_gap(x_lo, x_hi, qx, qx));
  }

  // Which child row (0 or 1) of node row i at `level` is nearer to q: the one whose half holds q.
  PDL_HOST_DEVICE int near_child_row(int level, int64_t i, float qy) const {
    const int64_t split = (2 * i + 1) << (level - 1);
    return qy >= static_cast<float>(grid.origin + split * grid.side) ? 1 : 0;
  }
  PDL_HOST_DEVICE int near_child_col(int level, int64_t j, float qx) const {
    const int64_t split = (2 * j + 1) << (level - 1);
    return qx >= static_cast<float>(grid.origin + split * grid.side) ? 1 : 0;
  }
};

// Nearest centre to a vote, ties to the lower index (brute force's answer), by a depth-first
// branch and bound over the quadtree `pyramid` (CellPyramid's layout): a node is skipped when its
// (lower bound, lowest index) is above the best (distance, index) so far, since then no centre in
// it can win or tie with a lower index. Children are visited nearest quadrant first. No stack: the
// walk moves between siblings and parents by index arithmetic, so a vote costs O(1) memory on any
// device. A vote visits the nodes that may hold a centre as near as the best so far: from
// thousands of pixels away, the many nearly equidistant centres along the image's near edge
// (0.5-2 us a vote on the CPU); a vote so far that all distances round to one value (or +inf)
// only descends where the lowest index is.
PDL_HOST_DEVICE int32_t nearest_center_far(const CellPyramid& tree, const int32_t* pyramid,
                                           const int64_t* cell_start, const int32_t* cell_centers,
                                           const float* cy, const float* cx, float qy, float qx) {
  const int top = tree.top();
  int level = top;
  int64_t i = 0, j = 0, offset = tree.offset(top);
  int32_t best = kNoCenter;
  float best_distance = INFINITY;
  for (;;) {
    // A child past the grid's edge holds nothing; an empty node neither.
    const int32_t lowest = i < tree.rows(level) && j < tree.cols(level)
                               ? pyramid[offset + i * tree.cols(level) + j]
                               : kNoCenter;
    bool descend = false;
    if (lowest != kNoCenter) {
      const float bound = tree.lower_bound(level, i, j, qy, qx);
      descend = bound < best_distance || (bound == best_distance && lowest < best);
    }
    if (descend && level == 0) {  // a cell: compare its centres
      const int64_t cell = i * tree.grid.cols + j;
      for (int64_t k = cell_start[cell]; k < cell_start[cell + 1]; ++k) {
        const int32_t c = cell_centers[k];
        const float d = center_distance(cy[c], cx[c], qy, qx);
        if (d < best_distance || (d == best_distance && c < best)) {
          best_distance = d;
          best = c;
        }
      }
      descend = false;
    }
    if (descend) {  // to the child in q's quadrant
      const int64_t ci = 2 * i + tree.near_child_row(level, i, qy);
      const int64_t cj = 2 * j + tree.near_child_col(level, j, qx);
      --level;
      offset -= tree.nodes(level);
      i = ci;
      j = cj;
      continue;
    }
    for (;;) {  // to the next sibling in the parent's order, or up when this was the last
      if (level == top) return best;
      const int64_t pi = i >> 1, pj = j >> 1;
      const int near_row = tree.near_child_row(level + 1, pi, qy);
      const int near_col = tree.near_child_col(level + 1, pj, qx);
      const int rank =
          ((static_cast<int>(i & 1) ^ near_row) << 1) | (static_cast<int>(j & 1) ^ near_col);
      if (rank < 3) {
        i = 2 * pi + (((rank + 1) >> 1) ^ near_row);
        j = 2 * pj + (((rank + 1) & 1) ^ near_col);
        break;
      }
      offset += tree.nodes(level);
      ++level;
      i = pi;
      j = pj;
    }
  }
}

// Up to this many centres a vote outside the grid compares every centre (about 1 ns each on the
// CPU); above, it walks the quadtree (0.5-1 us a vote from 256 to 4096 centres, far votes on
// one thread): the two cross near 750 centres (benchmarks/RESULTS.md). No quadtree is built
// for fewer.
constexpr int64_t kFarBruteForceMax = 768;

// Nearest of `count` centres to a vote outside the grid, ties to the lower index; `pyramid` is
// read (and needed) only above kFarBruteForceMax centres.
PDL_HOST_DEVICE int32_t nearest_center_outside(const CellPyramid& tree, const int32_t* pyramid,
                                               const int64_t* cell_start,
                                               const int32_t* cell_centers, const float* cy,
                                               const float* cx, int64_t count, float qy, float qx) {
  if (count <= kFarBruteForceMax) return nearest_center_brute_force(cy, cx, count, qy, qx);
  return nearest_center_far(tree, pyramid, cell_start, cell_centers, cy, cx, qy, qx);
}

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
    if (cell < 0) return nearest_far(qy, qx);  // far outside the image
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
  int32_t nearest_far(float qy, float qx) const;

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
