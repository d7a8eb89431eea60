// Internal helpers of the CUDA path: error checks, stream-ordered scratch buffers, device views
// and the kernel launchers shared by the .cu files (one file per algorithm, as on the CPU side).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>
#include <limits>
#include <mutex>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "pdl_post/center_nms.h"
#include "pdl_post/common.h"
#include "pdl_post/cuda_pipeline.h"
#include "pdl_post/offset_voting.h"

namespace pdl_post {
namespace cuda {

// Throws CudaError naming the failed call and CUDA's own message.
void check(cudaError_t status, const char* what);
// Checks the launch of the kernel just queued (configuration errors surface here).
void check_launch(const char* kernel);
// For calls whose failure cannot be acted on (frees, device restores in destructors): clears the
// thread's last error they leave, which the next launch check would blame on its kernel.
void ignore_failure(cudaError_t status);

// Scratch memory from a per-device pool that keeps its memory between calls, allocated and freed
// in stream order (no synchronisation, safe for concurrent calls on different streams); plain
// cudaMalloc where the device has no memory pools.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  DeviceBuffer(int64_t bytes, cudaStream_t stream, const char* what);
  ~DeviceBuffer();
  DeviceBuffer(DeviceBuffer&& other) noexcept;
  DeviceBuffer& operator=(DeviceBuffer&& other) noexcept;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  template <typename T>
  T* as() const {
    return static_cast<T*>(data_);
  }
  int64_t bytes() const { return bytes_; }

 private:
  void release() noexcept;

  void* data_ = nullptr;
  int64_t bytes_ = 0;
  cudaStream_t stream_ = nullptr;
  bool pooled_ = true;
};

// The scratch arrays of one phase, carved from one pool allocation: every allocation and free
// costs host time, and a merge needs about thirty arrays. A phase takes its arrays twice, in the
// same order (see carve()): from a sizing Scratch, whose take() hands out null and only adds up
// the bytes, then from a Scratch that owns one block of that size. Pieces are 256-byte aligned.
class Scratch {
 public:
  Scratch() = default;  // sizing
  Scratch(const Scratch& sizing, cudaStream_t stream);
  ~Scratch();
  Scratch(Scratch&& other) noexcept = default;
  Scratch& operator=(Scratch&& other) noexcept;
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;

  void* take_bytes(int64_t bytes, const char* what);
  template <typename T>
  T* take(int64_t count, const char* what) {
    if (count < 0 || count > std::numeric_limits<int64_t>::max() / int64_t{sizeof(T)}) {
      throw ValueError(std::string("CUDA path: cannot size ") + what + " for " +
                       std::to_string(count) + " items");
    }
    return static_cast<T*>(take_bytes(count * static_cast<int64_t>(sizeof(T)), what));
  }
  int64_t bytes() const { return used_; }

 private:
  void release_pieces() noexcept;

  bool sizing_ = true;
  int64_t used_ = 0;
  int64_t largest_ = 0;            // the largest piece, for the out-of-memory message
  const char* largest_what_ = "";  // the callers' string literals
  DeviceBuffer block_;
  // Under the host emulator each piece is also its own guarded allocation, so that an access
  // past a piece is caught as it is past any allocation (the block is still allocated, and
  // counted, as on a GPU).
  std::vector<void*> emulated_pieces_;
};

// Host memory for a copy between host and device, `words` long long words: page-locked where the
// runtime grants it, else pageable. A read-back at a synchronisation into page-locked memory is one
// DMA; into pageable memory the runtime adds a staged copy and returns later, while the device
// idles between the phases (gpu_bench.py, 64 bytes copied back and waited for on an H200: 17.9 us
// page-locked, 22.4 us pageable). An upload from page-locked memory never waits for the stream
// (from pageable memory CUDA "may synchronize" with it). Page-locked blocks go back to a
// process-wide list when the buffer goes (its copy is waited for before), for the next call, and
// to the runtime in cuda_release_memory().
class HostTransferBuffer {
 public:
  explicit HostTransferBuffer(int64_t words);
  ~HostTransferBuffer();
  HostTransferBuffer(const HostTransferBuffer&) = delete;
  HostTransferBuffer& operator=(const HostTransferBuffer&) = delete;

  long long* data() const { return data_; }

 private:
  long long* data_ = nullptr;
  size_t locked_bytes_ = 0;  // the page-locked block's size; 0 when pageable
  std::vector<long long> pageable_;
};

// Frees the page-locked blocks kept for copies.
void release_host_transfer_blocks();

// `take(scratch)` lists a phase's arrays and returns them; run once to size `scratch`, once to
// carve it. Nothing may be launched inside `take`.
template <typename Take>
auto carve(Scratch& scratch, cudaStream_t stream, Take take) {
  Scratch sizing;
  (void)take(sizing);
  scratch = Scratch(sizing, stream);
  return take(scratch);
}

// Small host arrays gathered into one host-to-device copy (one copy instead of one per array).
class UploadPack {
 public:
  // Appends the values; returns their byte offset in the pack (16-byte aligned).
  template <typename T>
  size_t add(const std::vector<T>& values) {
    const size_t at = (bytes_.size() + 15) / 16 * 16;
    bytes_.resize(at + values.size() * sizeof(T));
    if (!values.empty()) std::memcpy(bytes_.data() + at, values.data(), values.size() * sizeof(T));
    return at;
  }
  int64_t bytes() const { return static_cast<int64_t>(bytes_.size()); }
  // Stream-ordered copy to `device` (bytes() long): from this pack's pageable memory, or through
  // `staging` (host memory of at least bytes(), page-locked where the copy must not wait for the
  // stream), which must then stay untouched until the copy has run.
  void upload(void* device, cudaStream_t stream, void* staging = nullptr) const;
  template <typename T>
  static T* at(void* device, size_t offset) {
    return reinterpret_cast<T*>(static_cast<char*>(device) + offset);
  }

 private:
  std::vector<char> bytes_;
};

// A 4-D strided array [B, C, H, W] readable in kernels (strides in elements).
template <typename T>
struct DeviceView {
  T* data;
  int64_t stride_b, stride_c, stride_y, stride_x;

  __host__ __device__ Plane<T> plane(int64_t b, int64_t c) const {
    return Plane<T>{data + b * stride_b + c * stride_c, stride_y, stride_x};
  }
};

// (b, y, x) of a grid-stride loop's flat index over [B, H, W], advanced by the loop's step with
// carries instead of divisions: three 64-bit divisions per pixel cost more than the pixel's
// memory traffic (with them label_range read its 8 MB in 15 us on an H100: 0.55 TB/s).
// The step is split once into the same mixed radix (step_x < W, step_y < H), so each advance
// carries at most once into y and once into b.
struct PixelWalk {
  int64_t b, y, x;
  int64_t step_b, step_y, step_x, height, width;

  __device__ PixelWalk(int64_t start, int64_t step, int64_t height_, int64_t width_)
      : height(height_), width(width_) {
    const int64_t hw = height * width;
    b = start / hw;
    y = start % hw / width;
    x = start % width;
    step_b = step / hw;
    step_y = step % hw / width;
    step_x = step % width;
  }
  __device__ void advance() {
    x += step_x;
    y += step_y;
    b += step_b;
    if (x >= width) {
      x -= width;
      ++y;
    }
    if (y >= height) {
      y -= height;
      ++b;
    }
  }
};

// The grid-stride loop over the B * H * W = `total` pixels of [B, H, W]: f(i, b, y, x) for this
// thread's flat indices i, (b, y, x) walked along (PixelWalk).
template <typename F>
__device__ void for_each_pixel(int64_t total, int64_t height, int64_t width, F f) {
  const int64_t first = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  const int64_t step = int64_t{gridDim.x} * blockDim.x;
  PixelWalk at(first, step, height, width);
  for (int64_t i = first; i < total; i += step, at.advance()) f(i, at.b, at.y, at.x);
}

template <typename T>
DeviceView<const T> device_view(const StridedView& v) {
  return DeviceView<const T>{static_cast<const T*>(v.data), v.strides[0], v.strides[1],
                             v.strides[2], v.strides[3]};
}

// Bits that hold a value >= 0 (0 for 0): the end_bit of a radix sort over keys up to it.
inline int bit_width(int64_t value) {
  int bits = 0;
  while (bits < 63 && (value >> bits) != 0) ++bits;
  return bits;
}

// Device facts the launches ask for, looked up once per process: the runtime's queries cost
// about as much host time as a launch each, several per call, and the host's time between the
// first synchronisation and the vote leaves the GPU idle.
inline std::mutex launch_facts_mutex;

// The value remembered for `key` in `known`, computed by `compute` (under the lock, so that a
// concurrent caller finds it only once computed) the first time. A few entries each, searched in
// order.
template <typename Key, typename Value, typename Compute>
Value remembered(std::vector<std::pair<Key, Value>>& known, const Key& key, Compute compute) {
  const std::lock_guard<std::mutex> lock(launch_facts_mutex);
  for (const auto& [k, value] : known) {
    if (k == key) return value;
  }
  const Value value = compute();
  known.emplace_back(key, value);
  return value;
}

inline int current_device() {
  int device = 0;
  check(cudaGetDevice(&device), "cudaGetDevice");
  return device;
}

// Blocks of `threads` of `kernel` with `shared_bytes` that stay resident on `device` together
// (multiprocessors x occupancy, at least one per multiprocessor).
template <typename Kernel>
int64_t resident_blocks(Kernel kernel, int threads, size_t shared_bytes, int device) {
  using Key = std::tuple<Kernel, int, size_t, int>;
  static auto& known = *new std::vector<std::pair<Key, int64_t>>;  // never destroyed (exit)
  return remembered(known, Key{kernel, threads, shared_bytes, device}, [&] {
    int sms = 0, per_sm = 0;
    check(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device),
          "cudaDeviceGetAttribute");
    check(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, shared_bytes),
          "cudaOccupancyMaxActiveBlocksPerMultiprocessor");
    return int64_t{sms} * (per_sm < 1 ? 1 : per_sm);
  });
}

// The opt-in shared memory per block of `device`.
inline int shared_limit_of(int device) {
  static auto& known = *new std::vector<std::pair<int, int>>;
  return remembered(known, device, [&] {
    int bytes = 0;
    check(cudaDeviceGetAttribute(&bytes, cudaDevAttrMaxSharedMemoryPerBlockOptin, device),
          "cudaDeviceGetAttribute");
    return bytes;
  });
}

// Sets `kernel`'s dynamic shared memory limit on `device` to `bytes`, once (every call asks for
// the same value per device; see vote_and_count).
template <typename Kernel>
void allow_dynamic_shared(Kernel kernel, int device, int bytes) {
  using Key = std::tuple<Kernel, int, int>;
  static auto& known = *new std::vector<std::pair<Key, bool>>;
  remembered(known, Key{kernel, device, bytes}, [&] {
    check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes),
          "cudaFuncSetAttribute");
    return true;
  });
}

// A speculative second phase (pipeline.cu) is queued before the counts it was sized for are
// known; its kernels take the verdict of the check queued after the first phase: nonzero, the
// capacities did not hold, and they return at once (whole blocks, before any barrier). nullptr:
// not speculative, always run.
__device__ inline bool plan_failed(const long long* verdict) {
  return verdict != nullptr && *verdict != 0;
}

// Whether an image with `peaks` peaks sorts them for its top-k (more than top_k of them, or top_k
// or more in detectron2's mode; top_k < 0: never; top_k = 0 keeps none without a sort). Otherwise
// every peak is kept.
__host__ __device__ inline bool sorts_peaks(int64_t peaks, int64_t top_k, TopKMode mode) {
  return top_k > 0 && (mode == TopKMode::kExact ? peaks > top_k : peaks >= top_k);
}

// Blocks for a grid-stride loop over `items`, at most `cap`.
inline unsigned grid_for(int64_t items, int threads, int64_t cap = 2147483647) {
  const int64_t blocks = (items + threads - 1) / threads;
  return static_cast<unsigned>(blocks < 1 ? 1 : (blocks > cap ? cap : blocks));
}

// ---------------------------------------------------------------------------------------------
// Centres (center_nms.cu).

struct PeakList {
  int64_t* pixel;  // y * W + x
  void* score;     // heatmap value, the heatmap's dtype
  int32_t* image;
};

// Windows up to kDirectWindowMax are tested per pixel against the heatmap, by count_peaks, which
// records each pixel's answer as a flag for write_peaks (a local maximum's window test is a chain
// of memory round trips: run twice, it took write_peaks 18 us at 1024 x 2048 on an H200). Larger
// windows would read up to k^2 values at each local maximum (every pixel of a flat heatmap), so
// their window maxima are computed as on the CPU, separable with block prefix / suffix maxima
// (O(1) per pixel whatever k), into the flags by find_peak_flags, before count_peaks.
constexpr int64_t kDirectWindowMax = 41;  // COCO's: every preset keeps the per-pixel test
struct PeakFlags {
  uint8_t* flags = nullptr;  // [B, H, W]: 1 at a peak
  void* prefix = nullptr;    // large windows: [B, H, W] of the heatmap's dtype, block maxima
  void* suffix = nullptr;
  void* row_max = nullptr;  // the window maximum along rows
};
// The flags for `pixels` = B * H * W, and find_peak_flags' arrays when nms_kernel needs them.
PeakFlags take_peak_flags(Scratch& scratch, DType ctr_dtype, int64_t pixels, int64_t nms_kernel);
// Large windows (nms_kernel > kDirectWindowMax): the flags from the separable filter.
void find_peak_flags(const StridedView& ctr, double threshold, int64_t nms_kernel,
                     const PeakFlags& flags, cudaStream_t stream);

// row_count[b * H + y] = number of peaks in row y of image b (row_count[B * H], the scan's extra
// element, is the caller's: 0). The flags: written here for windows up to kDirectWindowMax, read
// (from find_peak_flags) above.
void count_peaks(const StridedView& ctr, double threshold, int64_t nms_kernel, uint8_t* peak_flags,
                 int64_t* row_count, cudaStream_t stream);
// Peaks in row-major order per image at row_offset (the exclusive sum of row_count).
void write_peaks(const StridedView& ctr, const uint8_t* peak_flags, const int64_t* row_offset,
                 const PeakList& peaks, cudaStream_t stream);

// Top-k on the device. peak_begin: B + 1 offsets (device and host copies). Writes the kept
// centres compacted in row-major order (pixel, float y/x, score as double) and per image the
// first centre and the count.
struct CenterList {
  int64_t* pixel;
  float* y;
  float* x;
  double* score;
  int64_t* begin;  // [B]
  int64_t* count;  // [B]
};
// Device temp storage of a cub algorithm.
struct CubTemp {
  void* data;
  size_t bytes;
};

// The scratch arrays of select_centers for `total` peaks in `batch` images.
struct SelectScratch {
  int64_t* kept;      // [total + 1]
  int64_t* position;  // [total + 1]
  CubTemp scan;       // for total + 1 items
  int32_t* local;     // [total] index in the image; these four only when any_sorted
  int32_t* sorted_local;
  void* sorted_score;  // [total], the heatmap's dtype
  CubTemp sort;
};
SelectScratch take_select_scratch(Scratch& scratch, DType ctr_dtype, int64_t total, int64_t batch,
                                  bool any_sorted);

// Where every peak is kept (no image sorted, top_k != 0, or no peaks at all): the peaks written
// straight as the centres, with each image's begin and count (select_centers' answer then).
// plan_verdict: a speculative phase's verdict (see plan_failed()), or nullptr.
void write_every_peak_as_center(const StridedView& ctr, const uint8_t* peak_flags,
                                const int64_t* row_offset, const CenterList& centers,
                                const long long* plan_verdict, cudaStream_t stream);
// The images to sort (more peaks than top_k) have segment [begin, end) in sort_begin/sort_end
// (device, int), the others an empty one; see sort_segments().
void select_centers(DType ctr_dtype, int64_t width, const PeakList& peaks,
                    const int64_t* peak_begin_device, const std::vector<int64_t>& peak_begin,
                    int64_t top_k, TopKMode mode, const int* sort_begin, const int* sort_end,
                    bool any_sorted, const SelectScratch& scratch, const CenterList& centers,
                    cudaStream_t stream);
// Host side of the above: per image the sort segment; returns whether any image needs a sort.
bool sort_segments(const std::vector<int64_t>& peak_begin, int64_t top_k, TopKMode mode,
                   std::vector<int>& begin, std::vector<int>& end);

// Exclusive prefix sum of `count` int64 values (cub), `out` may not alias `in`; `temp` from
// take_scan_temp with the same count.
CubTemp take_scan_temp(Scratch& scratch, int64_t count);
void exclusive_sum(const int64_t* in, int64_t* out, int64_t count, const CubTemp& temp,
                   cudaStream_t stream);

// ---------------------------------------------------------------------------------------------
// Labels, voting and fusion (fusion.cu).

// labels (int32 [B, H, W] contiguous) = argmax over the channels of logits.
void argmax_logits(const StridedView& logits, int32_t* labels, cudaStream_t stream);
// range[0] = min, range[1] = max label (range must hold {INT64_MAX, INT64_MIN} beforehand).
void label_range(const StridedView& sem, long long* range, cudaStream_t stream);
// fuse's instance map [B, 1, H, W] (any label dtype): maxima[b] = max(maxima[b], image b's largest
// id), *minimum = min(*minimum, the smallest id).
void instance_range(const StridedView& instance, long long* maxima, long long* minimum,
                    cudaStream_t stream);
// flags[i] = 1 where pixel i of sem [B, 1, H, W] (row-major over the batch) is of a thing class,
// else 0: group_pixels' thing pixels, which its vote reads as a mask.
void thing_flags(const StridedView& sem, const ThingClasses& things, uint8_t* flags,
                 cudaStream_t stream);

// Class tables as on the CPU (ClassIndex): a label is its own table index while the largest label
// is below ClassIndex::kDenseLabelLimit, else its rank among the batch's sorted distinct labels.
struct FuseLayout {
  int64_t num_classes;          // C: max label + 1, or the number of distinct labels
  const int64_t* class_labels;  // [C] the sorted distinct labels; nullptr for dense tables
  const int64_t* hist_offset;   // [B] start of image b's histogram: (K_b + 1) x C, or C (PairSort)
  const int64_t* inst_offset;   // [B] start of image b's per-instance tables (K_b + 1)
  const int64_t* seg_offset;    // [B] start of image b's segment slots (K_b + C)
  int64_t max_instances;        // upper bound of K_b over the batch
  int64_t max_segments;         // upper bound of K_b + C over the batch

  __host__ __device__ int64_t class_index(int64_t label) const {
    return class_labels ? lower_bound_index(class_labels, num_classes, label) : label;
  }
  __host__ __device__ int64_t class_label(int64_t index) const {
    return class_labels ? class_labels[index] : index;
  }
};

struct DeviceSegment {
  int64_t id, category_id, area, instance, isthing;
  double score;
};

struct FuseBuffers {
  unsigned long long* hist;  // zeroed: (K_b + 1) x C per image, or row 0 alone (PairSort)
  int32_t* instance;         // [B, H, W]
  int64_t* area;             // per instance tables
  int64_t* class_of;
  int64_t* instance_label;
  int64_t* slot_of_instance;
  int64_t* class_label;  // [B, C]
  int64_t* slot_of_class;
  DeviceSegment* segments;             // per image slots
  int64_t* num_segments;               // [B]
  unsigned long long* error_instance;  // [B], ULLONG_MAX when no error
  unsigned long long* vote_cursor;  // [B], zeroed: the vote's chunks taken (set_cuda_vote_chunks)
  // A speculative phase's verdict (see plan_failed()): the vote, the segments' kernels, the
  // scores' sums and the write return at once where it is nonzero. nullptr outside speculation.
  const long long* plan_verdict;
};

// The sorted distinct labels of the batch (compacted class tables): gather, radix sort, unique.
struct DistinctScratch {
  int64_t* labels;    // [pixels]
  int64_t* sorted;    // [pixels]
  int64_t* distinct;  // [pixels], the first *count are the distinct labels
  int* count;
  CubTemp sort, unique;
};
// end_bit: bits that hold the largest label (labels are >= 0).
DistinctScratch take_distinct_scratch(Scratch& scratch, int64_t pixels, int end_bit);
void distinct_labels(const StridedView& sem, int end_bit, const DistinctScratch& scratch,
                     cudaStream_t stream);

// Largest instance x class histogram counted in shared memory (64 KiB of counters per block).
constexpr int64_t kSharedBinLimit = 16384;

// Instance x class pairs are counted in the (K_b + 1) x C histogram while it fits shared memory or
// holds at most kPairBinsPerPixel counters per pixel of the call (about the sort's memory); beyond
// (dense peaks: 2.1 M centres x 19 classes at 1024x2048 take 320 MB of counters; compacted class
// ids: 10^6 ids x 201 rows, 1.6 GB) they are counted by sorting, in memory linear in the pixels
// as on the CPU (majority_vote.h). The vote keys every pixel that has an instance with
// slot * C + class (slot: the instance's place in layout.inst_offset's tables) and the others
// with `none`, which sorts last; the histogram keeps row 0 (pixels without an instance, per
// class). The keys are sorted in a cub::DoubleBuffer (with two plain arrays cub would take a third
// as temporary storage). Each run of equal sorted keys is one (instance, class) pair: its length is
// added to the instance's area and offered to its majority as (count << 32 | ~class), whose maximum
// is the largest count, ties to the smallest class: the histogram's answer, in integers (any
// order).
constexpr int64_t kPairBinsPerPixel = 4;
struct PairSort {
  // Keys are uint32 while `none` fits 32 bits (most calls that sort: half the memory and the
  // sort's traffic), else int64 (`wide`).
  void* keys;          // [pixels] written by the vote
  void* spare;         // [pixels] cub's second buffer (the sort's passes alternate between them)
  const void* sorted;  // keys or spare, whichever holds the sorted keys (set by resolve_segments)
  bool wide;
  unsigned long long* votes;  // [2 x instance slots] area, best (count << 32 | ~class); zeroed
  int64_t pixels;             // B x H x W (<= INT_MAX: cub's sort size)
  int64_t instance_slots;     // layout.inst_offset's total
  int64_t none;               // instance slots x C: the key of pixels without an instance
  int end_bit;                // bits of `none`
  CubTemp sort;
};

// Pair key i of a PairSort's key array, written / read in its width.
__device__ inline void store_pair_key(void* keys, bool wide, int64_t i, int64_t key) {
  if (wide) {
    static_cast<int64_t*>(keys)[i] = key;
  } else {
    static_cast<uint32_t*>(keys)[i] = static_cast<uint32_t>(key);
  }
}
// Whether the call counts its pairs in the histogram (false: PairSort); pair_bins: sum of
// (K_b + 1) x C, max_bins: the largest of them.
bool pairs_in_histogram(double pair_bins, int64_t max_bins, int64_t pixels);
PairSort take_pair_sort(Scratch& scratch, int64_t pixels, int64_t instance_slots,
                        int64_t num_classes);

// Up to this many centres in every image of a call, a vote compares all of them (brute force over
// tiles in shared memory) and an instance counts the earlier ones of its class; above it (top_k
// None on dense peaks: up to one centre per pixel), both would grow with K per pixel / instance.
// Then each image's centres are bucketed into offset_voting.h's VoteGrid (sized from its bound of
// K) and a vote searches rings of cells outward, stopping at the first ring whose lower bound
// exceeds the best distance (exact, ties to the lower index, as brute force; votes outside the
// grid compare every centre or search its quadtree: nearest_center_outside), and instances are
// numbered after a stable sort by class.
constexpr int64_t kBruteForceCentersMax = 256;
struct ManyCenters {
  const VoteGrid* grid;        // [B]
  const int64_t* cell_offset;  // [B] image b's first cell
  int64_t cells;               // over the batch
  int64_t max_rows, max_cols;  // of the images' grids
  const int64_t* sums_offset;  // [B] image b's summed-area table of occupied cells in occupied_sums
  int32_t* occupied_sums;      // (rows + 1) x (cols + 1) per image (VoteGrid::occupied_in_square)
  int64_t instance_slots;      // layout.inst_offset's total
  int64_t* cell_start;         // [cells + 1] first slot of each cell's centres
  int64_t* cell_fill;          // [cells + 1] centres per cell, then fill cursors
  int32_t* cell_centers;       // [centre slots] index in the image, bucketed by cell
  int32_t* first_ring;         // [cells] first ring around the cell holding a centre
  const int64_t* pyramid_offset;  // [B] image b's quadtree in pyramid
  int32_t* pyramid;  // per image, CellPyramid's lowest centre per node, or null (kFarBruteForceMax)
  CubTemp scan;      // for cells + 1 items
  int64_t* class_keys;  // [instance slots] 1 + class of the instance, 0 when empty
  int64_t* sorted_keys;
  int32_t* instance_index;  // [instance slots] k of instance k in its image
  int32_t* sorted_instance_index;
  int* segment_begin;  // [B] image b's instances 1..K_b among the instance slots
  int* segment_end;
  CubTemp sort;
  int key_bits;  // bits of the largest key (C)
};
// centre_slots: the sum of the K_b bounds; instance_slots: that plus B (layout.inst_offset);
// sums: the images' (rows + 1) x (cols + 1) in all; pyramid_nodes: their CellPyramid sizes, or 0
// when no image keeps more than kFarBruteForceMax centres (pyramid stays null).
ManyCenters take_many_centers(Scratch& scratch, int64_t cells, int64_t sums, int64_t pyramid_nodes,
                              int64_t center_slots, int64_t instance_slots, int64_t batch,
                              int64_t num_classes);

// Votes of every pixel (instance map) and the instance x class histogram in one pass (with
// pairs: the histogram's row 0 and the pair keys). shared_bins: the largest histogram of the
// batch ((K_b + 1) x C, or C with pairs) when it is <= kSharedBinLimit, else 0.
// many: nullptr while every image keeps at most kBruteForceCentersMax centres.
// pairs: nullptr while the pairs are counted in the histogram (pairs_in_histogram).
// given: fuse's instance map (int32 [B, H, W] contiguous, ids 0..K_b) counted instead of votes
// (mask and off are not read, nor the vote grid built); nullptr: the vote.
void vote_and_count(const StridedView& sem, const StridedView& mask, const StridedView& off,
                    const ThingClasses& things, const CenterList& centers, const FuseLayout& layout,
                    int64_t shared_bins, const ManyCenters* many, const PairSort* pairs,
                    const FuseBuffers& buffers, cudaStream_t stream,
                    const int32_t* given = nullptr);
// Majority vote, numbering, stuff filter and the segment list (scores before the logits factor).
void resolve_segments(int64_t batch, const ThingClasses& things, const FuseParams& params,
                      const CenterList& centers, const FuseLayout& layout, const ManyCenters* many,
                      const PairSort* pairs, const FuseBuffers& buffers, cudaStream_t stream);
// Multiplies segment scores by the mean softmax probability of their class (CPU order of sums).
// The row blocks go chunk_blocks at a time (score_chunk_blocks). partial_offset: [B] start of
// image b's (chunk_blocks x segment slots) sums in partial (partial_total doubles of scratch);
// sums: a running sum per segment slot (layout.seg_offset[B] doubles of scratch).
void score_with_logits(const StridedView& sem, const StridedView& logits, const FuseLayout& layout,
                       const FuseBuffers& buffers, int64_t chunk_blocks,
                       const int64_t* partial_offset, int64_t partial_total, double* partial,
                       double* sums, cudaStream_t stream);
// Row blocks (kScoreBlockRows rows each, as on the CPU) per chunk of score sums for a batch of
// segment_slots slots in all (>= 1).
int64_t score_chunk_blocks(int64_t height, int64_t segment_slots);
// out = panoptic id of every pixel (may alias buffers.instance for int32 output).
void write_panoptic(const StridedView& sem, const FuseLayout& layout, const FuseBuffers& buffers,
                    const StridedView& out, cudaStream_t stream);

}  // namespace cuda
}  // namespace pdl_post
