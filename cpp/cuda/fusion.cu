// CUDA labels, offset voting and fusion (docs/merge-semantics.md steps 5-8), in deeplab2's stage
// split but without its caps: every table is sized from the data.
//   vote_and_count   one pass over the pixels: thing test, nearest centre (brute force over tiles
//                    of centres in shared memory; strict '<' in index order = ties to the lower
//                    index, the CPU's exact answer; above kBruteForceCentersMax centres a ring
//                    search in a grid of cells, and for votes outside it every centre or,
//                    above kFarBruteForceMax, a quadtree walk: the same answer), instance map,
//                    and one histogram over (instance, class) pairs. Row 0 of the histogram (no
//                    instance) is the unassigned area per class; rows 1..K give areas and the
//                    majority vote. Bins are counted in shared memory when the table is small,
//                    with warp-aggregated atomics, and flushed once per block; the counts are
//                    integers, so the order of the atomics does not matter. Where the table
//                    fits no shared memory and would take more than 4 counters per pixel (dense
//                    peaks, thousands of class ids) every pixel is keyed by its (instance, class)
//                    pair and the keys are sorted instead (PairSort in cuda_common.cuh).
//                    Pixels go to warps in fixed grid-stride shares, or (set_cuda_vote_chunks, a
//                    candidate) in chunks taken from a counter per image until none are left.
//                    With set_cuda_vote_box (a candidate) a warp compares only the centres that
//                    can be nearest in the box of its votes (nearest_in_warp_box).
//   resolve_segments per instance: area and majority class (first maximum = smallest class;
//                    with sorted pairs from the runs of equal keys, pair_runs_kernel);
//                    number n = 1 + earlier non-empty instances of the same class (a parallel
//                    count over earlier instances, or above kBruteForceCentersMax centres the
//                    rank in a stable sort by class: ids follow centre order); stuff filter per
//                    class; segment list per image in the CPU's order (block-wide scans).
//   score_with_logits  the CPU's summation order: per block of 4 rows a sequential sum per segment
//                    in row-major order, blocks added in order, so scores are deterministic.
//                    Blocks go in chunks whose block x segment sums fit kScoreChunkBytes, each
//                    chunk added to running sums: memory stays bounded when every pixel is its
//                    own instance (top_k=None on a flat heatmap: 4.3 GB at 1024x2048 in one go,
//                    34 GB at 2048x4096).
//   write_panoptic   per pixel panoptic_label() through the instance and class tables.
// label_range and write_panoptic read row-major inputs 4 pixels per load (packed loads: at batch 8
// on an H200 their kernels took 22 and 47 us instead of 48 and 93), other layouts through the
// strides (set_cuda_packed_loads turns packing off, for tests).
// Class tables are indexed by the label itself, or from ClassIndex::kDenseLabelLimit up by its rank
// among the batch's distinct labels (distinct_labels: gather, radix sort, unique), as on the CPU.
#include <algorithm>
#include <atomic>
#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>
#include <cub/device/device_radix_sort.cuh>
#include <cub/device/device_segmented_radix_sort.cuh>
#include <cub/device/device_select.cuh>
#include <limits>
#include <string>
#include <type_traits>

#include "cuda_common.cuh"
#include "pdl_post/majority_vote.h"
#include "pdl_post/semantic_argmax.h"

namespace pdl_post {
namespace cuda {
namespace {

constexpr int kThreads = 256;
std::atomic<bool> vote_chunks{false};  // set_cuda_vote_chunks
std::atomic<bool> vote_box{false};     // set_cuda_vote_box
std::atomic<bool> packed_loads{true};  // set_cuda_packed_loads
// Pixels a warp of the vote takes at once from its image's cursor (vote_chunks): 8 rounds of 32.
constexpr int64_t kVoteChunk = 8 * 32;
// Pixels a thread of write_kernel loads before using any: their loads in flight together (one at
// a time it took 28 us at 1024 x 2048 on an H200, 12 us with four).
constexpr int kLoadsInFlight = 4;
static_assert(kThreads % 32 == 0, "vote_kernel's __match_any_sync needs whole warps");
// Every centre of a brute-force image, in shared memory (images with more take the vote grid).
constexpr int kCenterTile = static_cast<int>(kBruteForceCentersMax);
constexpr int kScoreThreads = 256;  // pixels evaluated at once per score block
constexpr int kScoreGroup = 8;      // staged pixels thread 0 takes into registers at once
static_assert(kScoreThreads % kScoreGroup == 0, "the stage is read in whole groups");
constexpr int64_t kSharedScoreSlots = 4096;  // segment sums kept in shared memory up to (32 kB)
// Block x segment sums of one chunk of score blocks, at most (one block at least). Each block's
// sums are a serial chain, so fewer blocks per launch leave the GPU idle: the chunks stay large
// (a 1024x2048 heatmap flat above the threshold, 16.8 MB a block, runs 5 chunks of 61 blocks
// instead of 4.3 GB at once). The emulated build (the test suite) takes 64 KiB, so that small
// test images run several chunks.
#ifdef PDL_POST_EMULATED_CUDA
constexpr int64_t kScoreChunkBytes = int64_t{64} << 10;
#else
constexpr int64_t kScoreChunkBytes = int64_t{1} << 30;
#endif

struct MinOp {
  __device__ long long operator()(long long a, long long b) const { return a < b ? a : b; }
};
struct MaxOp {
  __device__ long long operator()(long long a, long long b) const { return a > b ? a : b; }
};

template <typename T>
__global__ void argmax_kernel(DeviceView<const T> logits, int64_t channels, int64_t height,
                              int64_t width, int64_t total, int32_t* labels) {
  for_each_pixel(total, height, width, [&](int64_t i, int64_t b, int64_t y, int64_t x) {
    labels[i] = argmax_channel(&logits.plane(b, 0)(y, x), logits.stride_c, channels);
  });
}

using RangeReduce = cub::BlockReduce<long long, kThreads>;

// Folds every thread's (lo, hi) into range[0] / range[1]: a block reduction, then one atomic
// each per block.
__device__ void fold_into_range(RangeReduce::TempStorage& storage, long long lo, long long hi,
                                long long* lowest, long long* highest) {
  lo = RangeReduce(storage).Reduce(lo, MinOp());
  __syncthreads();
  hi = RangeReduce(storage).Reduce(hi, MaxOp());
  if (threadIdx.x == 0) {
    atomicMin(lowest, lo);
    atomicMax(highest, hi);
  }
}
__device__ void fold_into_range(RangeReduce::TempStorage& storage, long long lo, long long hi,
                                long long* range) {
  fold_into_range(storage, lo, hi, &range[0], &range[1]);
}

template <typename TSem>
__global__ void label_range_kernel(DeviceView<const TSem> sem, int64_t height, int64_t width,
                                   int64_t total, long long* range) {
  __shared__ RangeReduce::TempStorage storage;
  long long lo = std::numeric_limits<long long>::max();
  long long hi = std::numeric_limits<long long>::min();
  // One load at a time: four at once took more registers (48, not 40) and more time (batch 8 of
  // 1024 x 2048 on an H200: 70 us, not 48).
  for_each_pixel(total, height, width, [&](int64_t, int64_t b, int64_t y, int64_t x) {
    const long long v = static_cast<long long>(sem.plane(b, 0)(y, x));
    lo = v < lo ? v : lo;
    hi = v > hi ? v : hi;
  });
  fold_into_range(storage, lo, hi, range);
}

// Image blockIdx.y's largest instance id into maxima[b], the batch's smallest into *minimum.
template <typename T>
__global__ void instance_range_kernel(DeviceView<const T> instance, int64_t height, int64_t width,
                                      long long* maxima, long long* minimum) {
  __shared__ RangeReduce::TempStorage storage;
  const int64_t b = blockIdx.y;
  const Plane<const T> ids = instance.plane(b, 0);
  long long lo = std::numeric_limits<long long>::max();
  long long hi = std::numeric_limits<long long>::min();
  for_each_pixel(height * width, height, width, [&](int64_t, int64_t, int64_t y, int64_t x) {
    const long long v = static_cast<long long>(ids(y, x));
    lo = v < lo ? v : lo;
    hi = v > hi ? v : hi;
  });
  fold_into_range(storage, lo, hi, minimum, &maxima[b]);
}

// kPackPixels consecutive pixels of a row-major block, loaded or stored as one aligned access
// (int32: one 16-byte load; int64: two; uint8: 4 bytes) instead of one per pixel, with no index
// arithmetic per pixel: the packed kernels below, for inputs that packable() accepts. Aligned to
// at most 16 bytes, the widest load, which allocators give (CUDA's 256, numpy's 16).
constexpr int kPackPixels = 4;
template <typename T>
struct alignas(std::min<size_t>(16, kPackPixels * sizeof(T))) PixelPack {
  T v[kPackPixels];
};

// Whether `data` may be read or written as PixelPack<T>s.
template <typename T>
bool pack_aligned(const void* data) {
  return reinterpret_cast<uintptr_t>(data) % alignof(PixelPack<T>) == 0;
}

// Whether `v` ([B, 1, H, W]) is one row-major block of whole packs: element (b, y, x) at
// b*H*W + y*W + x from a start aligned for PixelPack<T>, and H*W a multiple of kPackPixels (a
// pack never spans two images).
template <typename T>
bool packable(const StridedView& v) {
  const int64_t h = v.height(), w = v.width();
  const bool row_major = (w == 1 || v.strides[3] == 1) && (h == 1 || v.strides[2] == w) &&
                         (v.batch() == 1 || v.strides[0] == h * w);
  return row_major && h * w % kPackPixels == 0 && pack_aligned<T>(v.data);
}

// label_range_kernel over `packs` packs of a packable label array; min and max in the labels' own
// type, widened once per thread.
template <typename TSem>
__global__ void label_range_packed_kernel(const PixelPack<TSem>* labels, int64_t packs,
                                          long long* range) {
  __shared__ RangeReduce::TempStorage storage;
  TSem lo = std::numeric_limits<TSem>::max();
  TSem hi = std::numeric_limits<TSem>::lowest();
  const int64_t step = int64_t{gridDim.x} * blockDim.x;
  for (int64_t p = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; p < packs; p += step) {
    const PixelPack<TSem> pack = labels[p];
#pragma unroll
    for (int j = 0; j < kPackPixels; ++j) {
      lo = pack.v[j] < lo ? pack.v[j] : lo;
      hi = pack.v[j] > hi ? pack.v[j] : hi;
    }
  }
  fold_into_range(storage, static_cast<long long>(lo), static_cast<long long>(hi), range);
}

template <typename TSem>
__global__ void gather_labels_kernel(DeviceView<const TSem> sem, int64_t height, int64_t width,
                                     int64_t total, int64_t* labels) {
  for_each_pixel(total, height, width, [&](int64_t i, int64_t b, int64_t y, int64_t x) {
    labels[i] = static_cast<int64_t>(sem.plane(b, 0)(y, x));
  });
}

template <typename TSem>
__global__ void thing_flags_kernel(DeviceView<const TSem> sem, int64_t height, int64_t width,
                                   int64_t total, ThingClasses things, uint8_t* flags) {
  for_each_pixel(total, height, width, [&](int64_t i, int64_t b, int64_t y, int64_t x) {
    flags[i] = things.contains(static_cast<int64_t>(sem.plane(b, 0)(y, x))) ? 1 : 0;
  });
}

// Adds one to hist[bin] for each lane of the warp that counts (lanes with equal bins add
// together). Every lane of the warp calls it, converged, counting or not: a lane that skipped it
// could run ahead into the next pixel's warp intrinsics while the others are still in this one.
template <typename TCount>
__device__ void add_to_bin(TCount* hist, unsigned long long bin, bool counts) {
  const unsigned long long kNoBin = ~0ull;  // the lanes that do not count, grouped apart
  const unsigned peers = __match_any_sync(0xffffffffu, counts ? bin : kNoBin);
  if (counts && (threadIdx.x & 31u) == static_cast<unsigned>(__ffs(peers) - 1)) {
    atomicAdd(&hist[bin], static_cast<TCount>(__popc(peers)));
  }
}

template <typename TSem, typename TOff>
struct VoteArgs {
  DeviceView<const TSem> sem;
  DeviceView<const uint8_t> mask;
  DeviceView<const TOff> off;
  ThingClasses things;
  CenterList centers;
  FuseLayout layout;
  FuseBuffers buffers;
  ManyCenters many;     // kSearch == kGridSearch only
  void* pair_keys;      // PairSort::keys, or nullptr: pairs counted in the histogram
  bool wide_pair_keys;  // PairSort::wide
  int64_t no_pair;      // PairSort::none
  int64_t height, width;
  unsigned long long* vote_cursor;  // [B], zeroed: chunks taken per image; nullptr: a fixed share
  const int32_t* given;             // kGivenInstance only: [B, H, W] the caller's instance ids
};

// How vote_kernel finds the nearest centre, each its own kernel (a branch between them would cost
// the default's registers): every centre in order, the vote grid (many centres), or the centres
// that can win in the box of the warp's votes (set_cuda_vote_box, a candidate). kGivenInstance
// votes nothing: each pixel's instance is the caller's (fuse), only counted.
enum NearestSearch : int { kEveryCenter, kGridSearch, kWarpBox, kGivenInstance };

// The nearest centre to each voting lane's vote, for a whole warp at once: the brute force's
// answer (every centre in index order, strict '<': ties to the lower index, all-inf picks 0),
// comparing only the centres that can be nearest somewhere in the box of the warp's votes. Those
// are the CPU vote cells' candidates (offset_voting.h): centres whose lower bound of the distance
// to the box is at most the smallest upper bound of any centre, the bounds rounded as the
// distance is, so that the winner and every centre tying with it are among them. A warp's votes
// mostly point at one or two instances: 1.15 of 38 centres per warp with votes in gpu_bench's
// scene (benchmarks/vote_box_candidates.py, a count), where the brute force compares all 38.
// Every lane of the warp calls it; `centers` centres in the shared tiles.
__device__ int32_t nearest_in_warp_box(const float* tile_y, const float* tile_x, int32_t centers,
                                       bool voting, float qy, float qx) {
  constexpr unsigned kWarp = 0xffffffffu;
  if (__ballot_sync(kWarp, voting) == 0) return 0;
  const float inf = __int_as_float(0x7f800000);
  const int lane = static_cast<int>(threadIdx.x & 31u);
  float y_lo = voting ? qy : inf, y_hi = voting ? qy : -inf;
  float x_lo = voting ? qx : inf, x_hi = voting ? qx : -inf;
  for (int step = 1; step < 32; step <<= 1) {
    y_lo = fminf(y_lo, __shfl_sync(kWarp, y_lo, lane ^ step));
    y_hi = fmaxf(y_hi, __shfl_sync(kWarp, y_hi, lane ^ step));
    x_lo = fminf(x_lo, __shfl_sync(kWarp, x_lo, lane ^ step));
    x_hi = fmaxf(x_hi, __shfl_sync(kWarp, x_hi, lane ^ step));
  }
  float cut = inf;  // the smallest upper bound (+inf where every distance may overflow)
  for (int32_t k = lane; k < centers; k += 32) {
    cut = fminf(cut, squared_distance_f32(axis_gap_max(tile_y[k], y_lo, y_hi),
                                          axis_gap_max(tile_x[k], x_lo, x_hi)));
  }
  for (int step = 1; step < 32; step <<= 1) cut = fminf(cut, __shfl_sync(kWarp, cut, lane ^ step));
  int32_t best = 0;
  float best_distance = inf;
  for (int32_t first = 0; first < centers; first += 32) {
    const int32_t k = first + lane;
    const bool candidate =
        k < centers && !(squared_distance_f32(axis_gap_min(tile_y[k], y_lo, y_hi),
                                              axis_gap_min(tile_x[k], x_lo, x_hi)) > cut);
    // The same candidates for every lane, in index order.
    for (unsigned left = __ballot_sync(kWarp, candidate); left != 0; left &= left - 1) {
      const int32_t i = first + __ffs(static_cast<int>(left)) - 1;
      const float d = center_distance(tile_y[i], tile_x[i], qy, qx);
      if (d < best_distance) {
        best_distance = d;
        best = i;
      }
    }
  }
  return best;
}

// The batch-wide grid cell of centre k of image b.
__device__ int64_t cell_of(const CenterList& centers, const ManyCenters& many, int64_t b, int64_t k,
                           int64_t width) {
  const int64_t pixel = centers.pixel[centers.begin[b] + k];
  return many.cell_offset[b] + many.grid[b].cell_of_center(pixel / width, pixel % width);
}

// Counts image b's centres per grid cell (into cell_fill, zeroed).
__global__ void count_cells_kernel(CenterList centers, ManyCenters many, int64_t width) {
  const int64_t b = blockIdx.y;
  const int64_t k = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (k >= centers.count[b]) return;
  const int64_t cell = cell_of(centers, many, b, k, width);
  atomicAdd(reinterpret_cast<unsigned long long*>(&many.cell_fill[cell]), 1ull);
}

// Writes each centre's index into its cell's slots (in any order: the search breaks ties by index).
__global__ void fill_cells_kernel(CenterList centers, ManyCenters many, int64_t width) {
  const int64_t b = blockIdx.y;
  const int64_t k = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (k >= centers.count[b]) return;
  const int64_t cell = cell_of(centers, many, b, k, width);
  const unsigned long long slot =
      atomicAdd(reinterpret_cast<unsigned long long*>(&many.cell_fill[cell]), 1ull);
  many.cell_centers[many.cell_start[cell] + static_cast<int64_t>(slot)] = static_cast<int32_t>(k);
}

// Each image's summed-area table of occupied cells (VoteGrid::occupied_in_square): a thread per
// table row sums its row's occupied cells (row 0 stays zero), then a thread per table column adds
// the rows up.
__global__ void occupied_rows_kernel(ManyCenters many) {
  const int64_t b = blockIdx.y, i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  const VoteGrid& grid = many.grid[b];
  if (i > grid.rows) return;
  const int64_t* start = many.cell_start + many.cell_offset[b];
  int32_t* sums = many.occupied_sums + many.sums_offset[b] + i * (grid.cols + 1);
  int32_t row = 0;
  sums[0] = 0;
  for (int64_t j = 0; j < grid.cols; ++j) {
    if (i > 0) row += start[(i - 1) * grid.cols + j + 1] > start[(i - 1) * grid.cols + j] ? 1 : 0;
    sums[j + 1] = row;
  }
}

__global__ void occupied_columns_kernel(ManyCenters many) {
  const int64_t b = blockIdx.y, j = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  const VoteGrid& grid = many.grid[b];
  if (j > grid.cols) return;
  int32_t* sums = many.occupied_sums + many.sums_offset[b] + j;
  const int64_t w = grid.cols + 1;
  for (int64_t i = 1; i <= grid.rows; ++i) sums[i * w] += sums[(i - 1) * w];
}

// Per cell of the batch, the first ring around it that holds a centre of its image (the rings
// inside are empty, so a vote's search starts there), found once per cell by the CPU's rule
// (VoteGrid::first_occupied_ring). An image without centres gets last_ring + 1 (its pixels do
// not vote).
__global__ void first_ring_kernel(ManyCenters many, int64_t batch) {
  for (int64_t cell = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; cell < many.cells;
       cell += int64_t{gridDim.x} * blockDim.x) {
    const int64_t b = lower_bound_index(many.cell_offset, batch, cell + 1) - 1;
    const int32_t* sums = many.occupied_sums + many.sums_offset[b];
    many.first_ring[cell] =
        static_cast<int32_t>(many.grid[b].first_occupied_ring(sums, cell - many.cell_offset[b]));
  }
}

// One level of each image's quadtree for votes outside its grid (CellPyramid; built when an image
// may keep more than kFarBruteForceMax centres): level 0 from the cells' centres, each level above
// from the one below (a launch per level, in order).
__global__ void pyramid_level_kernel(ManyCenters many, int level) {
  const int64_t b = blockIdx.y, node = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  const CellPyramid tree{many.grid[b]};
  if (level > tree.top() || node >= tree.nodes(level)) return;
  int32_t* nodes = many.pyramid + many.pyramid_offset[b] + tree.offset(level);
  if (level == 0) {
    nodes[node] =
        lowest_center_in_cell(many.cell_start + many.cell_offset[b], many.cell_centers, node);
  } else {
    const int64_t cols = tree.cols(level);
    nodes[node] =
        tree.lowest_of_children(nodes - tree.nodes(level - 1), level, node / cols, node % cols);
  }
}

// Nearest of an image's centres to a finite vote, ties to the lower index (brute force's answer):
// rings of cells outward from the vote's cell (from its first occupied ring) until a ring's lower
// bound exceeds the best distance (a centre there is strictly farther), so every centre that
// could win or tie is compared. Votes outside the grid compare every centre or search the image's
// quadtree, as on the CPU. cell_start, first_ring, pyramid: the image's.
__device__ int32_t nearest_in_grid(const VoteGrid& grid, const int64_t* cell_start,
                                   const int32_t* first_ring, const int32_t* pyramid,
                                   const int32_t* cell_centers, const float* cy, const float* cx,
                                   int64_t count, float qy, float qx) {
  const int64_t cell = grid.cell_of_vote(qy, qx);
  if (cell < 0) {
    return nearest_center_outside(CellPyramid{grid}, pyramid, cell_start, cell_centers, cy, cx,
                                  count, qy, qx);
  }
  int32_t best = -1;
  float best_distance = 0.0f;
  const int64_t last_ring = grid.last_ring(cell);
  for (int64_t r = first_ring[cell]; r <= last_ring; ++r) {
    if (best >= 0 && grid.ring_lower_bound(r) > best_distance) break;
    grid.for_each_ring_cell(cell, r, [&](int64_t c, int64_t row, int64_t col) {
      // A cell wholly farther than the best is skipped before its slots are read.
      if (best >= 0 && grid.cell_lower_bound(row, col, qy, qy, qx, qx) > best_distance) return;
      for (int64_t i = cell_start[c]; i < cell_start[c + 1]; ++i) {
        const int32_t k = cell_centers[i];
        const float d = center_distance(cy[k], cx[k], qy, qx);
        if (best < 0 || d < best_distance || (d == best_distance && k < best)) {
          best = k;
          best_distance = d;
        }
      }
    });
  }
  return best;
}

template <typename TSem, typename TOff, bool kFromMask, bool kSharedHist, int kSearch>
__global__ void vote_kernel(VoteArgs<TSem, TOff> a) {
  extern __shared__ unsigned char shared_bytes[];
  float* tile_y = reinterpret_cast<float*>(shared_bytes);
  float* tile_x = tile_y + kCenterTile;
  unsigned int* shared_hist = reinterpret_cast<unsigned int*>(tile_x + kCenterTile);
  if (plan_failed(a.buffers.plan_verdict)) return;
  const int64_t b = blockIdx.y;
  const int64_t num_centers = a.centers.count[b];
  const float* center_y = a.centers.y + a.centers.begin[b];
  const float* center_x = a.centers.x + a.centers.begin[b];
  const int64_t classes = a.layout.num_classes;
  const int64_t bins = (a.pair_keys ? 1 : num_centers + 1) * classes;
  unsigned long long* hist = a.buffers.hist + a.layout.hist_offset[b];
  if (kSharedHist) {
    for (int64_t i = threadIdx.x; i < bins; i += blockDim.x) shared_hist[i] = 0;
  }
  // Brute force: the image's centres in shared memory once (K <= kBruteForceCentersMax fit one
  // tile), so that the pixel loop has no barrier and its warps hide each other's loads.
  constexpr bool kVotes = kSearch != kGivenInstance;
  if (kSearch != kGridSearch && kVotes) {
    for (int64_t i = threadIdx.x; i < num_centers; i += blockDim.x) {
      tile_y[i] = center_y[i];
      tile_x[i] = center_x[i];
    }
  }
  __syncthreads();
  const Plane<const TSem> sem = a.sem.plane(b, 0);
  const Plane<const TOff> dy = a.off.plane(b, 0), dx = a.off.plane(b, 1);
  const int64_t hw = a.height * a.width;
  int32_t* instance = a.buffers.instance + b * hw;
  // One pixel: p of the image at (y, x); inactive lanes (past the image) take part in the warp's
  // histogram add only. Every lane of the warp calls it together.
  const auto vote_pixel = [&](int64_t p, bool active, int64_t y, int64_t x) {
    // The offsets are read with the label (not after it proves a thing): one memory round trip.
    const int64_t label = active ? static_cast<int64_t>(sem(y, x)) : 0;
    const TOff off_y = active && kVotes ? dy(y, x) : TOff(0);
    const TOff off_x = active && kVotes ? dx(y, x) : TOff(0);
    bool thing = false;
    if (active && kVotes) {
      thing = kFromMask ? a.mask.plane(b, 0)(y, x) != 0 : a.things.contains(label);
    }
    bool voting = thing && num_centers > 0;
    float qy = 0.0f, qx = 0.0f;
    if (voting) {
      qy = vote_coordinate(y, off_y);
      qx = vote_coordinate(x, off_x);
      voting = is_finite_vote(qy, qx);
    }
    // Nearest centre, ties to the lower index: the CPU brute force's rule (all-inf picks 0).
    int32_t best = 0;
    float best_distance = __int_as_float(0x7f800000);  // +inf
    if (kSearch == kGridSearch) {
      if (voting) {
        const int64_t first = a.centers.begin[b];
        const int64_t cells = a.many.cell_offset[b];
        best = nearest_in_grid(a.many.grid[b], a.many.cell_start + cells, a.many.first_ring + cells,
                               a.many.pyramid + a.many.pyramid_offset[b], a.many.cell_centers,
                               a.centers.y + first, a.centers.x + first, num_centers, qy, qx);
      }
    } else if (kSearch == kWarpBox) {
      best = nearest_in_warp_box(tile_y, tile_x, static_cast<int32_t>(num_centers), voting, qy, qx);
    } else if (voting) {
      for (int32_t i = 0; i < static_cast<int32_t>(num_centers); ++i) {
        const float d = center_distance(tile_y[i], tile_x[i], qy, qx);
        if (d < best_distance) {
          best_distance = d;
          best = i;
        }
      }
    }
    // Sorted pairs: only pixels without an instance count in the histogram.
    const int32_t inst = kVotes ? (voting ? best + 1 : 0) : (active ? a.given[b * hw + p] : 0);
    const bool counted = active && (a.pair_keys == nullptr || inst == 0);
    const int64_t c = active ? a.layout.class_index(label) : 0;
    if (active) {
      if (kVotes) instance[p] = inst;
      if (a.pair_keys) {
        store_pair_key(a.pair_keys, a.wide_pair_keys, b * hw + p,
                       inst > 0 ? (a.layout.inst_offset[b] + inst) * classes + c : a.no_pair);
      }
    }
    // Every lane of the warp is here (whole warps, none has left the loop).
    const unsigned long long bin = static_cast<unsigned long long>(inst * classes + c);
    if (kSharedHist) {
      add_to_bin(shared_hist, bin, counted);
    } else {
      add_to_bin(hist, bin, counted);
    }
  };
  if (a.vote_cursor == nullptr) {  // a fixed share: every (gridDim.x * blockDim.x)-th pixel
    const int64_t step = int64_t{gridDim.x} * blockDim.x;
    PixelWalk at(blockIdx.x * int64_t{blockDim.x} + threadIdx.x, step, a.height, a.width);
    for (int64_t base = blockIdx.x * int64_t{blockDim.x}; base < hw; base += step, at.advance()) {
      const int64_t p = base + threadIdx.x;
      const bool active = p < hw;
      vote_pixel(p, active, active ? at.y : 0, active ? at.x : 0);
    }
  } else {  // chunks of kVoteChunk pixels per warp from the image's cursor, until none are left
    const int lane = static_cast<int>(threadIdx.x & 31u);
    for (;;) {
      unsigned long long chunk = 0;
      if (lane == 0) chunk = atomicAdd(a.vote_cursor + b, 1ull);
      chunk = __shfl_sync(0xffffffffu, chunk, 0);
      const int64_t first = static_cast<int64_t>(chunk) * kVoteChunk;
      if (first >= hw) break;
      // The image's last chunk ends the warp's work (later ones start past the image), so a
      // lane past the image never runs ahead into another round's warp intrinsics.
      const int64_t end = first + kVoteChunk < hw ? first + kVoteChunk : hw;
      PixelWalk at(first + lane, 32, a.height, a.width);
      for (int64_t base = first; base < end; base += 32, at.advance()) {
        const int64_t p = base + lane;
        const bool active = p < hw;
        vote_pixel(p, active, active ? at.y : 0, active ? at.x : 0);
      }
      if (end == hw) break;
    }
  }
  if (kSharedHist) {
    __syncthreads();
    for (int64_t i = threadIdx.x; i < bins; i += blockDim.x) {
      if (shared_hist[i] != 0) atomicAdd(&hist[i], static_cast<unsigned long long>(shared_hist[i]));
    }
  }
}

// Per run of equal sorted pair keys (one instance, one class): its length added to the
// instance's area and offered to its majority (PairSort). Runs are found from their first key; a
// galloping search finds the end, in reads logarithmic in the run's length.
template <typename TKey>
__global__ void pair_runs_kernel(PairSort pairs, int64_t classes) {
  const int64_t n = pairs.pixels;
  const TKey* sorted = static_cast<const TKey*>(pairs.sorted);
  const TKey none = static_cast<TKey>(pairs.none);
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    const TKey key = sorted[i];
    if (key == none || (i > 0 && sorted[i - 1] == key)) continue;
    int64_t last = i, step = 1;  // sorted[last] == key
    while (last + step < n && sorted[last + step] == key) {
      last += step;
      step *= 2;
    }
    int64_t end = last + step < n ? last + step : n;  // sorted[end] != key, or the end
    while (end - last > 1) {
      const int64_t mid = last + (end - last) / 2;
      if (sorted[mid] == key) {
        last = mid;
      } else {
        end = mid;
      }
    }
    const unsigned long long count = static_cast<unsigned long long>(end - i);
    const int64_t slot = static_cast<int64_t>(key) / classes;
    const int64_t c = static_cast<int64_t>(key) % classes;
    atomicAdd(&pairs.votes[2 * slot], count);
    atomicMax(&pairs.votes[2 * slot + 1], count << 32 | (0xffffffffull - c));
  }
}

// Per instance k >= 1: area and majority class (first maximum: the smallest class wins ties),
// from its histogram row, or from the votes of its sorted pairs (votes != nullptr).
__global__ void majority_kernel(CenterList centers, FuseLayout layout, FuseBuffers buffers,
                                const unsigned long long* votes) {
  if (plan_failed(buffers.plan_verdict)) return;
  const int64_t b = blockIdx.y;
  const int64_t k = blockIdx.x * int64_t{blockDim.x} + threadIdx.x + 1;
  if (k > centers.count[b]) return;
  const int64_t t = layout.inst_offset[b] + k;
  unsigned long long area = 0;
  int64_t best = -1;
  if (votes) {
    area = votes[2 * t];
    best = static_cast<int64_t>(0xffffffffull - (votes[2 * t + 1] & 0xffffffffull));
  } else {
    const int64_t classes = layout.num_classes;
    const unsigned long long* row = buffers.hist + layout.hist_offset[b] + k * classes;
    unsigned long long best_count = 0;
    for (int64_t c = 0; c < classes; ++c) {
      const unsigned long long v = row[c];
      area += v;
      if (v > best_count) {
        best_count = v;
        best = c;
      }
    }
  }
  buffers.area[t] = static_cast<int64_t>(area);
  buffers.class_of[t] = area > 0 ? best : -1;
}

// Instance k of image b, of class index `mine` (-1: empty), is number n of its class: its id, or
// the error (the first such instance in centre order) when n reaches label_divisor.
__device__ void assign_instance_label(int64_t b, int64_t k, int64_t mine, int64_t n,
                                      const FuseLayout& layout, const FuseBuffers& buffers,
                                      int64_t label_divisor, int64_t void_label) {
  int64_t* label = buffers.instance_label + layout.inst_offset[b];
  if (mine < 0) {
    label[k] = void_label;  // empty instance: uses no id
  } else if (n >= label_divisor) {
    atomicMin(&buffers.error_instance[b], static_cast<unsigned long long>(k));
    label[k] = void_label;
  } else {
    label[k] = layout.class_label(mine) * label_divisor + n;
  }
}

// Per instance: n = 1 + number of earlier non-empty instances of its class; id or error.
__global__ void number_kernel(CenterList centers, FuseLayout layout, FuseBuffers buffers,
                              int64_t label_divisor, int64_t void_label) {
  __shared__ int64_t tile[kThreads];
  if (plan_failed(buffers.plan_verdict)) return;
  const int64_t b = blockIdx.y;
  const int64_t count = centers.count[b];
  const int64_t first = blockIdx.x * int64_t{blockDim.x} + 1;
  if (first > count) return;  // the whole block leaves together
  const int64_t k = first + threadIdx.x;
  const int64_t last = first + blockDim.x - 1 < count ? first + blockDim.x - 1 : count;
  const int64_t* class_of = buffers.class_of + layout.inst_offset[b];
  const int64_t mine = k <= count ? class_of[k] : -1;
  int64_t n = 1;
  for (int64_t j0 = 1; j0 < last; j0 += blockDim.x) {
    const int64_t j = j0 + threadIdx.x;
    tile[threadIdx.x] = j < last ? class_of[j] : -1;
    __syncthreads();
    if (mine >= 0) {
      const int64_t end = k - j0 < int64_t{blockDim.x} ? k - j0 : int64_t{blockDim.x};
      for (int64_t i = 0; i < end; ++i) n += tile[i] == mine ? 1 : 0;
    }
    __syncthreads();
  }
  if (k > count) return;
  assign_instance_label(b, k, mine, n, layout, buffers, label_divisor, void_label);
}

// Sort keys of image b's instances 1..K_b (1 + class index, 0 when empty) and their segment.
__global__ void class_keys_kernel(CenterList centers, FuseLayout layout, FuseBuffers buffers,
                                  ManyCenters many) {
  const int64_t b = blockIdx.y;
  const int64_t k = blockIdx.x * int64_t{blockDim.x} + threadIdx.x + 1;
  const int64_t first = layout.inst_offset[b] + 1;
  if (k == 1) {
    many.segment_begin[b] = static_cast<int>(first);
    many.segment_end[b] = static_cast<int>(first + centers.count[b]);
  }
  if (k > centers.count[b]) return;
  many.class_keys[first + k - 1] = buffers.class_of[first + k - 1] + 1;
  many.instance_index[first + k - 1] = static_cast<int32_t>(k);
}

// After a stable sort by key (largest first), an instance's number is 1 + its position in the
// run of its class: the earlier instances of the class, in centre order, come before it.
__global__ void number_sorted_kernel(CenterList centers, FuseLayout layout, FuseBuffers buffers,
                                     ManyCenters many, int64_t label_divisor, int64_t void_label) {
  const int64_t b = blockIdx.y;
  const int64_t first = layout.inst_offset[b] + 1;
  const int64_t j = first + blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (j >= first + centers.count[b]) return;
  const int64_t key = many.sorted_keys[j];
  int64_t lo = first, hi = j;  // the run's start: the first position whose key is not larger
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (many.sorted_keys[mid] > key) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  assign_instance_label(b, many.sorted_instance_index[j], key - 1, j - lo + 1, layout, buffers,
                        label_divisor, void_label);
}

__device__ bool is_kept_stuff(const ThingClasses& things, int64_t c, unsigned long long area,
                              int64_t stuff_area) {
  return !things.contains(c) && area > 0 && static_cast<int64_t>(area) >= stuff_area;
}

__global__ void stuff_kernel(int64_t batch, ThingClasses things, FuseLayout layout,
                             FuseBuffers buffers, int64_t label_divisor, int64_t stuff_area,
                             int64_t void_label) {
  if (plan_failed(buffers.plan_verdict)) return;
  const int64_t b = blockIdx.y;
  const int64_t c = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (b >= batch || c >= layout.num_classes) return;
  const unsigned long long area = buffers.hist[layout.hist_offset[b] + c];  // row 0: unassigned
  const int64_t label = layout.class_label(c);
  buffers.class_label[b * layout.num_classes + c] =
      is_kept_stuff(things, label, area, stuff_area) ? label * label_divisor : void_label;
}

// One block per image: things in centre order, then kept stuff by class, as on the CPU.
__global__ void segments_kernel(ThingClasses things, CenterList centers, FuseLayout layout,
                                FuseBuffers buffers, int64_t stuff_area) {
  using Scan = cub::BlockScan<int64_t, kThreads>;
  __shared__ typename Scan::TempStorage storage;
  if (plan_failed(buffers.plan_verdict)) return;
  const int64_t b = blockIdx.x;
  const int64_t count = centers.count[b];
  const int64_t inst0 = layout.inst_offset[b];
  DeviceSegment* out = buffers.segments + layout.seg_offset[b];
  int64_t written = 0;
  for (int64_t k0 = 1; k0 <= count; k0 += kThreads) {
    const int64_t k = k0 + threadIdx.x;
    const int64_t flag = (k <= count && buffers.area[inst0 + k] > 0) ? 1 : 0;
    int64_t position = 0, total = 0;
    Scan(storage).ExclusiveSum(flag, position, total);
    if (k <= count) buffers.slot_of_instance[inst0 + k] = flag ? written + position : -1;
    if (flag) {
      const int64_t category = layout.class_label(buffers.class_of[inst0 + k]);
      out[written + position] = DeviceSegment{
          buffers.instance_label[inst0 + k],      category, buffers.area[inst0 + k], k, 1,
          centers.score[centers.begin[b] + k - 1]};
    }
    written += total;
    __syncthreads();
  }
  const int64_t classes = layout.num_classes;
  const unsigned long long* unassigned = buffers.hist + layout.hist_offset[b];
  for (int64_t c0 = 0; c0 < classes; c0 += kThreads) {
    const int64_t c = c0 + threadIdx.x;
    const int64_t label = c < classes ? layout.class_label(c) : 0;
    const int64_t flag =
        (c < classes && is_kept_stuff(things, label, unassigned[c], stuff_area)) ? 1 : 0;
    int64_t position = 0, total = 0;
    Scan(storage).ExclusiveSum(flag, position, total);
    if (c < classes) buffers.slot_of_class[b * classes + c] = flag ? written + position : -1;
    if (flag) {
      out[written + position] = DeviceSegment{buffers.class_label[b * classes + c],
                                              label,
                                              static_cast<int64_t>(unassigned[c]),
                                              0,
                                              0,
                                              1.0};
    }
    written += total;
    __syncthreads();
  }
  if (threadIdx.x == 0) buffers.num_segments[b] = written;
}

// One block per (kScoreBlockRows rows of the chunk from first_block, image): its threads
// evaluate the probabilities of kScoreThreads consecutive pixels at once into shared memory, then
// thread 0 adds them in row-major order into the block's per-segment sums (a register holds the
// running sum of the current segment: the same additions, in the same order, as the CPU). That
// chain is serial, so thread 0 reads kScoreGroup staged pixels into registers before adding them
// (their loads overlap instead of each waiting for the last add), and the sums live in shared
// memory when the image's segments fit (shared_sums), so that a change of segment costs no
// global round trip.
template <typename TSem, typename TL>
__global__ void probability_sums_kernel(DeviceView<const TSem> sem, DeviceView<const TL> logits,
                                        int64_t channels, int64_t height, int64_t width,
                                        FuseLayout layout, FuseBuffers buffers, int64_t first_block,
                                        const int64_t* partial_offset, double* partial,
                                        bool shared_sums) {
  __shared__ long long staged_slot[kScoreThreads];
  __shared__ double staged_value[kScoreThreads];
  extern __shared__ double shared_acc[];  // [layout.max_segments] when shared_sums
  if (plan_failed(buffers.plan_verdict)) return;
  const int64_t blk = first_block + blockIdx.x, b = blockIdx.y;
  const int64_t capacity = layout.seg_offset[b + 1] - layout.seg_offset[b];
  double* block_sums = partial + partial_offset[b] + blockIdx.x * capacity;
  double* acc = shared_sums ? shared_acc : block_sums;
  if (shared_sums) {
    for (int64_t s = threadIdx.x; s < capacity; s += kScoreThreads) shared_acc[s] = 0.0;
  }
  const Plane<const TSem> labels = sem.plane(b, 0);
  const Plane<const TL> l = logits.plane(b, 0);
  const int32_t* instance = buffers.instance + b * height * width;
  const int64_t* class_of = buffers.class_of + layout.inst_offset[b];
  const int64_t* slot_of_instance = buffers.slot_of_instance + layout.inst_offset[b];
  const int64_t* slot_of_class = buffers.slot_of_class + b * layout.num_classes;
  int64_t run_slot = -1;
  double run = 0.0;
  // The block's rows as one row-major range of pixels.
  const int64_t y1 = (blk + 1) * kScoreBlockRows < height ? (blk + 1) * kScoreBlockRows : height;
  const int64_t first = blk * kScoreBlockRows * width, end = y1 * width;
  for (int64_t p0 = first; p0 < end; p0 += kScoreThreads) {
    const int64_t p = p0 + threadIdx.x;
    long long slot = -1;  // every thread stages a pixel: past the end, one that is skipped
    double value = 0.0;
    if (p < end) {
      const int64_t y = p / width, x = p % width;
      const int32_t inst = instance[p];
      const int64_t c =
          inst > 0 ? class_of[inst] : layout.class_index(static_cast<int64_t>(labels(y, x)));
      slot = inst > 0 ? slot_of_instance[inst] : slot_of_class[c];
      if (slot >= 0) {
        value = softmax_probability(&l(y, x), logits.stride_c, channels, layout.class_label(c));
      }
    }
    staged_slot[threadIdx.x] = slot;
    staged_value[threadIdx.x] = value;
    __syncthreads();  // the stage is full (and, the first time, shared_acc zeroed)
    if (threadIdx.x == 0) {
      for (int i0 = 0; i0 < kScoreThreads; i0 += kScoreGroup) {
        long long group_slot[kScoreGroup];
        double group_value[kScoreGroup];
#pragma unroll
        for (int j = 0; j < kScoreGroup; ++j) {
          group_slot[j] = staged_slot[i0 + j];
          group_value[j] = staged_value[i0 + j];
        }
#pragma unroll
        for (int j = 0; j < kScoreGroup; ++j) {
          const long long s = group_slot[j];
          if (s < 0) continue;
          if (s != run_slot) {
            if (run_slot >= 0) acc[run_slot] = run;
            run_slot = s;
            run = acc[s];
          }
          run += group_value[j];
        }
      }
    }
    __syncthreads();  // the stage is refilled
  }
  if (threadIdx.x == 0 && run_slot >= 0) acc[run_slot] = run;
  if (shared_sums) {
    __syncthreads();
    for (int64_t s = threadIdx.x; s < capacity; s += kScoreThreads) block_sums[s] = shared_acc[s];
  }
}

// Adds a chunk's block sums, in block order, to each segment's running sum (0.0 before the
// first chunk: the CPU's order); after the last chunk the score takes the mean.
__global__ void add_block_sums_kernel(FuseLayout layout, FuseBuffers buffers, int64_t blocks,
                                      const int64_t* partial_offset, const double* partial,
                                      double* sums, bool first, bool last) {
  if (plan_failed(buffers.plan_verdict)) return;
  const int64_t b = blockIdx.y;
  const int64_t s = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (s >= buffers.num_segments[b]) return;
  const int64_t capacity = layout.seg_offset[b + 1] - layout.seg_offset[b];
  double& running = sums[layout.seg_offset[b] + s];
  double sum = first ? 0.0 : running;
  for (int64_t blk = 0; blk < blocks; ++blk) sum += partial[partial_offset[b] + blk * capacity + s];
  if (!last) {
    running = sum;
    return;
  }
  DeviceSegment& seg = buffers.segments[layout.seg_offset[b] + s];
  seg.score *= sum / static_cast<double>(seg.area);
}

template <typename TSem, typename TOut>
__global__ void write_kernel(DeviceView<const TSem> sem, int64_t height, int64_t width,
                             int64_t total, FuseLayout layout, FuseBuffers buffers, TOut* out) {
  if (plan_failed(buffers.plan_verdict)) return;
  const int64_t first = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  const int64_t step = int64_t{gridDim.x} * blockDim.x;
  PixelWalk at(first, step, height, width);
  for (int64_t i0 = first; i0 < total; i0 += kLoadsInFlight * step) {
    // Every pixel's label and instance first (out may alias the instances: no store may come
    // between), then the ids.
    int64_t label[kLoadsInFlight], image[kLoadsInFlight];
    int32_t inst[kLoadsInFlight];
#pragma unroll
    for (int j = 0; j < kLoadsInFlight; ++j, at.advance()) {
      const int64_t i = i0 + j * step;
      const bool inside = i < total;
      label[j] = inside ? static_cast<int64_t>(sem.plane(at.b, 0)(at.y, at.x)) : 0;
      inst[j] = inside ? buffers.instance[i] : 0;
      image[j] = at.b;
    }
#pragma unroll
    for (int j = 0; j < kLoadsInFlight; ++j) {
      const int64_t i = i0 + j * step, b = image[j];
      if (i >= total) break;
      const int64_t c = layout.class_index(label[j]);
      out[i] = static_cast<TOut>(panoptic_label(inst[j], c,
                                                buffers.instance_label + layout.inst_offset[b],
                                                buffers.class_label + b * layout.num_classes));
    }
  }
}

// write_kernel over packable labels, instances and output: `packs_per_image` packs of image
// blockIdx.y, so the tables' offsets are per block, not per pixel.
template <typename TSem, typename TOut>
__global__ void write_packed_kernel(const PixelPack<TSem>* sem, int64_t packs_per_image,
                                    FuseLayout layout, FuseBuffers buffers, PixelPack<TOut>* out) {
  if (plan_failed(buffers.plan_verdict)) return;
  const auto* instance = reinterpret_cast<const PixelPack<int32_t>*>(buffers.instance);
  const int64_t b = blockIdx.y, step = int64_t{gridDim.x} * blockDim.x;
  const auto* instance_label = buffers.instance_label + layout.inst_offset[b];
  const auto* class_label = buffers.class_label + b * layout.num_classes;
  for (int64_t p = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; p < packs_per_image; p += step) {
    const int64_t at = b * packs_per_image + p;
    // Both loads before the store: out may alias the instances.
    const PixelPack<TSem> labels = sem[at];
    const PixelPack<int32_t> inst = instance[at];
    PixelPack<TOut> ids;
#pragma unroll
    for (int j = 0; j < kPackPixels; ++j) {
      const int64_t c = layout.class_index(static_cast<int64_t>(labels.v[j]));
      ids.v[j] = static_cast<TOut>(panoptic_label(inst.v[j], c, instance_label, class_label));
    }
    out[at] = ids;
  }
}

// Blocks of kThreads per image for a grid-stride loop over `pixels` pixels of each of `batch`
// images: as many as stay resident on the device together (the kernel's occupancy), so that no
// partial second wave of equally loaded blocks runs after the first (8 blocks per multiprocessor
// where the vote kernel's registers let 6 fit left a third of the blocks to a second wave).
template <typename Kernel>
unsigned resident_blocks_per_image(Kernel kernel, size_t shared_bytes, int64_t batch,
                                   int64_t pixels) {
  const int64_t resident = resident_blocks(kernel, kThreads, shared_bytes, current_device());
  const int64_t blocks =
      std::min((resident + batch - 1) / batch, (pixels + kThreads - 1) / kThreads);
  return static_cast<unsigned>(blocks < 1 ? 1 : blocks);
}

}  // namespace

void argmax_logits(const StridedView& logits, int32_t* labels, cudaStream_t stream) {
  const int64_t total = logits.batch() * logits.height() * logits.width();
  if (logits.channels() < 1) throw ValueError("argmax_logits: logits need at least one channel");
  with_float_type(logits.dtype, "sem", [&](auto tag) {
    using T = decltype(tag);
    argmax_kernel<T><<<grid_for(total, kThreads, 4096), kThreads, 0, stream>>>(
        device_view<T>(logits), logits.channels(), logits.height(), logits.width(), total, labels);
    check_launch("argmax_kernel");
  });
}

void label_range(const StridedView& sem, long long* range, cudaStream_t stream) {
  const int64_t total = sem.batch() * sem.height() * sem.width();
  with_label_type(sem.dtype, "sem", [&](auto tag) {
    using TSem = decltype(tag);
    if (packed_loads.load(std::memory_order_relaxed) && packable<TSem>(sem)) {
      const int64_t packs = total / kPackPixels;
      const unsigned grid = resident_blocks_per_image(label_range_packed_kernel<TSem>, 0, 1, packs);
      label_range_packed_kernel<TSem><<<grid, kThreads, 0, stream>>>(
          static_cast<const PixelPack<TSem>*>(sem.data), packs, range);
      check_launch("label_range_packed_kernel");
      return;
    }
    const unsigned grid = resident_blocks_per_image(label_range_kernel<TSem>, 0, 1, total);
    label_range_kernel<TSem><<<grid, kThreads, 0, stream>>>(device_view<TSem>(sem), sem.height(),
                                                            sem.width(), total, range);
    check_launch("label_range_kernel");
  });
}

void instance_range(const StridedView& instance, long long* maxima, long long* minimum,
                    cudaStream_t stream) {
  const int64_t hw = instance.height() * instance.width();
  with_label_type(instance.dtype, "instance", [&](auto tag) {
    using T = decltype(tag);
    const dim3 grid(resident_blocks_per_image(instance_range_kernel<T>, 0, instance.batch(), hw),
                    static_cast<unsigned>(instance.batch()));
    instance_range_kernel<T><<<grid, kThreads, 0, stream>>>(
        device_view<T>(instance), instance.height(), instance.width(), maxima, minimum);
    check_launch("instance_range_kernel");
  });
}

void thing_flags(const StridedView& sem, const ThingClasses& things, uint8_t* flags,
                 cudaStream_t stream) {
  const int64_t total = sem.batch() * sem.height() * sem.width();
  with_label_type(sem.dtype, "sem", [&](auto tag) {
    using TSem = decltype(tag);
    thing_flags_kernel<TSem><<<grid_for(total, kThreads, 4096), kThreads, 0, stream>>>(
        device_view<TSem>(sem), sem.height(), sem.width(), total, things, flags);
    check_launch("thing_flags_kernel");
  });
}

ManyCenters take_many_centers(Scratch& scratch, int64_t cells, int64_t sums, int64_t pyramid_nodes,
                              int64_t center_slots, int64_t instance_slots, int64_t batch,
                              int64_t num_classes) {
  if (instance_slots > std::numeric_limits<int>::max()) {  // cub's sort sizes are int
    throw ValueError("CUDA path: " + std::to_string(instance_slots) +
                     " instance slots exceed the int32 sort that numbers them; use the CPU path");
  }
  ManyCenters taken{};
  taken.cells = cells;
  taken.instance_slots = instance_slots;
  taken.cell_start = scratch.take<int64_t>(cells + 1, "vote grid");
  taken.cell_fill = scratch.take<int64_t>(cells + 1, "vote grid");
  taken.cell_centers = scratch.take<int32_t>(center_slots, "vote grid");
  taken.first_ring = scratch.take<int32_t>(cells, "vote grid");
  taken.occupied_sums = scratch.take<int32_t>(sums, "vote grid");
  taken.pyramid = pyramid_nodes > 0 ? scratch.take<int32_t>(pyramid_nodes, "vote grid") : nullptr;
  taken.scan = take_scan_temp(scratch, cells + 1);
  taken.class_keys = scratch.take<int64_t>(instance_slots, "instance numbering");
  taken.sorted_keys = scratch.take<int64_t>(instance_slots, "instance numbering");
  taken.instance_index = scratch.take<int32_t>(instance_slots, "instance numbering");
  taken.sorted_instance_index = scratch.take<int32_t>(instance_slots, "instance numbering");
  taken.segment_begin = scratch.take<int>(batch, "instance numbering");
  taken.segment_end = scratch.take<int>(batch, "instance numbering");
  taken.key_bits = std::max(1, bit_width(num_classes));  // keys are 0..num_classes
  size_t bytes = 0;
  check(cub::DeviceSegmentedRadixSort::SortPairsDescending(
            nullptr, bytes, static_cast<const int64_t*>(nullptr), static_cast<int64_t*>(nullptr),
            static_cast<const int32_t*>(nullptr), static_cast<int32_t*>(nullptr),
            static_cast<int>(instance_slots), static_cast<int>(batch),
            static_cast<const int*>(nullptr), static_cast<const int*>(nullptr), 0, taken.key_bits),
        "cub::DeviceSegmentedRadixSort (size)");
  taken.sort =
      CubTemp{scratch.take_bytes(static_cast<int64_t>(bytes), "instance numbering"), bytes};
  return taken;
}

bool pairs_in_histogram(double pair_bins, int64_t max_bins, int64_t pixels) {
  return max_bins <= kSharedBinLimit ||
         pair_bins <= static_cast<double>(kPairBinsPerPixel) * static_cast<double>(pixels) ||
         pixels > std::numeric_limits<int>::max();  // beyond cub's sort: the histogram or nothing
}

namespace {

// Sorts the pair keys (TKey: their width) in cub's DoubleBuffer; a size query when temp is null.
// Leaves in *sorted the buffer that holds the sorted keys.
template <typename TKey>
cudaError_t sort_pair_keys(const PairSort& p, void* temp, size_t& bytes, cudaStream_t stream,
                           const void** sorted) {
  cub::DoubleBuffer<TKey> buffers(static_cast<TKey*>(p.keys), static_cast<TKey*>(p.spare));
  const cudaError_t status = cub::DeviceRadixSort::SortKeys(
      temp, bytes, buffers, static_cast<int>(p.pixels), 0, p.end_bit, stream);
  if (sorted) *sorted = buffers.Current();
  return status;
}

}  // namespace

PairSort take_pair_sort(Scratch& scratch, int64_t pixels, int64_t instance_slots,
                        int64_t num_classes) {
  PairSort taken{};
  taken.pixels = pixels;
  taken.instance_slots = instance_slots;
  taken.none = instance_slots * num_classes;
  taken.end_bit = std::max(1, bit_width(taken.none));
  taken.wide = taken.none > static_cast<int64_t>(UINT32_MAX);
  const int64_t key_bytes = taken.wide ? sizeof(int64_t) : sizeof(uint32_t);
  taken.keys = scratch.take_bytes(pixels * key_bytes, "instance x class pairs");
  taken.spare = scratch.take_bytes(pixels * key_bytes, "instance x class pairs");
  taken.votes = scratch.take<unsigned long long>(2 * instance_slots, "instance x class pairs");
  size_t bytes = 0;
  check(taken.wide ? sort_pair_keys<int64_t>(taken, nullptr, bytes, nullptr, nullptr)
                   : sort_pair_keys<uint32_t>(taken, nullptr, bytes, nullptr, nullptr),
        "cub::DeviceRadixSort::SortKeys (size)");
  taken.sort = CubTemp{scratch.take_bytes(static_cast<int64_t>(bytes), "pair sort"), bytes};
  return taken;
}

void vote_and_count(const StridedView& sem, const StridedView& mask, const StridedView& off,
                    const ThingClasses& things, const CenterList& centers, const FuseLayout& layout,
                    int64_t shared_bins, const ManyCenters* many, const PairSort* pairs,
                    const FuseBuffers& buffers, cudaStream_t stream, const int32_t* given) {
  const int64_t batch = sem.batch(), height = sem.height(), width = sem.width();
  const int64_t hw = height * width;
  // Many centres: bucket each image's centres by cell (counts, their exclusive sum, the fill);
  // a given instance map has no centres to search.
  if (many && !given) {
    const ManyCenters& m = *many;
    const size_t cell_bytes = static_cast<size_t>(m.cells + 1) * sizeof(int64_t);
    check(cudaMemsetAsync(m.cell_fill, 0, cell_bytes, stream), "cudaMemsetAsync");
    const dim3 center_grid(grid_for(layout.max_instances, kThreads), static_cast<unsigned>(batch));
    count_cells_kernel<<<center_grid, kThreads, 0, stream>>>(centers, m, width);
    check_launch("count_cells_kernel");
    exclusive_sum(m.cell_fill, m.cell_start, m.cells + 1, m.scan, stream);
    check(cudaMemsetAsync(m.cell_fill, 0, cell_bytes, stream), "cudaMemsetAsync");  // cursors
    fill_cells_kernel<<<center_grid, kThreads, 0, stream>>>(centers, m, width);
    check_launch("fill_cells_kernel");
    const dim3 row_grid(grid_for(m.max_rows + 1, kThreads), static_cast<unsigned>(batch));
    occupied_rows_kernel<<<row_grid, kThreads, 0, stream>>>(m);
    check_launch("occupied_rows_kernel");
    const dim3 column_grid(grid_for(m.max_cols + 1, kThreads), static_cast<unsigned>(batch));
    occupied_columns_kernel<<<column_grid, kThreads, 0, stream>>>(m);
    check_launch("occupied_columns_kernel");
    first_ring_kernel<<<grid_for(m.cells, kThreads), kThreads, 0, stream>>>(m, batch);
    check_launch("first_ring_kernel");
    // The quadtrees, where an image may keep more than kFarBruteForceMax centres; max_rows x
    // max_cols bounds every image's tree: the largest top, the most nodes per level.
    const CellPyramid largest{VoteGrid{0, 1, 0, m.max_rows, m.max_cols}};
    for (int level = 0; m.pyramid && level <= largest.top(); ++level) {
      const dim3 node_grid(grid_for(largest.nodes(level), kThreads), static_cast<unsigned>(batch));
      pyramid_level_kernel<<<node_grid, kThreads, 0, stream>>>(m, level);
      check_launch("pyramid_level_kernel");
    }
  }
  // Shared counters only where the device allows that much shared memory per block.
  const int device = current_device();
  const int shared_limit = shared_limit_of(device);
  const size_t tile_bytes = 2 * kCenterTile * sizeof(float);
  const size_t hist_bytes = static_cast<size_t>(shared_bins) * sizeof(unsigned);
  const bool use_shared =
      shared_bins > 0 && tile_bytes + hist_bytes <= static_cast<size_t>(shared_limit);
  const size_t shared_bytes = tile_bytes + (use_shared ? hist_bytes : 0);
  // The kernel's limit is process-wide state, not stream-ordered: it is set to the same value by
  // every call (the largest this path ever launches with), so that concurrent calls on other
  // threads or streams cannot lower it between another call's setting and its launch.
  const int shared_attribute = static_cast<int>(std::min<int64_t>(
      shared_limit,
      static_cast<int64_t>(tile_bytes) + kSharedBinLimit * int64_t{sizeof(unsigned)}));
  const bool chunks = vote_chunks.load(std::memory_order_relaxed);
  const bool box = vote_box.load(std::memory_order_relaxed);
  // A given instance map reads no offsets: one kernel per label type (its TOff is never read).
  const DType off_dtype = given ? DType::kFloat32 : off.dtype;
  with_label_type(sem.dtype, "sem", [&](auto sem_tag) {
    using TSem = decltype(sem_tag);
    with_float_type(off_dtype, "off", [&](auto off_tag) {
      using TOff = decltype(off_tag);
      VoteArgs<TSem, TOff> args{
          device_view<TSem>(sem),
          mask.data ? device_view<uint8_t>(mask) : DeviceView<const uint8_t>{nullptr, 0, 0, 0, 0},
          device_view<TOff>(off),
          things,
          centers,
          layout,
          buffers,
          many ? *many : ManyCenters{},
          pairs ? pairs->keys : nullptr,
          pairs ? pairs->wide : false,
          pairs ? pairs->none : 0,
          height,
          width,
          chunks ? buffers.vote_cursor : nullptr,
          given};
      auto launch = [&](auto kernel) {
        allow_dynamic_shared(kernel, device, shared_attribute);
        const dim3 grid(resident_blocks_per_image(kernel, shared_bytes, batch, hw),
                        static_cast<unsigned>(batch));
        kernel<<<grid, kThreads, shared_bytes, stream>>>(args);
        check_launch("vote_kernel");
      };
      // The twelve combinations of (mask, shared counters, search), each its own kernel, and a
      // given map's two (shared counters or not: no mask, no offsets read).
      const auto with_grid = [&](auto from_mask, auto shared_hist) {
        constexpr bool kMask = decltype(from_mask)::value, kShared = decltype(shared_hist)::value;
        if (given) {
          if constexpr (!kMask && std::is_same_v<TOff, float>) {
            launch(vote_kernel<TSem, TOff, false, kShared, kGivenInstance>);
          }
        } else if (many) {
          launch(vote_kernel<TSem, TOff, kMask, kShared, kGridSearch>);
        } else if (box) {
          launch(vote_kernel<TSem, TOff, kMask, kShared, kWarpBox>);
        } else {
          launch(vote_kernel<TSem, TOff, kMask, kShared, kEveryCenter>);
        }
      };
      const auto with_hist = [&](auto from_mask) {
        if (use_shared) {
          with_grid(from_mask, std::true_type{});
        } else {
          with_grid(from_mask, std::false_type{});
        }
      };
      if (mask.data) {
        with_hist(std::true_type{});
      } else {
        with_hist(std::false_type{});
      }
    });
  });
}

void resolve_segments(int64_t batch, const ThingClasses& things, const FuseParams& params,
                      const CenterList& centers, const FuseLayout& layout, const ManyCenters* many,
                      const PairSort* pairs, const FuseBuffers& buffers, cudaStream_t stream) {
  PairSort p = pairs ? *pairs : PairSort{};
  if (pairs) {
    check(cudaMemsetAsync(p.votes, 0,
                          static_cast<size_t>(2 * p.instance_slots) * sizeof(unsigned long long),
                          stream),
          "cudaMemsetAsync");
    size_t bytes = p.sort.bytes;
    const unsigned runs_grid = grid_for(p.pixels, kThreads, 8192);
    if (p.wide) {
      check(sort_pair_keys<int64_t>(p, p.sort.data, bytes, stream, &p.sorted),
            "cub::DeviceRadixSort::SortKeys");
      pair_runs_kernel<int64_t><<<runs_grid, kThreads, 0, stream>>>(p, layout.num_classes);
    } else {
      check(sort_pair_keys<uint32_t>(p, p.sort.data, bytes, stream, &p.sorted),
            "cub::DeviceRadixSort::SortKeys");
      pair_runs_kernel<uint32_t><<<runs_grid, kThreads, 0, stream>>>(p, layout.num_classes);
    }
    check_launch("pair_runs_kernel");
  }
  const dim3 instance_grid(grid_for(layout.max_instances, kThreads), static_cast<unsigned>(batch));
  majority_kernel<<<instance_grid, kThreads, 0, stream>>>(centers, layout, buffers,
                                                          p.votes);  // nullptr: the histogram
  check_launch("majority_kernel");
  if (many) {
    const ManyCenters& m = *many;
    class_keys_kernel<<<instance_grid, kThreads, 0, stream>>>(centers, layout, buffers, m);
    check_launch("class_keys_kernel");
    size_t bytes = m.sort.bytes;
    check(cub::DeviceSegmentedRadixSort::SortPairsDescending(
              m.sort.data, bytes, m.class_keys, m.sorted_keys, m.instance_index,
              m.sorted_instance_index, static_cast<int>(m.instance_slots), static_cast<int>(batch),
              m.segment_begin, m.segment_end, 0, m.key_bits, stream),
          "cub::DeviceSegmentedRadixSort");
    number_sorted_kernel<<<instance_grid, kThreads, 0, stream>>>(
        centers, layout, buffers, m, params.label_divisor, params.void_label);
    check_launch("number_sorted_kernel");
  } else {
    number_kernel<<<instance_grid, kThreads, 0, stream>>>(centers, layout, buffers,
                                                          params.label_divisor, params.void_label);
    check_launch("number_kernel");
  }
  const dim3 class_grid(grid_for(layout.num_classes, kThreads), static_cast<unsigned>(batch));
  stuff_kernel<<<class_grid, kThreads, 0, stream>>>(
      batch, things, layout, buffers, params.label_divisor, params.stuff_area, params.void_label);
  check_launch("stuff_kernel");
  segments_kernel<<<static_cast<unsigned>(batch), kThreads, 0, stream>>>(
      things, centers, layout, buffers, params.stuff_area);
  check_launch("segments_kernel");
}

namespace {
int64_t score_blocks(int64_t height) { return (height + kScoreBlockRows - 1) / kScoreBlockRows; }
}  // namespace

int64_t score_chunk_blocks(int64_t height, int64_t segment_slots) {
  const int64_t per_block = std::max<int64_t>(segment_slots, 1) * int64_t{sizeof(double)};
  return std::clamp<int64_t>(kScoreChunkBytes / per_block, 1,
                             std::max<int64_t>(score_blocks(height), 1));
}

void score_with_logits(const StridedView& sem, const StridedView& logits, const FuseLayout& layout,
                       const FuseBuffers& buffers, int64_t chunk_blocks,
                       const int64_t* partial_offset, int64_t partial_total, double* partial,
                       double* sums, cudaStream_t stream) {
  const int64_t batch = sem.batch(), height = sem.height(), width = sem.width();
  const int64_t blocks = score_blocks(height);
  // Sums in shared memory are written out whole; sums in global memory start from zero.
  const bool shared_sums = layout.max_segments <= kSharedScoreSlots;
  for (int64_t first_block = 0; first_block < blocks; first_block += chunk_blocks) {
    const int64_t chunk = std::min(chunk_blocks, blocks - first_block);
    if (!shared_sums) {
      check(
          cudaMemsetAsync(partial, 0, static_cast<size_t>(partial_total) * sizeof(double), stream),
          "cudaMemsetAsync");
    }
    with_label_type(sem.dtype, "sem", [&](auto sem_tag) {
      using TSem = decltype(sem_tag);
      with_float_type(logits.dtype, "sem", [&](auto l_tag) {
        using TL = decltype(l_tag);
        const dim3 grid(static_cast<unsigned>(chunk), static_cast<unsigned>(batch));
        const size_t shared_bytes =
            shared_sums ? static_cast<size_t>(layout.max_segments) * sizeof(double) : 0;
        probability_sums_kernel<TSem, TL><<<grid, kScoreThreads, shared_bytes, stream>>>(
            device_view<TSem>(sem), device_view<TL>(logits), logits.channels(), height, width,
            layout, buffers, first_block, partial_offset, partial, shared_sums);
        check_launch("probability_sums_kernel");
      });
    });
    const dim3 grid(grid_for(layout.max_segments, kThreads), static_cast<unsigned>(batch));
    add_block_sums_kernel<<<grid, kThreads, 0, stream>>>(layout, buffers, chunk, partial_offset,
                                                         partial, sums, first_block == 0,
                                                         first_block + chunk == blocks);
    check_launch("add_block_sums_kernel");
  }
}

DistinctScratch take_distinct_scratch(Scratch& scratch, int64_t pixels, int end_bit) {
  if (pixels > std::numeric_limits<int>::max()) {
    throw ValueError("CUDA path: class ids of " + std::to_string(ClassIndex::kDenseLabelLimit) +
                     " and more are compacted with a device sort of at most 2**31 - 1 pixels per "
                     "call, got " +
                     std::to_string(pixels) + "; split the batch or use the CPU path");
  }
  const int n = static_cast<int>(pixels);
  DistinctScratch taken{};
  taken.labels = scratch.take<int64_t>(pixels, "class ids");
  taken.sorted = scratch.take<int64_t>(pixels, "class ids");
  taken.distinct = scratch.take<int64_t>(pixels, "class ids");
  taken.count = scratch.take<int>(1, "class count");
  size_t bytes = 0;
  check(cub::DeviceRadixSort::SortKeys(nullptr, bytes, static_cast<const int64_t*>(nullptr),
                                       static_cast<int64_t*>(nullptr), n, 0, end_bit),
        "cub::DeviceRadixSort::SortKeys (size)");
  taken.sort = CubTemp{scratch.take_bytes(static_cast<int64_t>(bytes), "class id sort"), bytes};
  bytes = 0;
  check(cub::DeviceSelect::Unique(nullptr, bytes, static_cast<const int64_t*>(nullptr),
                                  static_cast<int64_t*>(nullptr), static_cast<int*>(nullptr), n),
        "cub::DeviceSelect::Unique (size)");
  taken.unique = CubTemp{scratch.take_bytes(static_cast<int64_t>(bytes), "class id unique"), bytes};
  return taken;
}

void distinct_labels(const StridedView& sem, int end_bit, const DistinctScratch& scratch,
                     cudaStream_t stream) {
  const int64_t total = sem.batch() * sem.height() * sem.width();
  with_label_type(sem.dtype, "sem", [&](auto tag) {
    using TSem = decltype(tag);
    gather_labels_kernel<TSem><<<grid_for(total, kThreads, 8192), kThreads, 0, stream>>>(
        device_view<TSem>(sem), sem.height(), sem.width(), total, scratch.labels);
    check_launch("gather_labels_kernel");
  });
  // Labels are >= 0 (checked), so their low end_bit bits sort them.
  size_t bytes = scratch.sort.bytes;
  check(cub::DeviceRadixSort::SortKeys(scratch.sort.data, bytes, scratch.labels, scratch.sorted,
                                       static_cast<int>(total), 0, end_bit, stream),
        "cub::DeviceRadixSort::SortKeys");
  bytes = scratch.unique.bytes;
  check(cub::DeviceSelect::Unique(scratch.unique.data, bytes, scratch.sorted, scratch.distinct,
                                  scratch.count, static_cast<int>(total), stream),
        "cub::DeviceSelect::Unique");
}

void write_panoptic(const StridedView& sem, const FuseLayout& layout, const FuseBuffers& buffers,
                    const StridedView& out, cudaStream_t stream) {
  const int64_t total = sem.batch() * sem.height() * sem.width();
  with_label_type(sem.dtype, "sem", [&](auto sem_tag) {
    using TSem = decltype(sem_tag);
    with_output_type(out.dtype, [&](auto out_tag) {
      using TOut = decltype(out_tag);
      if (packed_loads.load(std::memory_order_relaxed) && packable<TSem>(sem) &&
          packable<TOut>(out) && pack_aligned<int32_t>(buffers.instance)) {
        const int64_t packs = sem.height() * sem.width() / kPackPixels;
        const dim3 grid(  // batch <= 65535 (CudaMerge checks)
            resident_blocks_per_image(write_packed_kernel<TSem, TOut>, 0, sem.batch(), packs),
            static_cast<unsigned>(sem.batch()));
        write_packed_kernel<TSem, TOut><<<grid, kThreads, 0, stream>>>(
            static_cast<const PixelPack<TSem>*>(sem.data), packs, layout, buffers,
            static_cast<PixelPack<TOut>*>(out.data));
        check_launch("write_packed_kernel");
        return;
      }
      const unsigned grid = resident_blocks_per_image(write_kernel<TSem, TOut>, 0, 1, total);
      write_kernel<TSem, TOut><<<grid, kThreads, 0, stream>>>(device_view<TSem>(sem), sem.height(),
                                                              sem.width(), total, layout, buffers,
                                                              static_cast<TOut*>(out.data));
      check_launch("write_kernel");
    });
  });
}

}  // namespace cuda

bool set_cuda_vote_chunks(bool chunks) { return cuda::vote_chunks.exchange(chunks); }
bool set_cuda_vote_box(bool box) { return cuda::vote_box.exchange(box); }
bool set_cuda_packed_loads(bool packed) { return cuda::packed_loads.exchange(packed); }

}  // namespace pdl_post
