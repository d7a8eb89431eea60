// CUDA centre finding: threshold + k x k NMS per pixel, peak compaction in row-major order and
// top-k on the device (docs/merge-semantics.md steps 1-4).
//
// Peaks are sparse, so the NMS tests each pixel directly: a pixel above max(threshold, 0) is a peak
// when no thresholded value in its clipped window is larger (max is exact, so this equals the CPU's
// van Herk filter). Its 3x3 neighbours are tested first: a pixel on a slope has a larger one, so
// only local maxima read the whole k x k window and a warp's lanes do about the same work (COCO's
// 41 x 41 window: 20 -> 2 window reads per pixel and warp lane on a 40-centre scene,
// benchmarks/RESULTS.md). Windows above kDirectWindowMax (41; no preset has one), where a flat
// heatmap would cost k^2 reads per pixel, take the CPU's separable van Herk filter instead (row
// blocks, row maxima, column blocks, then one peak flag per pixel: O(1) per pixel whatever k),
// sharing window_max_from_blocks and is_center_peak with it.
// Compaction: one block per row counts its peaks (recording a flag per pixel), an exclusive sum
// over the rows gives every row its output offset, and a second pass writes the flagged pixels of
// non-empty rows in order with a block-wide scan (or, a candidate, a warp per row by ballot). Top-k
// sorts only images with more peaks than top_k: a stable segmented radix sort by descending score
// keeps equal scores in row-major order, so the first top_k of a segment are exactly the CPU's
// "ties go to the earlier pixel"; detectron2 mode keeps scores above the top_k-th. Kept flags are
// compacted with one more exclusive sum, preserving row-major order.
#include <algorithm>
#include <atomic>
#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>
#include <cub/device/device_scan.cuh>
#include <cub/device/device_segmented_radix_sort.cuh>
#include <limits>
#include <string>

#include "cuda_common.cuh"

namespace pdl_post {
namespace cuda {
namespace {

constexpr int kRowThreads = 256;

std::atomic<bool> warp_peaks{false};  // set_cuda_warp_peaks

// Pixel (y, x) of image b: its flag from find_peak_flags, else the per-pixel test.
template <typename T>
__device__ bool peak_at(Plane<const T> plane, const uint8_t* flags, int64_t b, int64_t y, int64_t x,
                        int64_t height, int64_t width, T threshold, int64_t radius) {
  if (flags) return flags[(b * height + y) * width + x] != 0;
  return is_window_peak(plane, y, x, height, width, threshold, radius,
                        static_cast<int64_t*>(nullptr));
}

// Running maxima over values(0..n) from the start (prefix) and from the end (suffix), written
// `stride` apart: block_prefix_suffix of the CPU for one block.
template <typename T, typename Values>
__device__ void block_maxima(Values values, int64_t n, int64_t stride, T* prefix, T* suffix) {
  T run = values(0);
  for (int64_t i = 0; i < n; ++i) {
    const T v = values(i);
    prefix[i * stride] = run = v > run ? v : run;
  }
  run = values(n - 1);
  for (int64_t i = n - 1; i >= 0; --i) {
    const T v = values(i);
    suffix[i * stride] = run = v > run ? v : run;
  }
}

// The maximum over the window [at - radius, at + radius] clipped to [0, size) of an axis split
// into blocks of k, from its block maxima (`stride` apart).
template <typename T>
__device__ T window_max(const T* prefix, const T* suffix, int64_t at, int64_t size, int64_t radius,
                        int64_t k, int64_t stride) {
  const int64_t a = at - radius > 0 ? at - radius : 0;
  const int64_t c = at + radius < size - 1 ? at + radius : size - 1;
  return window_max_from_blocks(suffix[a * stride], prefix[c * stride], a, c, k);
}

// One thread per (image, row, block of k columns): block maxima of the thresholded heatmap.
template <typename T>
__global__ void row_blocks_kernel(DeviceView<const T> ctr, int64_t height, int64_t width,
                                  T threshold, int64_t k, int64_t blocks_per_row, int64_t total,
                                  T* prefix, T* suffix) {
  for (int64_t t = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; t < total;
       t += int64_t{gridDim.x} * blockDim.x) {
    const int64_t row = t / blocks_per_row, b = row / height, y = row % height;
    const int64_t x0 = (t % blocks_per_row) * k, n = x0 + k < width ? k : width - x0;
    const Plane<const T> plane = ctr.plane(b, 0);
    const auto thresholded = [&](int64_t i) {
      return threshold_center(plane(y, x0 + i), threshold);
    };
    const int64_t first = row * width + x0;
    block_maxima(thresholded, n, 1, prefix + first, suffix + first);
  }
}

// The window maximum along rows, per pixel.
template <typename T>
__global__ void row_window_max_kernel(const T* prefix, const T* suffix, int64_t width,
                                      int64_t radius, int64_t k, int64_t total, T* row_max) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < total;
       i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t x = i % width, row_start = i - x;
    row_max[i] = window_max(prefix + row_start, suffix + row_start, x, width, radius, k, 1);
  }
}

// One thread per (image, column, block of k rows), consecutive threads on consecutive columns:
// block maxima of the row maxima down the columns.
template <typename T>
__global__ void column_blocks_kernel(const T* row_max, int64_t height, int64_t width, int64_t k,
                                     int64_t blocks_per_column, int64_t total, T* prefix,
                                     T* suffix) {
  for (int64_t t = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; t < total;
       t += int64_t{gridDim.x} * blockDim.x) {
    const int64_t x = t % width, block = (t / width) % blocks_per_column;
    const int64_t b = t / width / blocks_per_column;
    const int64_t y0 = block * k, n = y0 + k < height ? k : height - y0;
    const int64_t first = (b * height + y0) * width + x;
    const auto values = [&](int64_t i) { return row_max[first + i * width]; };
    block_maxima(values, n, width, prefix + first, suffix + first);
  }
}

// The k x k window maximum down the columns of the row maxima, and the CPU's peak test.
template <typename T>
__global__ void peak_flags_kernel(DeviceView<const T> ctr, const T* prefix, const T* suffix,
                                  int64_t height, int64_t width, T threshold, int64_t radius,
                                  int64_t k, int64_t total, uint8_t* flags) {
  const int64_t hw = height * width;
  for_each_pixel(total, height, width, [&](int64_t i, int64_t b, int64_t y, int64_t x) {
    const int64_t column = b * hw + x;
    const T m = window_max(prefix + column, suffix + column, y, height, radius, k, width);
    flags[i] = is_center_peak(threshold_center(ctr.plane(b, 0)(y, x), threshold), m) ? 1 : 0;
  });
}

// A row block reads kRowPixels pixels per thread at once (x = x0 + j * kRowThreads + thread),
// their loads in flight together: one memory round trip per pass instead of one per pixel (one
// pixel at a time, counting the peaks of 1024 x 2048 took 15 us on an H100; this way 12-13 us on
// an H200, not timed on the H100). Only pixels above the threshold go on to the window test.
constexpr int kRowPixels = 8;

template <typename T>
__device__ void load_row_pass(Plane<const T> plane, int64_t y, int64_t x0, int64_t width,
                              T (&value)[kRowPixels]) {
#pragma unroll
  for (int j = 0; j < kRowPixels; ++j) {
    const int64_t x = x0 + j * kRowThreads + threadIdx.x;
    value[j] = x < width ? plane(y, x) : T(0);
  }
}

// Whether pixel x of the pass, holding `value`, is a peak: the threshold first (a pixel at or
// below it is no peak on either path), then peak_at.
template <typename T>
__device__ bool peak_in_pass(Plane<const T> plane, const uint8_t* flags, int64_t b, int64_t y,
                             int64_t x, T value, int64_t height, int64_t width, T threshold,
                             int64_t radius) {
  return x < width && threshold_center(value, threshold) > T(0) &&
         peak_at(plane, flags, b, y, x, height, width, threshold, radius);
}

// Counts each row's peaks; `flags_ready`: the flags come from find_peak_flags, else the
// per-pixel test runs here and writes them.
template <typename T>
__global__ void count_peaks_kernel(DeviceView<const T> ctr, uint8_t* flags, bool flags_ready,
                                   int64_t height, int64_t width, T threshold, int64_t radius,
                                   int64_t* row_count) {
  using Reduce = cub::BlockReduce<int64_t, kRowThreads>;
  __shared__ typename Reduce::TempStorage storage;
  const int64_t y = blockIdx.x, b = blockIdx.y;
  const Plane<const T> plane = ctr.plane(b, 0);
  uint8_t* row_flags = flags + (b * height + y) * width;
  int64_t count = 0;
  for (int64_t x0 = 0; x0 < width; x0 += kRowThreads * kRowPixels) {
    T value[kRowPixels];
    load_row_pass(plane, y, x0, width, value);
#pragma unroll
    for (int j = 0; j < kRowPixels; ++j) {
      const int64_t x = x0 + j * kRowThreads + threadIdx.x;
      const bool peak = peak_in_pass(plane, flags_ready ? flags : nullptr, b, y, x, value[j],
                                     height, width, threshold, radius);
      if (!flags_ready && x < width) row_flags[x] = peak ? 1 : 0;
      count += peak ? 1 : 0;
    }
  }
  const int64_t total = Reduce(storage).Sum(count);
  if (threadIdx.x == 0) row_count[b * height + y] = total;
}

// Peak (y, x) of image b into slot `at` of the peak list, or (kAsCenters) of the centre list.
template <typename T, bool kAsCenters>
__device__ void write_peak(int64_t at, int64_t b, int64_t y, int64_t x, int64_t width,
                           Plane<const T> plane, const PeakList& peaks, const CenterList& centers) {
  if (kAsCenters) {
    centers.pixel[at] = y * width + x;
    centers.y[at] = static_cast<float>(y);
    centers.x[at] = static_cast<float>(x);
    centers.score[at] = static_cast<double>(plane(y, x));
  } else {
    peaks.pixel[at] = y * width + x;
    static_cast<T*>(peaks.score)[at] = plane(y, x);
    peaks.image[at] = static_cast<int32_t>(b);
  }
}

// Where every peak is kept, image b's centres are its peaks: their first slot and count, from
// its first row (`row`).
__device__ void write_center_range(int64_t b, int64_t row, int64_t height,
                                   const int64_t* row_offset, const CenterList& centers) {
  centers.begin[b] = row_offset[row];
  centers.count[b] = row_offset[row + height] - row_offset[row];
}

// The peaks of rows that have any (count_peaks' flags), in row-major order at the row's offset:
// into the peak list for the top-k selection, or, where every peak is kept (kAsCenters), straight
// into the centre list with each image's range (what the selection would write: the same order
// and values, five launches fewer between the synchronisation and the vote). verdict: a
// speculative phase's (plan_failed), or nullptr.
template <typename T, bool kAsCenters>
__global__ void write_peaks_kernel(DeviceView<const T> ctr, const uint8_t* flags, int64_t height,
                                   int64_t width, const int64_t* row_offset, PeakList peaks,
                                   CenterList centers, const long long* verdict) {
  using Scan = cub::BlockScan<int64_t, kRowThreads>;
  __shared__ typename Scan::TempStorage storage;
  if (plan_failed(verdict)) return;
  const int64_t y = blockIdx.x, b = blockIdx.y;
  const int64_t row = b * height + y;
  if (kAsCenters && y == 0 && threadIdx.x == 0) {
    write_center_range(b, row, height, row_offset, centers);
  }
  int64_t base = row_offset[row];
  if (row_offset[row + 1] == base) return;  // the whole block leaves together
  const Plane<const T> plane = ctr.plane(b, 0);
  const uint8_t* row_flags = flags + row * width;
  for (int64_t x0 = 0; x0 < width; x0 += kRowThreads) {
    const int64_t x = x0 + threadIdx.x;
    const int64_t flag = x < width && row_flags[x] != 0;
    int64_t position = 0, total = 0;
    Scan(storage).ExclusiveSum(flag, position, total);
    if (flag) write_peak<T, kAsCenters>(base + position, b, y, x, width, plane, peaks, centers);
    base += total;
    __syncthreads();  // the scan storage is reused
  }
}

// write_peaks_kernel with a warp per row (set_cuda_warp_peaks): the B * H rows go to the grid's
// warps in one wave instead of a block each, most rows having no peak (at batch 8, 8192 blocks
// that mostly leave at once: 13 us in run 7, between the synchronisation and the vote). A warp
// walks its row 32 flags at a time and places its peaks by ballot, in the same order.
template <typename T, bool kAsCenters>
__global__ void write_peaks_by_warp_kernel(DeviceView<const T> ctr, const uint8_t* flags,
                                           int64_t batch, int64_t height, int64_t width,
                                           const int64_t* row_offset, PeakList peaks,
                                           CenterList centers, const long long* verdict) {
  if (plan_failed(verdict)) return;
  const int lane = static_cast<int>(threadIdx.x % 32);
  const int64_t warps = int64_t{gridDim.x} * (blockDim.x / 32);
  const int64_t first = (int64_t{blockIdx.x} * blockDim.x + threadIdx.x) / 32;
  for (int64_t row = first; row < batch * height; row += warps) {  // the same for the warp
    const int64_t b = row / height, y = row - b * height;
    if (kAsCenters && y == 0 && lane == 0) write_center_range(b, row, height, row_offset, centers);
    int64_t base = row_offset[row];
    if (row_offset[row + 1] == base) continue;
    const Plane<const T> plane = ctr.plane(b, 0);
    const uint8_t* row_flags = flags + row * width;
#pragma unroll 8  // the flags' loads of 8 steps in flight together: only `base` carries over
    for (int64_t x0 = 0; x0 < width; x0 += 32) {
      const int64_t x = x0 + lane;
      const bool flag = x < width && row_flags[x] != 0;
      const unsigned found = __ballot_sync(0xffffffffu, flag);
      if (flag) {
        const int64_t at = base + __popc(found & ((1u << lane) - 1u));
        write_peak<T, kAsCenters>(at, b, y, x, width, plane, peaks, centers);
      }
      base += __popc(found);
    }
  }
}

// Kept flags where no sort is needed; sorted images start with none kept.
__global__ void default_kept_kernel(const int32_t* image, const int64_t* peak_begin, int64_t total,
                                    int64_t top_k, TopKMode mode, int64_t* kept) {
  const int64_t j = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (j > total) return;
  if (j == total) {
    kept[j] = 0;  // the extra element that makes the exclusive sum end with the total
    return;
  }
  const int32_t b = image[j];
  const int64_t count = peak_begin[b + 1] - peak_begin[b];
  const bool sorted = top_k > 0 && (mode == TopKMode::kExact ? count > top_k : count >= top_k);
  kept[j] = (top_k != 0 && !sorted) ? 1 : 0;
}

__global__ void iota_in_segment_kernel(const int32_t* image, const int64_t* peak_begin,
                                       int64_t total, int32_t* local) {
  const int64_t j = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (j < total) local[j] = static_cast<int32_t>(j - peak_begin[image[j]]);
}

template <typename T>
__global__ void sorted_kept_kernel(const int32_t* image, const int64_t* peak_begin, int64_t total,
                                   int64_t top_k, TopKMode mode, const T* score,
                                   const T* sorted_score, const int32_t* sorted_local,
                                   int64_t* kept) {
  const int64_t j = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (j >= total) return;
  const int32_t b = image[j];
  const int64_t begin = peak_begin[b];
  const int64_t count = peak_begin[b + 1] - begin;
  if (top_k <= 0) return;
  if (mode == TopKMode::kExact) {
    // j walks the sorted order: the first top_k entries name the kept peaks.
    if (count > top_k && j - begin < top_k) kept[begin + sorted_local[j]] = 1;
  } else if (count >= top_k) {
    const T t = sorted_score[begin + top_k - 1];  // the top_k-th largest peak value
    kept[j] = score[j] > t ? 1 : 0;
  }
}

template <typename T>
__global__ void compact_centers_kernel(const int64_t* kept, const int64_t* position, int64_t total,
                                       int64_t width, const int64_t* pixel, const T* score,
                                       CenterList centers) {
  const int64_t j = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (j >= total || !kept[j]) return;
  const int64_t p = position[j];
  centers.pixel[p] = pixel[j];
  centers.y[p] = static_cast<float>(pixel[j] / width);
  centers.x[p] = static_cast<float>(pixel[j] % width);
  centers.score[p] = static_cast<double>(score[j]);
}

__global__ void center_ranges_kernel(const int64_t* peak_begin, const int64_t* position,
                                     int64_t batch, CenterList centers) {
  const int64_t b = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (b >= batch) return;
  centers.begin[b] = position[peak_begin[b]];
  centers.count[b] = position[peak_begin[b + 1]] - position[peak_begin[b]];
}

template <typename T>
void select_typed(int64_t width, const PeakList& peaks, const int64_t* peak_begin_device,
                  const std::vector<int64_t>& peak_begin, int64_t top_k, TopKMode mode,
                  const int* sort_begin, const int* sort_end, bool any_sorted,
                  const SelectScratch& scratch, const CenterList& centers, cudaStream_t stream) {
  const int64_t batch = static_cast<int64_t>(peak_begin.size()) - 1;
  const int64_t total = peak_begin.back();
  const int threads = 256;
  default_kept_kernel<<<grid_for(total + 1, threads), threads, 0, stream>>>(
      peaks.image, peak_begin_device, total, top_k, mode, scratch.kept);
  check_launch("default_kept_kernel");
  if (any_sorted) {
    T* sorted_score = static_cast<T*>(scratch.sorted_score);
    iota_in_segment_kernel<<<grid_for(total, threads), threads, 0, stream>>>(
        peaks.image, peak_begin_device, total, scratch.local);
    check_launch("iota_in_segment_kernel");
    const T* keys = static_cast<const T*>(peaks.score);
    size_t temp_bytes = scratch.sort.bytes;
    check(cub::DeviceSegmentedRadixSort::SortPairsDescending(
              scratch.sort.data, temp_bytes, keys, sorted_score, scratch.local,
              scratch.sorted_local, static_cast<int>(total), static_cast<int>(batch), sort_begin,
              sort_end, 0, static_cast<int>(sizeof(T) * 8), stream),
          "cub::DeviceSegmentedRadixSort");
    sorted_kept_kernel<T><<<grid_for(total, threads), threads, 0, stream>>>(
        peaks.image, peak_begin_device, total, top_k, mode, keys, sorted_score,
        scratch.sorted_local, scratch.kept);
    check_launch("sorted_kept_kernel");
  }
  exclusive_sum(scratch.kept, scratch.position, total + 1, scratch.scan, stream);
  compact_centers_kernel<T><<<grid_for(total, threads), threads, 0, stream>>>(
      scratch.kept, scratch.position, total, width, peaks.pixel, static_cast<const T*>(peaks.score),
      centers);
  check_launch("compact_centers_kernel");
  center_ranges_kernel<<<grid_for(batch, threads), threads, 0, stream>>>(
      peak_begin_device, scratch.position, batch, centers);
  check_launch("center_ranges_kernel");
}

}  // namespace

CubTemp take_scan_temp(Scratch& scratch, int64_t count) {
  if (count > std::numeric_limits<int>::max()) {  // cub's item counts are int
    throw ValueError("exclusive_sum: " + std::to_string(count) +
                     " items exceed the CUDA path's int32 sort and scan sizes; use the CPU path");
  }
  size_t bytes = 0;
  check(cub::DeviceScan::ExclusiveSum(nullptr, bytes, static_cast<const int64_t*>(nullptr),
                                      static_cast<int64_t*>(nullptr), static_cast<int>(count)),
        "cub::DeviceScan::ExclusiveSum (size)");
  return CubTemp{scratch.take_bytes(static_cast<int64_t>(bytes), "scan storage"), bytes};
}

void exclusive_sum(const int64_t* in, int64_t* out, int64_t count, const CubTemp& temp,
                   cudaStream_t stream) {
  size_t bytes = temp.bytes;
  check(cub::DeviceScan::ExclusiveSum(temp.data, bytes, in, out, static_cast<int>(count), stream),
        "cub::DeviceScan::ExclusiveSum");
}

PeakFlags take_peak_flags(Scratch& scratch, DType ctr_dtype, int64_t pixels, int64_t nms_kernel) {
  PeakFlags taken;
  taken.flags = scratch.take<uint8_t>(pixels, "peak flags");
  if (nms_kernel <= kDirectWindowMax) return taken;
  with_float_type(ctr_dtype, "ctr", [&](auto tag) {
    using T = decltype(tag);
    taken.prefix = scratch.take<T>(pixels, "NMS block maxima");
    taken.suffix = scratch.take<T>(pixels, "NMS block maxima");
    taken.row_max = scratch.take<T>(pixels, "NMS row maxima");
  });
  return taken;
}

void find_peak_flags(const StridedView& ctr, double threshold, int64_t nms_kernel,
                     const PeakFlags& flags, cudaStream_t stream) {
  const int64_t batch = ctr.batch(), height = ctr.height(), width = ctr.width();
  const int64_t pixels = batch * height * width, k = nms_kernel, radius = nms_kernel / 2;
  const int threads = 256;
  with_float_type(ctr.dtype, "ctr", [&](auto tag) {
    using T = decltype(tag);
    T* prefix = static_cast<T*>(flags.prefix);
    T* suffix = static_cast<T*>(flags.suffix);
    T* row_max = static_cast<T*>(flags.row_max);
    const T cut = static_cast<T>(threshold);
    const int64_t row_blocks = batch * height * ((width + k - 1) / k);
    row_blocks_kernel<T><<<grid_for(row_blocks, threads), threads, 0, stream>>>(
        device_view<T>(ctr), height, width, cut, k, (width + k - 1) / k, row_blocks, prefix,
        suffix);
    check_launch("row_blocks_kernel");
    row_window_max_kernel<T><<<grid_for(pixels, threads), threads, 0, stream>>>(
        prefix, suffix, width, radius, k, pixels, row_max);
    check_launch("row_window_max_kernel");
    const int64_t column_blocks = batch * ((height + k - 1) / k) * width;
    column_blocks_kernel<T><<<grid_for(column_blocks, threads), threads, 0, stream>>>(
        row_max, height, width, k, (height + k - 1) / k, column_blocks, prefix, suffix);
    check_launch("column_blocks_kernel");
    peak_flags_kernel<T><<<grid_for(pixels, threads), threads, 0, stream>>>(
        device_view<T>(ctr), prefix, suffix, height, width, cut, radius, k, pixels, flags.flags);
    check_launch("peak_flags_kernel");
  });
}

void count_peaks(const StridedView& ctr, double threshold, int64_t nms_kernel, uint8_t* peak_flags,
                 int64_t* row_count, cudaStream_t stream) {
  const int64_t batch = ctr.batch(), height = ctr.height(), width = ctr.width();
  with_float_type(ctr.dtype, "ctr", [&](auto tag) {
    using T = decltype(tag);
    const dim3 grid(static_cast<unsigned>(height), static_cast<unsigned>(batch));
    count_peaks_kernel<T><<<grid, kRowThreads, 0, stream>>>(
        device_view<T>(ctr), peak_flags, nms_kernel > kDirectWindowMax, height, width,
        static_cast<T>(threshold), nms_kernel / 2, row_count);
    check_launch("count_peaks_kernel");
  });
}

template <bool kAsCenters>
void launch_write_peaks(const StridedView& ctr, const uint8_t* peak_flags,
                        const int64_t* row_offset, const PeakList& peaks, const CenterList& centers,
                        const long long* verdict, cudaStream_t stream) {
  const int64_t batch = ctr.batch(), height = ctr.height(), width = ctr.width();
  with_float_type(ctr.dtype, "ctr", [&](auto tag) {
    using T = decltype(tag);
    if (warp_peaks.load(std::memory_order_relaxed)) {
      const int64_t resident = resident_blocks(write_peaks_by_warp_kernel<T, kAsCenters>,
                                               kRowThreads, 0, current_device());
      const int64_t blocks = std::min((batch * height + 7) / 8, resident);  // 8 warps a block
      write_peaks_by_warp_kernel<T, kAsCenters>
          <<<static_cast<unsigned>(blocks), kRowThreads, 0, stream>>>(
              device_view<T>(ctr), peak_flags, batch, height, width, row_offset, peaks, centers,
              verdict);
      check_launch("write_peaks_by_warp_kernel");
      return;
    }
    const dim3 grid(static_cast<unsigned>(height), static_cast<unsigned>(batch));
    write_peaks_kernel<T, kAsCenters><<<grid, kRowThreads, 0, stream>>>(
        device_view<T>(ctr), peak_flags, height, width, row_offset, peaks, centers, verdict);
    check_launch("write_peaks_kernel");
  });
}

void write_peaks(const StridedView& ctr, const uint8_t* peak_flags, const int64_t* row_offset,
                 const PeakList& peaks, cudaStream_t stream) {
  launch_write_peaks<false>(ctr, peak_flags, row_offset, peaks, CenterList{}, nullptr, stream);
}

void write_every_peak_as_center(const StridedView& ctr, const uint8_t* peak_flags,
                                const int64_t* row_offset, const CenterList& centers,
                                const long long* plan_verdict, cudaStream_t stream) {
  launch_write_peaks<true>(ctr, peak_flags, row_offset, PeakList{}, centers, plan_verdict, stream);
}

bool sort_segments(const std::vector<int64_t>& peak_begin, int64_t top_k, TopKMode mode,
                   std::vector<int>& begin, std::vector<int>& end) {
  const int64_t batch = static_cast<int64_t>(peak_begin.size()) - 1;
  begin.resize(static_cast<size_t>(batch));
  end.resize(static_cast<size_t>(batch));
  bool any_sorted = false;
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t count = peak_begin[b + 1] - peak_begin[b];
    const bool sorted = sorts_peaks(count, top_k, mode);
    begin[b] = static_cast<int>(peak_begin[b]);
    end[b] = static_cast<int>(sorted ? peak_begin[b + 1] : peak_begin[b]);
    any_sorted = any_sorted || sorted;
  }
  return any_sorted;
}

SelectScratch take_select_scratch(Scratch& scratch, DType ctr_dtype, int64_t total, int64_t batch,
                                  bool any_sorted) {
  SelectScratch taken{};
  taken.kept = scratch.take<int64_t>(total + 1, "top-k flags");
  taken.position = scratch.take<int64_t>(total + 1, "top-k positions");
  taken.scan = take_scan_temp(scratch, total + 1);
  if (!any_sorted) return taken;
  taken.local = scratch.take<int32_t>(total, "top-k indices");
  taken.sorted_local = scratch.take<int32_t>(total, "top-k indices");
  with_float_type(ctr_dtype, "ctr", [&](auto tag) {
    using T = decltype(tag);
    taken.sorted_score = scratch.take<T>(total, "top-k scores");
    size_t bytes = 0;
    check(cub::DeviceSegmentedRadixSort::SortPairsDescending(
              nullptr, bytes, static_cast<const T*>(nullptr), static_cast<T*>(nullptr),
              static_cast<const int32_t*>(nullptr), static_cast<int32_t*>(nullptr),
              static_cast<int>(total), static_cast<int>(batch), static_cast<const int*>(nullptr),
              static_cast<const int*>(nullptr), 0, static_cast<int>(sizeof(T) * 8)),
          "cub::DeviceSegmentedRadixSort (size)");
    taken.sort = CubTemp{scratch.take_bytes(static_cast<int64_t>(bytes), "top-k sort"), bytes};
  });
  return taken;
}

void select_centers(DType ctr_dtype, int64_t width, const PeakList& peaks,
                    const int64_t* peak_begin_device, const std::vector<int64_t>& peak_begin,
                    int64_t top_k, TopKMode mode, const int* sort_begin, const int* sort_end,
                    bool any_sorted, const SelectScratch& scratch, const CenterList& centers,
                    cudaStream_t stream) {
  with_float_type(ctr_dtype, "ctr", [&](auto tag) {
    select_typed<decltype(tag)>(width, peaks, peak_begin_device, peak_begin, top_k, mode,
                                sort_begin, sort_end, any_sorted, scratch, centers, stream);
  });
}

}  // namespace cuda

bool set_cuda_warp_peaks(bool by_warp) { return cuda::warp_peaks.exchange(by_warp); }

}  // namespace pdl_post
