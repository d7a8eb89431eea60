// CPU offset voting: a grid of cells with exact per-cell candidate lists (see offset_voting.h).
#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "pdl_post/offset_voting.h"

namespace pdl_post {
namespace {

// The grid's summed-area table of occupied cells (VoteGrid::occupied_in_square).
std::vector<int32_t> build_occupied_sums(const VoteGrid& g,
                                         const std::vector<int64_t>& bucket_start) {
  const int64_t w = g.cols + 1;
  std::vector<int32_t> sums(static_cast<size_t>((g.rows + 1) * w), 0);
  for (int64_t i = 0; i < g.rows; ++i) {
    int32_t row = 0;
    for (int64_t j = 0; j < g.cols; ++j) {
      const int64_t b = i * g.cols + j;
      row += bucket_start[b + 1] > bucket_start[b] ? 1 : 0;
      sums[(i + 1) * w + j + 1] = sums[i * w + j + 1] + row;
    }
  }
  return sums;
}

// The quadtree of lowest centre indices for votes outside the grid (CellPyramid's layout).
std::vector<int32_t> build_pyramid(const CellPyramid& tree,
                                   const std::vector<int64_t>& bucket_start,
                                   const std::vector<int32_t>& bucket_centers) {
  std::vector<int32_t> pyramid(static_cast<size_t>(tree.size()));
  for (int64_t cell = 0; cell < tree.nodes(0); ++cell) {
    pyramid[cell] = lowest_center_in_cell(bucket_start.data(), bucket_centers.data(), cell);
  }
  for (int level = 1, top = tree.top(); level <= top; ++level) {
    const int32_t* below = pyramid.data() + tree.offset(level - 1);
    int32_t* nodes = pyramid.data() + tree.offset(level);
    for (int64_t i = 0; i < tree.rows(level); ++i) {
      for (int64_t j = 0; j < tree.cols(level); ++j) {
        nodes[i * tree.cols(level) + j] = tree.lowest_of_children(below, level, i, j);
      }
    }
  }
  return pyramid;
}

// Candidate centres for one cell: every centre whose lower bound is <= the smallest upper bound.
void cell_candidates(const VoteGrid& g, int64_t cell_index,
                     const std::vector<int32_t>& occupied_sums,
                     const std::vector<int64_t>& bucket_start,
                     const std::vector<int32_t>& bucket_centers, const std::vector<float>& cy,
                     const std::vector<float>& cx, std::vector<Candidate>& out) {
  const int64_t ci = cell_index / g.cols;
  const int64_t cj = cell_index % g.cols;
  const float y_lo = static_cast<float>(g.origin + ci * g.side);
  const float y_hi = y_lo + static_cast<float>(g.side);
  const float x_lo = static_cast<float>(g.origin + cj * g.side);
  const float x_hi = x_lo + static_cast<float>(g.side);
  const int64_t last_ring = g.last_ring(cell_index);
  const int64_t first_ring = g.first_occupied_ring(occupied_sums.data(), cell_index);

  // Visit the centres in ring r (Chebyshev distance r, in cells) around this cell, except those
  // of cells that lie wholly beyond `bound` (neither an upper nor a lower bound of theirs can be
  // within it: the lists are the same).
  auto for_ring = [&](int64_t r, const float& bound, auto&& visit) {
    g.for_each_ring_cell(cell_index, r, [&](int64_t b, int64_t i, int64_t j) {
      if (bucket_start[b] == bucket_start[b + 1]) return;
      if (g.cell_lower_bound(i, j, y_lo, y_hi, x_lo, x_hi) > bound) return;
      for (int64_t k = bucket_start[b]; k < bucket_start[b + 1]; ++k) visit(bucket_centers[k]);
    });
  };

  float best_upper = std::numeric_limits<float>::infinity();
  int64_t rings = first_ring;
  for (int64_t r = first_ring; r <= last_ring; ++r) {
    if (g.ring_lower_bound(r) > best_upper) break;
    rings = r;
    for_ring(r, best_upper, [&](int32_t c) {
      const float dy = axis_gap_max(cy[c], y_lo, y_hi);
      const float dx = axis_gap_max(cx[c], x_lo, x_hi);
      best_upper = std::min(best_upper, squared_distance_f32(dy, dx));
    });
  }
  out.clear();
  for (int64_t r = first_ring; r <= rings; ++r) {
    if (g.ring_lower_bound(r) > best_upper) break;
    for_ring(r, best_upper, [&](int32_t c) {
      const float dy = axis_gap_min(cy[c], y_lo, y_hi);
      const float dx = axis_gap_min(cx[c], x_lo, x_hi);
      const float lower = squared_distance_f32(dy, dx);
      if (lower <= best_upper) out.push_back(Candidate{lower, c});
    });
  }
  std::sort(out.begin(), out.end(), [](const Candidate& a, const Candidate& b) {
    return a.lower_bound < b.lower_bound || (a.lower_bound == b.lower_bound && a.center < b.center);
  });
}

}  // namespace

struct CenterIndex::Lists {
  std::vector<int64_t> bucket_start;  // centres bucketed by cell, increasing index in a bucket
  std::vector<int32_t> bucket_centers;
  std::vector<int32_t> occupied_sums;   // VoteGrid::occupied_in_square
  std::vector<int32_t> pyramid;         // above kFarBruteForceMax centres (nearest_center_far)
  std::vector<std::atomic<int>> state;  // kEmpty -> kBuilding -> kReady, per cell
  std::vector<std::vector<Candidate>> lists;
  static constexpr int kEmpty = 0, kBuilding = 1, kReady = 2;
};

CenterIndex::CenterIndex(int64_t height, int64_t width, const std::vector<int64_t>& center_y,
                         const std::vector<int64_t>& center_x)
    : cy_(center_y.begin(), center_y.end()), cx_(center_x.begin(), center_x.end()) {
  const int64_t num_centers = static_cast<int64_t>(center_y.size());
  if (num_centers >= std::numeric_limits<int32_t>::max()) {
    throw ValueError("group_pixels: " + std::to_string(num_centers) +
                     " centres do not fit the int32 instance map");
  }
  if (num_centers == 0) return;
  grid_ = make_vote_grid(height, width, num_centers);
  lists_ = std::make_unique<Lists>();
  Lists& g = *lists_;
  const int64_t cells = grid_.rows * grid_.cols;
  g.state = std::vector<std::atomic<int>>(static_cast<size_t>(cells));
  g.lists.resize(static_cast<size_t>(cells));
  g.bucket_start.assign(static_cast<size_t>(cells + 1), 0);
  g.bucket_centers.resize(static_cast<size_t>(num_centers));
  for (int64_t c = 0; c < num_centers; ++c) {
    ++g.bucket_start[grid_.cell_of_center(center_y[c], center_x[c]) + 1];
  }
  for (int64_t b = 0; b < cells; ++b) g.bucket_start[b + 1] += g.bucket_start[b];
  std::vector<int64_t> fill(g.bucket_start.begin(), g.bucket_start.end() - 1);
  for (int64_t c = 0; c < num_centers; ++c) {
    g.bucket_centers[fill[grid_.cell_of_center(center_y[c], center_x[c])]++] =
        static_cast<int32_t>(c);
  }
  g.occupied_sums = build_occupied_sums(grid_, g.bucket_start);
  if (num_centers > kFarBruteForceMax) {
    g.pyramid = build_pyramid(CellPyramid{grid_}, g.bucket_start, g.bucket_centers);
  }
}

int32_t CenterIndex::nearest_far(float qy, float qx) const {
  const Lists& g = *lists_;
  return nearest_center_outside(CellPyramid{grid_}, g.pyramid.data(), g.bucket_start.data(),
                                g.bucket_centers.data(), cy_.data(), cx_.data(), size(), qy, qx);
}

CenterIndex::~CenterIndex() = default;

const std::vector<Candidate>& CenterIndex::candidates(int64_t cell) {
  Lists& g = *lists_;
  std::atomic<int>& state = g.state[cell];
  if (state.load(std::memory_order_acquire) != Lists::kReady) {
    int expected = Lists::kEmpty;
    if (state.compare_exchange_strong(expected, Lists::kBuilding, std::memory_order_acq_rel)) {
      cell_candidates(grid_, cell, g.occupied_sums, g.bucket_start, g.bucket_centers, cy_, cx_,
                      g.lists[cell]);
      state.store(Lists::kReady, std::memory_order_release);
    } else {
      while (state.load(std::memory_order_acquire) != Lists::kReady) std::this_thread::yield();
    }
  }
  return g.lists[cell];
}

}  // namespace pdl_post
