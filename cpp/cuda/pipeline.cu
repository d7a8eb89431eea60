// CUDA batch driver: device and stream handling, scratch memory, the two phases of CudaMerge and
// the copies of per-image results to the host (see cuda_pipeline.h for the sync points).
#include <algorithm>
#include <atomic>
#include <climits>
#include <cstring>
#include <exception>
#include <functional>
#include <limits>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <tuple>

#include "cuda_common.cuh"
#include "pdl_post/float_mode.h"

namespace pdl_post {

namespace cuda {

void check(cudaError_t status, const char* what) {
  if (status != cudaSuccess) {
    // A failed call is also the thread's last error: cleared, or the caller's next CUDA call
    // (ours, torch's, cub's launch checks) would report it again. Sticky errors stay anyway.
    (void)cudaGetLastError();
    throw CudaError(std::string("CUDA error in ") + what + ": " + cudaGetErrorName(status) + " (" +
                    cudaGetErrorString(status) + ")");
  }
}

void check_launch(const char* kernel) { check(cudaGetLastError(), kernel); }

void ignore_failure(cudaError_t status) {
  if (status != cudaSuccess) (void)cudaGetLastError();
}

namespace {

// One pool per device that keeps freed memory for the next call (the default pool would hand it
// back to the driver at every synchronisation) until cuda_release_memory().
struct DevicePools {
  std::mutex mutex;
  std::map<int, cudaMemPool_t> pools;  // nullptr: the device has no memory pools
};

DevicePools& device_pools() {
  static DevicePools pools;
  return pools;
}

cudaMemPool_t pool_for_current_device() {
  int device = 0;
  check(cudaGetDevice(&device), "cudaGetDevice");
  DevicePools& registry = device_pools();
  std::lock_guard<std::mutex> lock(registry.mutex);
  std::map<int, cudaMemPool_t>& pools = registry.pools;
  auto it = pools.find(device);
  if (it != pools.end()) return it->second;
  int supported = 0;
  check(cudaDeviceGetAttribute(&supported, cudaDevAttrMemoryPoolsSupported, device),
        "cudaDeviceGetAttribute");
  if (!supported) {  // plain cudaMalloc / cudaFree then (they synchronise, but work)
    pools[device] = nullptr;
    return nullptr;
  }
  cudaMemPoolProps props{};
  props.allocType = cudaMemAllocationTypePinned;
  props.location.type = cudaMemLocationTypeDevice;
  props.location.id = device;
  cudaMemPool_t pool = nullptr;
  check(cudaMemPoolCreate(&pool, &props), "cudaMemPoolCreate");
  uint64_t keep = std::numeric_limits<uint64_t>::max();
  check(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep),
        "cudaMemPoolSetAttribute");
  pools[device] = pool;
  return pool;
}

// The page-locked blocks not in use, by size. Never destroyed: at exit the runtime may be gone.
struct HostTransferBlocks {
  std::mutex mutex;
  std::multimap<size_t, void*> free;
};

HostTransferBlocks& host_transfer_blocks() {
  static auto* blocks = new HostTransferBlocks;
  return *blocks;
}

}  // namespace

HostTransferBuffer::HostTransferBuffer(int64_t words) {
  const size_t bytes = static_cast<size_t>(std::max<int64_t>(words, 1)) * sizeof(long long);
  HostTransferBlocks& blocks = host_transfer_blocks();
  {
    std::lock_guard<std::mutex> lock(blocks.mutex);
    const auto it = blocks.free.lower_bound(bytes);  // the smallest that holds them
    if (it != blocks.free.end()) {
      locked_bytes_ = it->first;
      data_ = static_cast<long long*>(it->second);
      blocks.free.erase(it);
      return;
    }
  }
  size_t block_bytes = 4096;  // sizes by powers of two, so that blocks serve later calls
  while (block_bytes < bytes) block_bytes *= 2;
  void* block = nullptr;
  // Portable: page-locked for every device's context, the jobs' devices differing.
  const cudaError_t status = cudaHostAlloc(&block, block_bytes, cudaHostAllocPortable);
  if (status == cudaSuccess) {
    locked_bytes_ = block_bytes;
    data_ = static_cast<long long*>(block);
    return;
  }
  ignore_failure(status);  // page-locked memory is an optimisation: pageable then
  pageable_.resize(bytes / sizeof(long long));
  data_ = pageable_.data();
}

HostTransferBuffer::~HostTransferBuffer() {
  if (!locked_bytes_) return;
  HostTransferBlocks& blocks = host_transfer_blocks();
  std::lock_guard<std::mutex> lock(blocks.mutex);
  blocks.free.emplace(locked_bytes_, data_);
}

void release_host_transfer_blocks() {
  HostTransferBlocks& blocks = host_transfer_blocks();
  std::lock_guard<std::mutex> lock(blocks.mutex);
  for (const auto& [bytes, block] : blocks.free) ignore_failure(cudaFreeHost(block));
  blocks.free.clear();
}

DeviceBuffer::DeviceBuffer(int64_t bytes, cudaStream_t stream, const char* what)
    : bytes_(bytes), stream_(stream) {
  if (bytes < 0) throw ValueError(std::string(what) + ": negative buffer size");
  // Never zero bytes: every buffer gets a distinct valid pointer.
  const size_t request = static_cast<size_t>(std::max<int64_t>(bytes, 16));
  const cudaMemPool_t pool = pool_for_current_device();
  pooled_ = pool != nullptr;
  const cudaError_t status = pooled_ ? cudaMallocFromPoolAsync(&data_, request, pool, stream)
                                     : cudaMalloc(&data_, request);
  if (status != cudaSuccess) {
    (void)cudaGetLastError();
    data_ = nullptr;
    throw CudaError(std::string("CUDA path: cannot allocate ") + std::to_string(bytes) +
                    " bytes of device memory for " + what + ": " + cudaGetErrorString(status));
  }
}

void DeviceBuffer::release() noexcept {
  if (data_) ignore_failure(pooled_ ? cudaFreeAsync(data_, stream_) : cudaFree(data_));
  data_ = nullptr;
}

DeviceBuffer::~DeviceBuffer() { release(); }

DeviceBuffer::DeviceBuffer(DeviceBuffer&& other) noexcept
    : data_(other.data_), bytes_(other.bytes_), stream_(other.stream_), pooled_(other.pooled_) {
  other.data_ = nullptr;
}

DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& other) noexcept {
  if (this != &other) {
    release();
    data_ = other.data_;
    bytes_ = other.bytes_;
    stream_ = other.stream_;
    pooled_ = other.pooled_;
    other.data_ = nullptr;
  }
  return *this;
}

Scratch::Scratch(const Scratch& sizing, cudaStream_t stream) : sizing_(false) {
  const std::string what = std::string("scratch arrays (the largest: ") + sizing.largest_what_ +
                           ", " + std::to_string(sizing.largest_) + " bytes)";
  block_ = DeviceBuffer(sizing.used_, stream, what.c_str());
}

Scratch::~Scratch() { release_pieces(); }

Scratch& Scratch::operator=(Scratch&& other) noexcept {
  if (this != &other) {
    release_pieces();
    sizing_ = other.sizing_;
    used_ = other.used_;
    largest_ = other.largest_;
    largest_what_ = other.largest_what_;
    block_ = std::move(other.block_);
    emulated_pieces_ = std::move(other.emulated_pieces_);
    other.emulated_pieces_.clear();
  }
  return *this;
}

void* Scratch::take_bytes(int64_t bytes, const char* what) {
  if (bytes < 0) throw ValueError(std::string(what) + ": negative buffer size");
  const int64_t size = std::max<int64_t>(bytes, 16);  // every piece gets its own address
  const int64_t at = (used_ + 255) / 256 * 256;
  if (size > std::numeric_limits<int64_t>::max() - at) {
    throw ValueError(std::string("CUDA path: the scratch arrays with ") + what +
                     " exceed 2**63 bytes");
  }
  used_ = at + size;
  if (sizing_) {
    if (bytes >= largest_) {
      largest_ = bytes;
      largest_what_ = what;
    }
    return nullptr;
  }
  if (used_ > block_.bytes()) {  // the two passes of carve() took different arrays
    throw std::logic_error(std::string("Scratch: ") + what + " was not sized");
  }
#ifdef PDL_POST_EMULATED_CUDA
  emulated_pieces_.push_back(pdl_emu::allocate_piece(static_cast<size_t>(size)));
  return emulated_pieces_.back();
#else
  return block_.as<char>() + at;
#endif
}

void Scratch::release_pieces() noexcept {
#ifdef PDL_POST_EMULATED_CUDA
  for (void* piece : emulated_pieces_) pdl_emu::free_piece(piece);
#endif
  emulated_pieces_.clear();
}

void UploadPack::upload(void* device, cudaStream_t stream, void* staging) const {
  if (bytes_.empty()) return;
  const void* from = bytes_.data();
  if (staging) from = std::memcpy(staging, bytes_.data(), bytes_.size());
  check(cudaMemcpyAsync(device, from, bytes_.size(), cudaMemcpyHostToDevice, stream),
        "cudaMemcpyAsync (tables)");
}

namespace {

cudaStream_t stream_of(uintptr_t handle) {
  // __cuda_array_interface__ v3 names the default streams 1 (legacy) and 2 (per-thread).
  if (handle == 1) return cudaStreamLegacy;
  if (handle == 2) return cudaStreamPerThread;
  return reinterpret_cast<cudaStream_t>(handle);
}

class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    check(cudaGetDevice(&previous_), "cudaGetDevice");
    if (previous_ != device) check(cudaSetDevice(device), "cudaSetDevice");
  }
  ~DeviceGuard() { ignore_failure(cudaSetDevice(previous_)); }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = 0;
};

// The first phase's starting values: the label range's, the peak counts' extra element that the
// scan reads (it never adds it; a memset of its own would be one more operation per call), and
// the verdict on a speculative second phase: failed until plan_check_kernel says otherwise.
__global__ void init_first_phase_kernel(long long* range, int64_t* row_count_end,
                                        long long* plan_verdict) {
  range[0] = LLONG_MAX;
  range[1] = LLONG_MIN;
  *row_count_end = 0;
  *plan_verdict = 1;
}

// A fuse job's header: [label range, largest instance id per image (0), smallest (INT64_MAX),
// unused].
__global__ void init_fuse_header_kernel(long long* header, int64_t batch) {
  header[0] = LLONG_MAX;
  header[1] = LLONG_MIN;
  for (int64_t b = 0; b < batch; ++b) header[2 + b] = 0;
  header[2 + batch] = LLONG_MAX;
  header[3 + batch] = 1;
}

// Does this build hold code the device can run (machine code for its architecture, or PTX it
// can compile)? Without it every launch fails with a bare cudaErrorNoKernelImageForDevice; this
// says which device and how to rebuild instead. A host-side lookup, no work on the device.
void require_kernel_image(int device) {
  // Looked up once per device and architecture (the lookup took 3 us of every call on an H100;
  // reading the architecture back, 0.3 us).
  static std::atomic<int> verified[64];  // zero: not yet
  int major = 0, minor = 0;
  check(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device),
        "cudaDeviceGetAttribute");
  check(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device),
        "cudaDeviceGetAttribute");
  const int architecture = 10 * major + minor;
  const bool cached = device >= 0 && device < 64;
  if (cached && verified[device].load(std::memory_order_relaxed) == architecture) return;
  cudaFuncAttributes attributes;
  const cudaError_t status = cudaFuncGetAttributes(&attributes, init_first_phase_kernel);
  if (status == cudaErrorNoKernelImageForDevice || status == cudaErrorInvalidDeviceFunction) {
    (void)cudaGetLastError();  // not sticky: clear it for the caller's next CUDA call
    const std::string cc = std::to_string(major) + std::to_string(minor);
    throw CudaError("CUDA device " + std::to_string(device) + " has compute capability " +
                    std::to_string(major) + "." + std::to_string(minor) +
                    ", which this build of pdl_post does not cover (architectures " +
                    PDL_POST_CUDA_ARCHITECTURES +
                    "): rebuild it with PDL_POST_CUDA_ARCHITECTURES=\"" + cc +
                    "-real;90-virtual\" in the environment (pip install --no-binary " +
                    "pdl_post pdl_post, or make develop in a checkout)");
  }
  check(status, "cudaFuncGetAttributes");
  if (cached) verified[device].store(architecture, std::memory_order_relaxed);
}

// A call reads counts back from the device to size its buffers and output (one to three
// synchronisations), which a stream being captured into a CUDA graph does not allow: refuse
// before queuing anything, so that the caller's capture is left as it was.
void require_not_capturing(cudaStream_t stream) {
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  check(cudaStreamIsCapturing(stream, &status), "cudaStreamIsCapturing");
  if (status != cudaStreamCaptureStatusNone) {
    throw CudaError(
        "the CUDA path cannot run while its stream is being captured into a CUDA graph: it "
        "sizes its buffers and output from counts it reads back from the device (stream "
        "synchronisations); call merge / postprocess / find_centers outside the capture");
  }
}

__global__ void peak_begin_kernel(const int64_t* row_offset, int64_t batch, int64_t height,
                                  long long* peak_begin) {
  const int64_t b = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (b <= batch) peak_begin[b] = static_cast<long long>(row_offset[b * height]);
}

// The verdict on a speculative second phase sized for `centers` centres per image and `classes`
// classes, into an output whose ids hold class ids up to max_label (one block): it holds (0)
// where the class ids are in [0, min(classes - 1, max_label)] and every image keeps every one of
// its peaks (no top-k sort), at most `centers` of them. header: the first phase's [min label,
// max label, peak_begin[0..B], verdict].
__global__ void plan_check_kernel(long long* header, int64_t batch, int64_t max_label,
                                  int64_t classes, int64_t centers, int64_t top_k, TopKMode mode) {
  const long long* peak_begin = header + 2;
  bool fails = false;
  for (int64_t b = threadIdx.x; b < batch; b += blockDim.x) {
    const int64_t peaks = peak_begin[b + 1] - peak_begin[b];
    fails = fails || peaks > centers || sorts_peaks(peaks, top_k, mode);
  }
  fails = __syncthreads_or(fails) != 0;
  if (threadIdx.x == 0) {
    const long long lo = header[0], hi = header[1];
    header[3 + batch] = fails || lo < 0 || hi > max_label || hi >= classes ? 1 : 0;
  }
}

// What the host reads back at the end of a call, gathered into one array so that one copy of a
// size known in advance brings it all: per image 5 words (centre count, first centre, segment
// count, error instance, its class), then for postprocess every slot of the kept centres
// (pixel, score) and of the segments. Slots past the counts are zeroed, so the copy reads only
// memory written here.
struct Readback {
  long long* summary;       // [5 B]
  int64_t* pixel;           // [center_slots] the kept centres, compacted over the batch from 0
  double* score;            // [center_slots]
  DeviceSegment* segments;  // [segment_slots] image b's at seg_offset[b]
  int64_t center_slots, segment_slots;

  static int64_t words(int64_t batch, int64_t center_slots, int64_t segment_slots) {
    static_assert(sizeof(DeviceSegment) % sizeof(long long) == 0, "segments are whole words");
    return 5 * batch + 2 * center_slots +
           segment_slots * static_cast<int64_t>(sizeof(DeviceSegment) / sizeof(long long));
  }
  // The parts, in order, within `words(...)` words at `base` (device or host memory).
  static Readback at(long long* base, int64_t batch, int64_t center_slots, int64_t segment_slots) {
    long long* pixel = base + 5 * batch;
    long long* score = pixel + center_slots;
    long long* segments = score + center_slots;
    return {base,
            reinterpret_cast<int64_t*>(pixel),
            reinterpret_cast<double*>(score),
            reinterpret_cast<DeviceSegment*>(segments),
            center_slots,
            segment_slots};
  }
};

// buffers.num_segments == nullptr: the centres only (no segment slots).
__global__ void readback_kernel(int64_t batch, CenterList centers, FuseLayout layout,
                                FuseBuffers buffers, Readback r) {
  const int64_t slots = r.center_slots > r.segment_slots ? r.center_slots : r.segment_slots;
  const int64_t n = batch > slots ? batch : slots;
  const int64_t kept = r.center_slots > 0 ? centers.begin[batch - 1] + centers.count[batch - 1] : 0;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    if (i < batch) {
      long long* s = r.summary + 5 * i;
      s[0] = centers.count[i];
      s[1] = centers.begin[i];
      // Centres only (finish_centers): no segments, no fusion and so no error.
      const bool fused = buffers.num_segments != nullptr;
      s[2] = fused ? buffers.num_segments[i] : 0;
      const unsigned long long k = fused ? buffers.error_instance[i] : ULLONG_MAX;
      s[3] = k == ULLONG_MAX ? -1 : static_cast<long long>(k);
      s[4] = k == ULLONG_MAX
                 ? -1
                 : layout.class_label(
                       buffers.class_of[layout.inst_offset[i] + static_cast<int64_t>(k)]);
    }
    if (i < r.center_slots) {
      r.pixel[i] = i < kept ? centers.pixel[i] : 0;
      r.score[i] = i < kept ? centers.score[i] : 0.0;
    }
    if (i < r.segment_slots) {
      // The image whose slots hold i: the last b with seg_offset[b] <= i.
      const int64_t b = lower_bound_index(layout.seg_offset, batch + 1, i + 1) - 1;
      const bool used = i - layout.seg_offset[b] < buffers.num_segments[b];
      r.segments[i] = used ? buffers.segments[i] : DeviceSegment{};
    }
  }
}

// Thing classes on the device: a byte table for small ids, else the sorted ids (as on the CPU).
struct ThingUpload {
  bool use_table = true;
  int64_t size = 0;
  size_t offset = 0;

  ThingUpload(std::vector<int64_t> ids, UploadPack& pack) {
    std::sort(ids.begin(), ids.end());
    ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
    // Compared before adding 1: the largest id may be INT64_MAX.
    use_table = ids.empty() || ids.back() < (int64_t{1} << 16);
    if (use_table) {
      const int64_t table_size = ids.empty() ? 0 : ids.back() + 1;
      std::vector<uint8_t> bytes(static_cast<size_t>(table_size), 0);
      for (int64_t t : ids) bytes[t] = 1;
      size = table_size;
      offset = pack.add(bytes);
    } else {
      size = static_cast<int64_t>(ids.size());
      offset = pack.add(ids);
    }
  }
  ThingClasses view(void* tables) const {
    if (use_table) return ThingClasses{UploadPack::at<uint8_t>(tables, offset), size, nullptr, 0};
    return ThingClasses{nullptr, 0, UploadPack::at<int64_t>(tables, offset), size};
  }
};

// Upper bound of the number of kept centres of an image with `peaks` peaks.
int64_t kept_bound(int64_t peaks, int64_t top_k, TopKMode mode) {
  if (top_k < 0) return peaks;
  if (top_k == 0) return 0;
  if (mode == TopKMode::kExact) return std::min(peaks, top_k);
  return peaks >= top_k ? top_k - 1 : peaks;
}

// The speculative second phase (CudaMerge::finish_if_fits): merge queues it before its counts
// arrive, sized by what earlier calls on images of the same size needed, so that the device goes
// from the first phase to the vote while the host waits for the counts instead of idling through
// the host's sizing and launches.
std::atomic<bool> speculation{true};

// Centres per image and classes a speculative phase is sized for.
struct PhaseCapacity {
  int64_t centers = 0, classes = 0;
};

// Capacities by (device, height, width), the most recently used first.
struct CapacityRegistry {
  using Key = std::tuple<int, int64_t, int64_t>;
  static constexpr size_t kRemembered = 16;  // image sizes kept (a process may see many)
  std::mutex mutex;
  std::vector<std::pair<Key, PhaseCapacity>> sizes;

  std::optional<PhaseCapacity> find(const Key& key) {
    std::lock_guard<std::mutex> lock(mutex);
    const auto it = entry(key);
    if (it == sizes.end()) return std::nullopt;
    std::rotate(sizes.begin(), it, it + 1);  // now the most recently used
    return sizes.front().second;
  }
  // A call that kept at most `kept` centres per image with `classes` classes: the capacity grows
  // to hold it (a quarter more centres and 8, so that a few more than this call's still fit:
  // video frames differ), within the brute-force vote and the vote's shared counters, which the
  // speculative phase keeps to.
  void remember(const Key& key, int64_t kept, int64_t classes) {
    const int64_t headroom = std::min({kept + kept / 4 + 8, kBruteForceCentersMax,
                                       kSharedBinLimit / std::max<int64_t>(classes, 1) - 1});
    std::lock_guard<std::mutex> lock(mutex);
    PhaseCapacity capacity{std::max(kept, headroom), classes};
    const auto it = entry(key);
    if (it != sizes.end()) {
      capacity.centers = std::max(capacity.centers, it->second.centers);
      capacity.classes = std::max(capacity.classes, it->second.classes);
      sizes.erase(it);
    }
    sizes.insert(sizes.begin(), {key, capacity});
    if (sizes.size() > kRemembered) sizes.pop_back();
  }
  // A call whose sizes a speculative phase would not take (a top-k sort, compacted class ids, the
  // vote grid, pairs by sort): the next call of this size does not speculate either.
  void forget(const Key& key) {
    std::lock_guard<std::mutex> lock(mutex);
    const auto it = entry(key);
    if (it != sizes.end()) sizes.erase(it);
  }
  void forget_all() {
    std::lock_guard<std::mutex> lock(mutex);
    sizes.clear();
  }

 private:
  // The entry of `key` (at most one: remember replaces it), or sizes.end(); mutex held.
  std::vector<std::pair<Key, PhaseCapacity>>::iterator entry(const Key& key) {
    return std::find_if(sizes.begin(), sizes.end(), [&](const auto& e) { return e.first == key; });
  }
};

CapacityRegistry& capacities() {
  static CapacityRegistry registry;
  return registry;
}

}  // namespace
}  // namespace cuda

bool set_cuda_speculation(bool speculate) {
  if (!speculate) cuda::capacities().forget_all();
  return cuda::speculation.exchange(speculate);
}

using cuda::check;

int cuda_device_count() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  return count;
}

int cuda_pointer_device(uintptr_t pointer) {
  cudaPointerAttributes attributes{};
  if (cudaPointerGetAttributes(&attributes, reinterpret_cast<const void*>(pointer)) !=
      cudaSuccess) {
    (void)cudaGetLastError();
    return -1;
  }
  if (attributes.type == cudaMemoryTypeDevice || attributes.type == cudaMemoryTypeManaged) {
    return attributes.device;
  }
  return -1;
}

void cuda_stream_wait(int device, uintptr_t stream, uintptr_t producer) {
  const cuda::DeviceGuard guard(device);
  const cudaStream_t waiting = cuda::stream_of(stream), queued = cuda::stream_of(producer);
  cuda::require_not_capturing(waiting);
  cuda::require_not_capturing(queued);
  cudaEvent_t event = nullptr;
  check(cudaEventCreateWithFlags(&event, cudaEventDisableTiming), "cudaEventCreateWithFlags");
  const cudaError_t recorded = cudaEventRecord(event, queued);
  const cudaError_t waited =
      recorded == cudaSuccess ? cudaStreamWaitEvent(waiting, event, 0) : cudaSuccess;
  cuda::ignore_failure(cudaEventDestroy(event));  // its resources go once the wait is done
  check(recorded, "cudaEventRecord (on the stream an input or the output was made on)");
  check(waited, "cudaStreamWaitEvent");
}

int64_t cuda_release_memory() {
  cuda::DevicePools& registry = cuda::device_pools();
  std::lock_guard<std::mutex> lock(registry.mutex);
  cuda::release_host_transfer_blocks();  // host memory: not counted in the device bytes returned
  int64_t released = 0;
  for (const auto& [device, pool] : registry.pools) {
    if (!pool) continue;
    cuda::DeviceGuard guard(device);
    // Frees are stream-ordered: memory comes back to the pool once the queued work has run.
    check(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
    uint64_t before = 0, after = 0;
    check(cudaMemPoolGetAttribute(pool, cudaMemPoolAttrReservedMemCurrent, &before),
          "cudaMemPoolGetAttribute");
    check(cudaMemPoolTrimTo(pool, 0), "cudaMemPoolTrimTo");
    check(cudaMemPoolGetAttribute(pool, cudaMemPoolAttrReservedMemCurrent, &after),
          "cudaMemPoolGetAttribute");
    released += static_cast<int64_t>(before - after);
  }
  return released;
}

std::string cuda_build_description() {
  const int version = CUDART_VERSION;
  return "CUDA runtime " + std::to_string(version / 1000) + "." +
         std::to_string((version % 1000) / 10) + " (static), architectures " +
         PDL_POST_CUDA_ARCHITECTURES;
}

namespace {

// Runs `release` with `device` current (scratch is freed in stream order on the job's device).
template <typename F>
void on_device(int device, F release) noexcept {
  int previous = 0;
  const bool other = cudaGetDevice(&previous) == cudaSuccess && previous != device;
  if (other) cuda::ignore_failure(cudaSetDevice(device));
  release();
  if (other) cuda::ignore_failure(cudaSetDevice(previous));
}

// A [B, 1, H, W] view of `data`: one row-major plane per image.
StridedView planes_of(void* data, DType dtype, int64_t batch, int64_t height, int64_t width) {
  const int64_t hw = height * width;
  return StridedView{data, dtype, {batch, 1, height, width}, {hw, hw, width, 1}};
}

// The labels of `logits` [B, C, H, W]: their argmax (first maximum) into `labels`, viewed.
StridedView argmax_labels(const StridedView& logits, int32_t* labels, cudaStream_t stream) {
  cuda::argmax_logits(logits, labels, stream);
  return planes_of(labels, DType::kInt32, logits.batch(), logits.height(), logits.width());
}

// The grid's y dimension holds the images; row counts and scans are int.
void check_batch_shape(int64_t batch, int64_t height) {
  if (batch > 65535) {
    throw ValueError("CUDA path: batches of at most 65535 images, got " + std::to_string(batch));
  }
  if (batch * height + 1 > std::numeric_limits<int>::max()) {
    throw ValueError("CUDA path: batch x height must stay below 2**31 rows");
  }
}

}  // namespace

struct CudaMerge::State {
  CudaMergeInputs in;
  CenterOptions centers;
  FuseParams params;
  cudaStream_t stream = nullptr;
  int64_t batch = 0, height = 0, width = 0;
  bool empty = false, finished = false;
  StridedView sem;                  // the labels read by every later stage
  cuda::Scratch first_scratch;      // the first phase's arrays, until finish ends
  int64_t* row_offset = nullptr;    // peaks before each row (B * H + 1), in first_scratch
  uint8_t* peak_flags = nullptr;    // a flag per pixel (cuda::PeakFlags), likewise
  long long* header = nullptr;      // [min label, max label, peak_begin[0..B], verdict], likewise
  bool counted = false;             // header read back (sync point 1)
  std::vector<int64_t> peak_begin;  // B + 1 (host)
  int64_t lo = 0, hi = -1;
  bool plan_held = false;  // the header's verdict on a speculative second phase
  // A job for fuse (in.fuse): the given instance map's smallest id, and each image's largest.
  int64_t instance_lo = 0;
  std::vector<int64_t> instance_hi;
  // The header's read-back and the event recorded after it, from queued till waited for.
  std::optional<cuda::HostTransferBuffer> header_copy;
  cudaEvent_t header_copied = nullptr;
  // A speculative phase's tables, staged for their upload, which the stream runs before the
  // header's copy: kept until that copy has been waited for.
  std::optional<cuda::HostTransferBuffer> upload_staging;

  // Once it holds copies (after construction), destroyed by CudaMerge::release, with the job's
  // device current.
  ~State() {
    // A copy still in flight lands in (or reads) its page-locked block before the block serves
    // another call: the event follows both copies; an upload queued without it, the stream.
    if (header_copy && header_copied) {
      cuda::ignore_failure(cudaEventSynchronize(header_copied));
    } else if (upload_staging) {
      cuda::ignore_failure(cudaStreamSynchronize(stream));
    }
    if (header_copied) cuda::ignore_failure(cudaEventDestroy(header_copied));
  }

  int64_t header_words() const { return 4 + batch; }

  // The header's copy to the host, queued once: right after the first phase (and the plan's
  // check), before any speculative work, so that waiting for it does not wait for that work.
  void queue_header_copy() {
    if (empty || header_copy) return;
    cuda::DeviceGuard guard(in.device);  // handles 1 and 2 name the current device's streams
    if (!header_copied) {
      check(cudaEventCreateWithFlags(&header_copied, cudaEventDisableTiming),
            "cudaEventCreateWithFlags");
    }
    header_copy.emplace(header_words());
    const cudaError_t queued =
        cudaMemcpyAsync(header_copy->data(), header, header_words() * sizeof(long long),
                        cudaMemcpyDeviceToHost, stream);
    if (queued != cudaSuccess) header_copy.reset();  // nothing in flight
    check(queued, "cudaMemcpyAsync (label range)");
    const cudaError_t recorded = cudaEventRecord(header_copied, stream);
    // Unrecorded, the event would not wait for the copy: the stream does, before the error.
    if (recorded != cudaSuccess) cuda::ignore_failure(cudaStreamSynchronize(stream));
    check(recorded, "cudaEventRecord");
  }

  // Sync point 1, once: the label range decides the output dtype, the peak counts size the
  // second phase's buffers.
  void wait_for_counts() {
    if (empty || counted) return;
    queue_header_copy();
    cuda::DeviceGuard guard(in.device);
    check(cudaEventSynchronize(header_copied), "cudaEventSynchronize");
    const long long* h = header_copy->data();
    lo = h[0];
    hi = h[1];
    if (in.fuse) {  // [lo, hi, largest id per image, smallest id, unused]
      instance_hi.assign(h + 2, h + 2 + batch);
      instance_lo = h[2 + batch];
    } else {
      peak_begin.assign(h + 2, h + 3 + batch);
      plan_held = h[3 + batch] == 0;
    }
    counted = true;
    header_copy.reset();  // the page-locked blocks go back for the next call
    upload_staging.reset();
    cuda::ignore_failure(cudaEventDestroy(header_copied));
    header_copied = nullptr;
  }

  // The first phase's scratch back to the pool, in order on the call's stream.
  void release_first_phase() {
    on_device(in.device, [this] {
      first_scratch = cuda::Scratch();
      row_offset = nullptr;
      peak_flags = nullptr;
    });
  }
};

CudaMerge::CudaMerge(const CudaMergeInputs& inputs, const CenterOptions& centers,
                     const FuseParams& params)
    : state_(std::make_unique<State>()) {
  const IeeeFloatModes float_modes;  // host-side conversions (threshold) as the CPU's
  State& s = *state_;
  s.in = inputs;
  s.centers = centers;
  s.params = params;
  s.stream = cuda::stream_of(inputs.stream);
  const StridedView& image = inputs.fuse ? inputs.instance : inputs.ctr;  // the batch's shape
  s.batch = image.batch();
  s.height = image.height();
  s.width = image.width();
  if (s.batch * s.height * s.width == 0) {
    s.empty = true;
    return;
  }
  check_batch_shape(s.batch, s.height);
  cuda::DeviceGuard guard(inputs.device);
  // Should anything below throw, the scratch is freed here, while the guard still keeps the
  // job's device current: state_ is destroyed only after the guard, with the caller's device
  // current, and a stream handle 0 / 1 / 2 would then name another device's stream.
  struct ReleaseOnError {
    State& s;
    const int pending = std::uncaught_exceptions();
    ~ReleaseOnError() {
      if (std::uncaught_exceptions() > pending) s.first_scratch = cuda::Scratch();
    }
  } release_on_error{s};
  cuda::require_kernel_image(inputs.device);
  cuda::require_not_capturing(s.stream);
  const int64_t hw = s.height * s.width;
  const int64_t rows = s.batch * s.height;
  const bool argmax = inputs.logits.data != nullptr;
  struct Arrays {
    int32_t* labels;     // argmax of logits
    long long* header;   // [min label, max label, peak_begin[0..B], plan verdict]
    int64_t* row_count;  // peaks per row
    int64_t* row_offset;
    cuda::CubTemp scan;
    cuda::PeakFlags peak_flags;
  };
  const Arrays a = cuda::carve(s.first_scratch, s.stream, [&](cuda::Scratch& scratch) {
    Arrays taken{};
    if (argmax) taken.labels = scratch.take<int32_t>(s.batch * hw, "argmax labels");
    taken.header = scratch.take<long long>(s.header_words(), "label range");
    if (inputs.fuse) return taken;  // no peaks
    taken.row_count = scratch.take<int64_t>(rows + 1, "peak counts");
    taken.row_offset = scratch.take<int64_t>(rows + 1, "peak offsets");
    taken.scan = cuda::take_scan_temp(scratch, rows + 1);
    taken.peak_flags =
        cuda::take_peak_flags(scratch, inputs.ctr.dtype, rows * s.width, centers.nms_kernel);
    return taken;
  });
  s.row_offset = a.row_offset;
  s.peak_flags = a.peak_flags.flags;
  s.header = a.header;
  s.sem = argmax ? argmax_labels(inputs.logits, a.labels, s.stream) : inputs.sem;
  if (inputs.fuse) {
    cuda::init_fuse_header_kernel<<<1, 1, 0, s.stream>>>(a.header, s.batch);
    cuda::check_launch("init_fuse_header_kernel");
    cuda::label_range(s.sem, a.header, s.stream);
    cuda::instance_range(inputs.instance, a.header + 2, a.header + 2 + s.batch, s.stream);
    return;  // the wait for the ranges is label_range()'s
  }
  cuda::init_first_phase_kernel<<<1, 1, 0, s.stream>>>(a.header, a.row_count + rows,
                                                       a.header + 3 + s.batch);
  cuda::check_launch("init_first_phase_kernel");
  if (s.sem.data != nullptr) cuda::label_range(s.sem, a.header, s.stream);  // else centres only
  if (centers.nms_kernel > cuda::kDirectWindowMax) {
    cuda::find_peak_flags(inputs.ctr, centers.threshold, centers.nms_kernel, a.peak_flags,
                          s.stream);
  }
  cuda::count_peaks(inputs.ctr, centers.threshold, centers.nms_kernel, s.peak_flags, a.row_count,
                    s.stream);
  cuda::exclusive_sum(a.row_count, a.row_offset, rows + 1, a.scan, s.stream);
  cuda::peak_begin_kernel<<<cuda::grid_for(s.batch + 1, 256), 256, 0, s.stream>>>(
      a.row_offset, s.batch, s.height, a.header + 2);
  cuda::check_launch("peak_begin_kernel");
  // The wait for these counts (sync point 1) is the first reader's: State::wait_for_counts.
}

namespace {

// The value at `at` in host memory that holds copied bytes (the read-back words), read as bytes:
// the words are long long, the values int64_t, double or DeviceSegment.
template <typename T>
T copied(const T* at) {
  T value;
  std::memcpy(&value, at, sizeof(T));
  return value;
}

}  // namespace

CudaMerge::~CudaMerge() { release(); }

void CudaMerge::release() noexcept {
  if (state_) on_device(state_->in.device, [&] { state_.reset(); });
}

namespace {

// A fuse job serves label_range, instance_range and finish_fuse only.
void require_not_fuse(const CudaMerge::State& s, const char* method) {
  if (s.in.fuse) {
    throw ValueError(std::string("CudaMerge.") + method + ": the job was made for fuse");
  }
}

// A job made without labels or logits serves finish_centers only.
void require_labels(const CudaMerge::State& s, const char* method) {
  // (Empty inputs have no pointers, and need no labels.)
  if (!s.empty && s.in.sem.data == nullptr && s.in.logits.data == nullptr) {
    throw ValueError(std::string("CudaMerge.") + method +
                     ": the job has no sem (made for finish_centers)");
  }
}

}  // namespace

std::pair<int64_t, int64_t> CudaMerge::label_range() {
  if (!state_) throw ValueError("CudaMerge.label_range: the job was released");
  require_labels(*state_, "label_range");
  if (state_->empty) return {0, -1};
  state_->wait_for_counts();
  return {state_->lo, state_->hi};
}

namespace {

// What a second phase is sized for: from the counts (finish), or from the capacities of earlier
// calls (a speculative phase, every image sized alike).
struct PhaseSizes {
  int64_t classes = 0;                // C
  const int64_t* distinct = nullptr;  // [C] the batch's sorted class ids (compacted tables) or null
  std::vector<int64_t> kept;          // [B] bound of each image's kept centres
  int64_t center_slots = 0;           // over the batch (where every peak is kept: the peaks)
  bool every_peak_kept = true;        // the peaks are the centres; else the top-k selection,
  bool any_sorted = false;            // which sorts the images with [sort_begin, sort_end)
  std::vector<int> sort_begin, sort_end;
  // fuse: the caller's instance map (int32 [B, H, W] contiguous, ids 0..kept[b]), counted instead
  // of votes; no centres are written (kept[b] bounds the instances instead).
  const int32_t* given = nullptr;
};

// The centres' part of a second phase's sizes (finish, finish_centers): each image's bound of
// kept centres, and the images that need the top-k sort, from the counts.
PhaseSizes center_sizes(const CudaMerge::State& s) {
  const int64_t B = s.batch;
  const int64_t total_peaks = s.peak_begin.back();
  if (total_peaks > std::numeric_limits<int>::max() - 1) {  // cub's sort and scan sizes are int
    throw ValueError("find_centers: " + std::to_string(total_peaks) +
                     " peaks exceed the CUDA path's int32 sort size; use the CPU path");
  }
  PhaseSizes z;
  z.kept.resize(static_cast<size_t>(B));
  for (int64_t b = 0; b < B; ++b) {
    z.kept[b] = cuda::kept_bound(s.peak_begin[b + 1] - s.peak_begin[b], s.centers.top_k,
                                 s.centers.topk_mode);
  }
  z.any_sorted = cuda::sort_segments(s.peak_begin, s.centers.top_k, s.centers.topk_mode,
                                     z.sort_begin, z.sort_end);
  // No image sorted and top_k != 0 (or no peaks): the centres are the peaks, written directly.
  z.every_peak_kept = !z.any_sorted && (s.centers.top_k != 0 || total_peaks == 0);
  z.center_slots = total_peaks;
  return z;
}

// Class tables (z.classes, z.distinct): dense below ClassIndex::kDenseLabelLimit, else over the
// batch's distinct labels (sorted on the device into `scratch`; one more synchronisation, for
// their count), as on the CPU.
void set_classes(const CudaMerge::State& s, PhaseSizes& z, cuda::Scratch& scratch) {
  z.classes = s.hi + 1;
  if (s.hi < ClassIndex::kDenseLabelLimit) return;
  const int end_bit = cuda::bit_width(s.hi);  // bits of the largest label
  const cuda::DistinctScratch d = cuda::carve(scratch, s.stream, [&](cuda::Scratch& sc) {
    return cuda::take_distinct_scratch(sc, s.batch * s.height * s.width, end_bit);
  });
  cuda::distinct_labels(s.sem, end_bit, d, s.stream);
  int count = 0;
  check(cudaMemcpyAsync(&count, d.count, sizeof(int), cudaMemcpyDeviceToHost, s.stream),
        "cudaMemcpyAsync (class count)");
  check(cudaStreamSynchronize(s.stream), "cudaStreamSynchronize");
  z.classes = count;
  z.distinct = d.distinct;
}

// A queued second phase: its scratch (freed in stream order with this object) and what the
// read-back needs.
struct QueuedPhase {
  cuda::Scratch scratch;
  cuda::CenterList centers{};
  cuda::FuseLayout layout{};
  cuda::FuseBuffers buffers{};
  long long* readback = nullptr;  // Readback's words
  int64_t center_slots = 0, segment_slots = 0, readback_words = 0;
  std::vector<int64_t> seg_offset;
  int64_t max_instances = 0;
  bool speculable = false;  // sized as a speculative phase could be (see speculate())
};

// The arrays of the kept centres, and the top-k selection's input and scratch where it sorts.
struct CenterArrays {
  cuda::PeakList peaks;  // the selection's input (none where every peak is kept)
  cuda::CenterList centers;
  cuda::SelectScratch select;
};

CenterArrays take_center_arrays(cuda::Scratch& sc, const CudaMerge::State& s, const PhaseSizes& z) {
  const int64_t listed_peaks = z.every_peak_kept ? 0 : z.center_slots;
  const int64_t B = s.batch;
  CenterArrays t{};
  t.peaks.pixel = sc.take<int64_t>(listed_peaks, "peaks");
  t.peaks.score = sc.take_bytes(listed_peaks * dtype_size(s.in.ctr.dtype), "peak scores");
  t.peaks.image = sc.take<int32_t>(listed_peaks, "peaks");
  t.centers.pixel = sc.take<int64_t>(z.center_slots, "centres");
  t.centers.y = sc.take<float>(z.center_slots, "centres");
  t.centers.x = sc.take<float>(z.center_slots, "centres");
  t.centers.score = sc.take<double>(z.center_slots, "centres");
  t.centers.begin = sc.take<int64_t>(B, "centres");
  t.centers.count = sc.take<int64_t>(B, "centres");
  if (listed_peaks > 0) {
    t.select = cuda::take_select_scratch(sc, s.in.ctr.dtype, listed_peaks, B, z.any_sorted);
  }
  return t;
}

// The kept centres from the first phase's peak flags: every peak in row-major order, or the peaks
// listed and then selected (top-k). peak_begin_device, sort_begin, sort_end: in the uploaded
// tables. verdict: as in queue_second_phase.
void queue_centers(const CudaMerge::State& s, const PhaseSizes& z, const CenterArrays& a,
                   const int64_t* peak_begin_device, const int* sort_begin, const int* sort_end,
                   const long long* verdict) {
  if (z.every_peak_kept) {
    cuda::write_every_peak_as_center(s.in.ctr, s.peak_flags, s.row_offset, a.centers, verdict,
                                     s.stream);
  } else {
    cuda::write_peaks(s.in.ctr, s.peak_flags, s.row_offset, a.peaks, s.stream);
    cuda::select_centers(s.in.ctr.dtype, s.width, a.peaks, peak_begin_device, s.peak_begin,
                         s.centers.top_k, s.centers.topk_mode, sort_begin, sort_end, z.any_sorted,
                         a.select, a.centers, s.stream);
  }
}

// Many centres (more than kBruteForceCentersMax in an image): each image's vote grid, sized from
// its bound of K, and where its cells, summed-area table and quadtree go (see cuda::ManyCenters).
struct VoteGridPlan {
  bool many = false;
  std::vector<VoteGrid> grids;
  std::vector<int64_t> cell_offset, sums_offset, pyramid_offset;
  int64_t cells = 0, sums = 0, pyramid_nodes = 0, max_rows = 0, max_cols = 0;
  size_t at_grids = 0, at_cells = 0, at_sums = 0, at_pyramid = 0;  // in the uploaded tables

  VoteGridPlan(int64_t height, int64_t width, const std::vector<int64_t>& kept,
               int64_t max_instances)
      : many(max_instances > cuda::kBruteForceCentersMax) {
    for (size_t b = 0; many && b < kept.size(); ++b) {
      const VoteGrid& g =
          grids.emplace_back(make_vote_grid(height, width, std::max<int64_t>(kept[b], 1)));
      cell_offset.push_back(cells);
      cells += g.rows * g.cols;
      sums_offset.push_back(sums);
      sums += (g.rows + 1) * (g.cols + 1);
      pyramid_offset.push_back(pyramid_nodes);
      if (max_instances > kFarBruteForceMax) pyramid_nodes += CellPyramid{g}.size();
      max_rows = std::max(max_rows, g.rows);
      max_cols = std::max(max_cols, g.cols);
    }
  }
  void add_to(cuda::UploadPack& pack) {
    at_grids = pack.add(grids);
    at_cells = pack.add(cell_offset);
    at_sums = pack.add(sums_offset);
    at_pyramid = pack.add(pyramid_offset);
  }
  // The device arrays (center_slots: the sum of the K_b bounds; instance_slots: that plus B).
  cuda::ManyCenters take(cuda::Scratch& sc, int64_t center_slots, int64_t instance_slots,
                         int64_t classes) const {
    return cuda::take_many_centers(sc, cells, sums, pyramid_nodes, center_slots, instance_slots,
                                   static_cast<int64_t>(grids.size()), classes);
  }
  // `taken` with the host's tables, once uploaded to `tables`.
  cuda::ManyCenters placed(cuda::ManyCenters taken, void* tables) const {
    taken.grid = cuda::UploadPack::at<VoteGrid>(tables, at_grids);
    taken.cell_offset = cuda::UploadPack::at<int64_t>(tables, at_cells);
    taken.sums_offset = cuda::UploadPack::at<int64_t>(tables, at_sums);
    taken.pyramid_offset = cuda::UploadPack::at<int64_t>(tables, at_pyramid);
    taken.max_rows = max_rows;
    taken.max_cols = max_cols;
    return taken;
  }
};

// Queues the second phase into `out` (int32 / int64, checked by the caller): the tables' upload,
// then the centres, the vote, the segments and the write. verdict: a speculative phase's (its
// kernels return at once where the plan failed), else nullptr; a speculative phase's tables go
// up from page-locked memory (s.upload_staging), and `after_upload` queues what must come between
// the upload and its kernels. Throws before queuing anything where the sizes exceed a limit of
// this path.
QueuedPhase queue_second_phase(CudaMerge::State& s, const PhaseSizes& z, const StridedView& out,
                               bool with_segments, const long long* verdict,
                               const std::function<void()>& after_upload = {}) {
  cudaStream_t stream = s.stream;
  const int64_t B = s.batch, H = s.height, W = s.width, hw = H * W;
  const int64_t C = z.classes;
  const std::vector<int64_t>& kept = z.kept;
  QueuedPhase q;

  // Table layout per image from the centre bounds (the exact counts stay on the device).
  std::vector<int64_t> hist_offset(B), inst_offset(B), seg_offset(B + 1), seg_capacity(B);
  int64_t max_bins = 0;
  double pair_bins = 0;
  for (int64_t b = 0; b < B; ++b) {
    const double bins = static_cast<double>(kept[b] + 1) * static_cast<double>(C);
    pair_bins += bins;
    max_bins = std::max(max_bins, static_cast<int64_t>(std::min(bins, 9.0e18)));
  }
  // Instance x class pairs in the histogram, or by a sort (see cuda::PairSort).
  const bool pair_histogram = cuda::pairs_in_histogram(pair_bins, max_bins, B * hw);
  int64_t hist_total = 0, inst_total = 0, max_instances = 0, max_segments = 0;
  for (int64_t b = 0; b < B; ++b) {
    const int64_t k = kept[b];
    const int64_t rows = pair_histogram ? k + 1 : 1;
    if (static_cast<double>(rows) * static_cast<double>(C) * 8.0 > 9.0e18) {
      throw ValueError("CUDA path: " + std::to_string(k) + " centres x " + std::to_string(C) +
                       " classes need an instance x class table beyond int64; use the CPU path "
                       "(it needs no such table)");
    }
    hist_offset[b] = hist_total;
    hist_total += rows * C;
    inst_offset[b] = inst_total;
    inst_total += k + 1;
    seg_offset[b] = b == 0 ? 0 : seg_offset[b - 1] + seg_capacity[b - 1];
    seg_capacity[b] = k + C;
    max_instances = std::max(max_instances, k);
    max_segments = std::max(max_segments, k + C);
  }
  const int64_t shared_bins = pair_histogram ? max_bins : C;
  seg_offset[B] = seg_offset[B - 1] + seg_capacity[B - 1];
  VoteGridPlan grids(H, W, kept, max_instances);
  const bool many_centers = grids.many;
  const bool with_scores = with_segments && s.in.logits.data != nullptr;
  const int64_t chunk_blocks = cuda::score_chunk_blocks(H, seg_offset[B]);
  std::vector<int64_t> partial_offset(static_cast<size_t>(B));
  int64_t partial_total = 0;
  for (int64_t b = 0; b < B; ++b) {
    partial_offset[b] = partial_total;
    partial_total += chunk_blocks * seg_capacity[b];
  }
  cuda::UploadPack pack;
  const size_t at_hist = pack.add(hist_offset), at_inst = pack.add(inst_offset);
  const size_t at_seg = pack.add(seg_offset), at_peaks = pack.add(s.peak_begin);
  const size_t at_sort_begin = pack.add(z.sort_begin), at_sort_end = pack.add(z.sort_end);
  const size_t at_partial = pack.add(partial_offset);
  grids.add_to(pack);
  // The error flags start at "none" with the tables' copy: a memset would be one more host call
  // before the vote's launch, while the device idles.
  const size_t at_errors = pack.add(std::vector<unsigned long long>(B, ULLONG_MAX));
  const cuda::ThingUpload thing_upload(s.params.thing_ids, pack);
  // fuse: each image's instances are counted, not centres written (their count uploaded; their
  // begin is s.peak_begin's, which finish_fuse sets to the running sum of the counts).
  const size_t at_given_count = pack.add(z.given ? kept : std::vector<int64_t>{});

  // Every array of this phase, from one allocation.
  // postprocess reads back every centre and segment slot (at most sum of K_b, and K_b + C per
  // image), merge only the summary.
  const int64_t center_slots = with_segments ? inst_total - B : 0;
  const int64_t segment_slots = with_segments ? seg_offset[B] : 0;
  const int64_t readback_words = cuda::Readback::words(B, center_slots, segment_slots);
  struct Arrays {
    void* tables;
    int64_t* class_labels;  // compacted class tables only
    CenterArrays kept;
    cuda::FuseBuffers buffers;
    double* partial;      // score sums with logits: a chunk's blocks
    double* score_sums;   // and the running sums
    long long* readback;  // Readback's words
    cuda::ManyCenters many;
    cuda::PairSort pairs;
  };
  const Arrays a = cuda::carve(q.scratch, stream, [&](cuda::Scratch& sc) {
    Arrays t{};
    t.tables = sc.take_bytes(pack.bytes(), "tables");
    t.class_labels = z.distinct ? sc.take<int64_t>(C, "class ids") : nullptr;
    t.kept = take_center_arrays(sc, s, z);
    cuda::FuseBuffers& f = t.buffers;
    // The histogram, then the vote's chunk cursors (B), zeroed together.
    f.hist = sc.take<unsigned long long>(hist_total + B, "the instance x class histogram");
    f.vote_cursor = f.hist + hist_total;
    // int32 output: instance ids first, panoptic ids written over them.
    // fuse: the caller's map, which the vote only reads (kGivenInstance writes nothing there).
    f.instance = z.given                      ? const_cast<int32_t*>(z.given)
                 : out.dtype == DType::kInt32 ? static_cast<int32_t*>(out.data)
                                              : sc.take<int32_t>(B * hw, "the instance map");
    f.area = sc.take<int64_t>(inst_total, "instance tables");
    f.class_of = sc.take<int64_t>(inst_total, "instance tables");
    f.instance_label = sc.take<int64_t>(inst_total, "instance tables");
    f.slot_of_instance = sc.take<int64_t>(inst_total, "instance tables");
    f.class_label = sc.take<int64_t>(B * C, "class tables");
    f.slot_of_class = sc.take<int64_t>(B * C, "class tables");
    f.segments = sc.take<cuda::DeviceSegment>(seg_offset[B], "segments");
    f.num_segments = sc.take<int64_t>(B, "segments");
    f.error_instance = nullptr;  // in the tables (at_errors), set below
    f.plan_verdict = verdict;
    t.partial = with_scores ? sc.take<double>(partial_total, "score sums") : nullptr;
    t.score_sums = with_scores ? sc.take<double>(seg_offset[B], "score sums") : nullptr;
    t.readback = sc.take<long long>(readback_words, "read-back");
    if (many_centers) {
      t.many = grids.take(sc, inst_total - B, inst_total, C);
    }
    if (!pair_histogram) t.pairs = cuda::take_pair_sort(sc, B * hw, inst_total, C);
    return t;
  });
  // Everything the host decides goes to the device in one copy, before the first kernel of this
  // phase. From pageable memory the copy may wait for the stream, which is idle right after sync
  // 1; a speculative phase's is queued while the first phase runs, so it goes from page-locked
  // memory, before the header's copy (waiting for that copy frees the staging: see State).
  if (verdict) {
    s.upload_staging.emplace((pack.bytes() + 7) / 8);
    pack.upload(a.tables, stream, s.upload_staging->data());
  } else {
    pack.upload(a.tables, stream);
  }
  if (after_upload) after_upload();
  if (z.distinct) {
    check(cudaMemcpyAsync(a.class_labels, z.distinct, C * sizeof(int64_t), cudaMemcpyDeviceToDevice,
                          stream),
          "cudaMemcpyAsync (class ids)");
  }
  const int64_t* peak_begin_device = cuda::UploadPack::at<int64_t>(a.tables, at_peaks);
  const ThingClasses things = thing_upload.view(a.tables);
  const cuda::FuseLayout layout{C,
                                a.class_labels,
                                cuda::UploadPack::at<int64_t>(a.tables, at_hist),
                                cuda::UploadPack::at<int64_t>(a.tables, at_inst),
                                cuda::UploadPack::at<int64_t>(a.tables, at_seg),
                                max_instances,
                                max_segments};
  cuda::FuseBuffers buffers = a.buffers;
  buffers.error_instance = cuda::UploadPack::at<unsigned long long>(a.tables, at_errors);
  const cuda::ManyCenters many = grids.placed(a.many, a.tables);
  const cuda::ManyCenters* many_or_null = many_centers ? &many : nullptr;
  const cuda::PairSort* pairs_or_null = pair_histogram ? nullptr : &a.pairs;

  cuda::CenterList centers = a.kept.centers;
  if (z.given) {
    // Of the centres, the instances' count and the scores (the segments read them: 0, unused)
    // are read.
    centers.begin = const_cast<int64_t*>(peak_begin_device);
    centers.count = cuda::UploadPack::at<int64_t>(a.tables, at_given_count);
    check(cudaMemsetAsync(centers.score, 0, static_cast<size_t>(z.center_slots) * sizeof(double),
                          stream),
          "cudaMemsetAsync");
  } else {
    queue_centers(s, z, a.kept, peak_begin_device,
                  cuda::UploadPack::at<int>(a.tables, at_sort_begin),
                  cuda::UploadPack::at<int>(a.tables, at_sort_end), verdict);
  }

  // The histogram and the vote's chunk cursors are one piece, zeroed at once.
  check(cudaMemsetAsync(buffers.hist, 0,
                        static_cast<size_t>(hist_total + B) * sizeof(unsigned long long), stream),
        "cudaMemsetAsync");
  cuda::vote_and_count(s.sem, s.in.mask, s.in.off, things, centers, layout,
                       shared_bins <= cuda::kSharedBinLimit ? shared_bins : 0, many_or_null,
                       pairs_or_null, buffers, stream, z.given);
  cuda::resolve_segments(B, things, s.params, centers, layout, many_or_null, pairs_or_null, buffers,
                         stream);
  if (with_scores) {
    cuda::score_with_logits(s.sem, s.in.logits, layout, buffers, chunk_blocks,
                            cuda::UploadPack::at<int64_t>(a.tables, at_partial), partial_total,
                            a.partial, a.score_sums, stream);
  }
  cuda::write_panoptic(s.sem, layout, buffers, out, stream);

  q.centers = centers;
  q.layout = layout;
  q.buffers = buffers;
  q.readback = a.readback;
  q.center_slots = center_slots;
  q.segment_slots = segment_slots;
  q.readback_words = readback_words;
  q.seg_offset = std::move(seg_offset);
  q.max_instances = max_instances;
  q.speculable = z.every_peak_kept && !z.distinct && !many_centers && pair_histogram && !z.given;
  return q;
}

// Image b's kept centres (y, x, score) from the read-back's words on the host.
ImageCenters read_centers(const cuda::Readback& host, int64_t b, int64_t width) {
  const long long* h = host.summary + 5 * b;
  ImageCenters c;
  for (long long i = h[1]; i < h[1] + h[0]; ++i) {
    const int64_t pixel = copied(host.pixel + i);
    c.y.push_back(pixel / width);
    c.x.push_back(pixel % width);
    c.score.push_back(copied(host.score + i));
  }
  return c;
}

// The end of a call: merge returns with the work queued where no error can be found (an image
// keeping fewer centres than label_divisor cannot number label_divisor instances of a class) and
// the caller does not ask to wait: stream order puts the work before the caller's next work on
// the stream (which reads the output) and before the scratch frees, as any CUDA library call.
// Else sync point 2: the per-image summary, and for postprocess the centres and segments, in one
// copy.
std::vector<ImageResult> read_back(const CudaMerge::State& s, const QueuedPhase& q,
                                   bool with_segments, bool wait) {
  const int64_t B = s.batch, W = s.width;
  std::vector<ImageResult> results(static_cast<size_t>(B));
  if (!with_segments && !wait && q.max_instances < s.params.label_divisor) return results;
  const cuda::Readback device_readback =
      cuda::Readback::at(q.readback, B, q.center_slots, q.segment_slots);
  cuda::readback_kernel<<<cuda::grid_for(std::max({B, q.center_slots, q.segment_slots}), 256), 256,
                          0, s.stream>>>(B, q.centers, q.layout, q.buffers, device_readback);
  cuda::check_launch("readback_kernel");
  const cuda::HostTransferBuffer words(q.readback_words);
  check(cudaMemcpyAsync(words.data(), q.readback, q.readback_words * sizeof(long long),
                        cudaMemcpyDeviceToHost, s.stream),
        "cudaMemcpyAsync (read-back)");
  check(cudaStreamSynchronize(s.stream), "cudaStreamSynchronize");
  const cuda::Readback host = cuda::Readback::at(words.data(), B, q.center_slots, q.segment_slots);
  for (int64_t b = 0; b < B; ++b) {
    const long long* h = host.summary + 5 * b;
    if (h[3] >= 0) {  // the first instance (in centre order) whose number reached label_divisor
      throw ValueError("label_divisor: class " + std::to_string(h[4]) + " has " +
                       std::to_string(s.params.label_divisor) +
                       " or more instances, which does not fit label_divisor=" +
                       std::to_string(s.params.label_divisor) + "; use a larger label_divisor");
    }
  }
  if (!with_segments) return results;
  for (int64_t b = 0; b < B; ++b) {
    const long long* h = host.summary + 5 * b;
    ImageResult& r = results[b];
    r.centers = read_centers(host, b, W);
    for (long long i = 0; i < h[2]; ++i) {
      const cuda::DeviceSegment d = copied(host.segments + q.seg_offset[b] + i);
      r.segments.push_back(Segment{d.id, d.category_id, d.isthing != 0, d.area,
                                   reported_score(d.score), d.instance});
    }
  }
  return results;
}

cuda::CapacityRegistry::Key capacity_key(const CudaMerge::State& s) {
  return {s.in.device, s.height, s.width};
}

// A speculative second phase (cuda::speculation) into `out` (whose ids hold class ids up to
// max_label): sized by the capacities earlier calls on images of this size needed, checked
// against the first phase's counts on the device (plan_check_kernel), and queued before the
// header's copy is waited for, so that the device runs on from the first phase into the vote
// while the host waits. Where the plan held, the call's results (finish's); else nothing: its
// kernels returned at once, and the caller goes on as without it (the wait is done: no second
// synchronisation).
std::optional<std::vector<ImageResult>> speculate(CudaMerge::State& s, const StridedView& out,
                                                  int64_t max_label, bool with_segments,
                                                  bool wait) {
  if (out.dtype != DType::kInt32 && out.dtype != DType::kInt64) return {};  // finish raises
  const int64_t top_k = s.centers.top_k;
  if (top_k == 0) return {};  // no centres: the peaks are not the centres
  const std::optional<cuda::PhaseCapacity> capacity = cuda::capacities().find(capacity_key(s));
  if (!capacity) return {};
  // At most what an image keeps without the top-k sort.
  const int64_t centers = cuda::kept_bound(capacity->centers, top_k, s.centers.topk_mode);
  const int64_t classes = capacity->classes;
  // Classes learnt beyond what the output holds (ids that needed int64 where merge allocates
  // int32 first): the plan would likely fail, and the call come back for an int64 output anyway.
  if (classes - 1 > max_label) return {};
  // A merge that returns with its work queued reads nothing back: no instance-number error may
  // be possible (as in finish, where the bounds are the counts' and smaller than these).
  if (!with_segments && !wait && centers >= s.params.label_divisor) return {};
  // The vote that calls of these sizes get: brute force, counters in shared memory, dense class
  // tables.
  if (centers > cuda::kBruteForceCentersMax || (centers + 1) * classes > cuda::kSharedBinLimit ||
      classes > ClassIndex::kDenseLabelLimit) {
    return {};
  }
  const cuda::DeviceGuard guard(s.in.device);
  const long long* verdict = s.header + 3 + s.batch;
  PhaseSizes z;
  z.classes = classes;
  z.kept.assign(static_cast<size_t>(s.batch), centers);
  z.center_slots = s.batch * centers;
  // On the stream: the first phase, the tables' upload, the plan's check, the header's copy (the
  // host waits for this alone), then the speculative kernels.
  const QueuedPhase queued = queue_second_phase(s, z, out, with_segments, verdict, [&] {
    cuda::plan_check_kernel<<<1, 256, 0, s.stream>>>(s.header, s.batch, max_label, classes, centers,
                                                     top_k, s.centers.topk_mode);
    cuda::check_launch("plan_check_kernel");
    s.queue_header_copy();
  });
  s.wait_for_counts();
  if (!s.plan_held) return {};  // `queued` frees its scratch after its (skipped) kernels
  s.finished = true;
  s.release_first_phase();
  return read_back(s, queued, with_segments, wait);
}

// The first phase's scratch goes back to the pool when a finish ends, errors included (a Python
// traceback may keep the job alive for a long time).
struct ReleaseFirstPhase {
  CudaMerge::State& s;
  ~ReleaseFirstPhase() { s.release_first_phase(); }
};

// finish_centers' second phase: the kept centres alone, and their read-back's words.
QueuedPhase queue_center_phase(CudaMerge::State& s, const PhaseSizes& z) {
  QueuedPhase q;
  for (int64_t kept : z.kept) {
    q.center_slots += kept;
    q.max_instances = std::max(q.max_instances, kept);
  }
  q.readback_words = cuda::Readback::words(s.batch, q.center_slots, 0);
  cuda::UploadPack pack;
  const size_t at_peaks = pack.add(s.peak_begin);
  const size_t at_sort_begin = pack.add(z.sort_begin), at_sort_end = pack.add(z.sort_end);
  struct Arrays {
    void* tables;
    CenterArrays kept;
    long long* readback;
  };
  const Arrays a = cuda::carve(q.scratch, s.stream, [&](cuda::Scratch& sc) {
    Arrays t{};
    t.tables = sc.take_bytes(pack.bytes(), "tables");
    t.kept = take_center_arrays(sc, s, z);
    t.readback = sc.take<long long>(q.readback_words, "read-back");
    return t;
  });
  pack.upload(a.tables, s.stream);
  queue_centers(s, z, a.kept, cuda::UploadPack::at<int64_t>(a.tables, at_peaks),
                cuda::UploadPack::at<int>(a.tables, at_sort_begin),
                cuda::UploadPack::at<int>(a.tables, at_sort_end), nullptr);
  q.centers = a.kept.centers;
  q.readback = a.readback;
  return q;  // no segments: read_back finds none (FuseBuffers' null num_segments)
}

}  // namespace

std::vector<ImageCenters> CudaMerge::finish_centers() {
  const IeeeFloatModes float_modes;  // host-side conversions (threshold) as the CPU's
  if (!state_) throw ValueError("CudaMerge.finish_centers: the job was released");
  State& s = *state_;
  if (s.finished) throw ValueError("CudaMerge.finish_centers: already called");
  require_not_fuse(s, "finish_centers");
  s.finished = true;
  const ReleaseFirstPhase release_scratch{s};
  std::vector<ImageCenters> centers(static_cast<size_t>(s.batch));
  if (s.empty) return centers;
  s.wait_for_counts();
  cuda::DeviceGuard guard(s.in.device);
  const QueuedPhase queued = queue_center_phase(s, center_sizes(s));
  std::vector<ImageResult> results = read_back(s, queued, /*with_segments=*/true, /*wait=*/true);
  for (size_t b = 0; b < results.size(); ++b) centers[b] = std::move(results[b].centers);
  return centers;
}

std::optional<std::vector<ImageResult>> CudaMerge::finish_if_fits(const StridedView& out,
                                                                  int64_t max_label,
                                                                  bool with_segments, bool wait) {
  const IeeeFloatModes float_modes;  // host-side conversions (threshold) as the CPU's
  if (!state_) throw ValueError("CudaMerge.finish_if_fits: the job was released");
  State& s = *state_;
  if (s.finished) throw ValueError("CudaMerge.finish_if_fits: already called");
  require_not_fuse(s, "finish_if_fits");
  require_labels(s, "finish_if_fits");
  // After calls on images of this size: the second phase on their capacities, before the counts.
  if (!s.empty && !s.counted && cuda::speculation.load(std::memory_order_relaxed)) {
    std::optional<std::vector<ImageResult>> results =
        speculate(s, out, max_label, with_segments, wait);
    if (results) return results;
  }
  const auto [lo, hi] = label_range();
  if (!s.empty && (lo < 0 || hi > max_label)) return std::nullopt;
  return finish(out, with_segments, wait);
}

std::vector<ImageResult> CudaMerge::finish(const StridedView& out, bool with_segments, bool wait) {
  const IeeeFloatModes float_modes;  // host-side conversions (threshold) as the CPU's
  if (!state_) throw ValueError("CudaMerge.finish: the job was released");
  State& s = *state_;
  if (s.finished) throw ValueError("CudaMerge.finish: already called");
  require_not_fuse(s, "finish");
  require_labels(s, "finish");
  s.finished = true;
  const ReleaseFirstPhase release_scratch{s};
  if (s.empty) return std::vector<ImageResult>(static_cast<size_t>(s.batch));
  s.wait_for_counts();
  if (s.lo < 0) {
    throw ValueError("sem: class ids must be >= 0, got a minimum of " + std::to_string(s.lo));
  }
  if (out.dtype != DType::kInt32 && out.dtype != DType::kInt64) {
    throw ValueError(std::string("out: expected int32 or int64, got ") + dtype_name(out.dtype));
  }
  cuda::DeviceGuard guard(s.in.device);
  PhaseSizes z = center_sizes(s);
  cuda::Scratch distinct_scratch;
  set_classes(s, z, distinct_scratch);
  const QueuedPhase queued = queue_second_phase(s, z, out, with_segments, nullptr);
  distinct_scratch = cuda::Scratch();  // freed in stream order, after the copy of the class ids
  // What the next calls on images of this size speculate with, if anything (top_k 0 keeps no
  // centre: never).
  if (cuda::speculation.load(std::memory_order_relaxed)) {
    if (queued.speculable && s.centers.top_k != 0) {
      cuda::capacities().remember(capacity_key(s), queued.max_instances, z.classes);
    } else {
      cuda::capacities().forget(capacity_key(s));
    }
  }
  return read_back(s, queued, with_segments, wait);
}

std::pair<int64_t, std::vector<int64_t>> CudaMerge::instance_range() {
  if (!state_) throw ValueError("CudaMerge.instance_range: the job was released");
  State& s = *state_;
  if (!s.in.fuse) throw ValueError("CudaMerge.instance_range: the job was not made for fuse");
  if (s.empty) return {0, std::vector<int64_t>(static_cast<size_t>(s.batch), 0)};
  s.wait_for_counts();
  return {s.instance_lo, s.instance_hi};
}

void CudaMerge::finish_fuse(const StridedView& out, const StridedView& instance,
                            const std::vector<int64_t>& counts, bool wait) {
  const IeeeFloatModes float_modes;
  if (!state_) throw ValueError("CudaMerge.finish_fuse: the job was released");
  State& s = *state_;
  if (s.finished) throw ValueError("CudaMerge.finish_fuse: already called");
  if (!s.in.fuse) throw ValueError("CudaMerge.finish_fuse: the job was not made for fuse");
  s.finished = true;
  const ReleaseFirstPhase release_scratch{s};
  if (s.empty) return;
  s.wait_for_counts();
  if (s.lo < 0) {
    throw ValueError("sem: class ids must be >= 0, got a minimum of " + std::to_string(s.lo));
  }
  if (out.dtype != DType::kInt32 && out.dtype != DType::kInt64) {
    throw ValueError(std::string("out: expected int32 or int64, got ") + dtype_name(out.dtype));
  }
  const int64_t hw = s.height * s.width;
  if (instance.dtype != DType::kInt32 || instance.batch() != s.batch ||
      instance.height() != s.height || instance.width() != s.width || instance.strides[0] != hw ||
      instance.strides[2] != s.width || instance.strides[3] != 1) {
    throw ValueError("instance: expected an int32 [B, 1, H, W] contiguous map like the job's");
  }
  if (static_cast<int64_t>(counts.size()) != s.batch) {
    throw ValueError("counts: expected one per image, got " + std::to_string(counts.size()));
  }
  cuda::DeviceGuard guard(s.in.device);
  PhaseSizes z;
  z.kept = counts;
  z.given = static_cast<const int32_t*>(instance.data);
  s.peak_begin.assign(1, 0);
  for (int64_t k : counts) {
    z.center_slots += k;
    s.peak_begin.push_back(z.center_slots);
  }
  cuda::Scratch distinct_scratch;
  set_classes(s, z, distinct_scratch);
  const QueuedPhase queued = queue_second_phase(s, z, out, /*with_segments=*/false, nullptr);
  distinct_scratch = cuda::Scratch();
  read_back(s, queued, /*with_segments=*/false, wait);
}

void cuda_group_pixels(const CudaGroupInputs& in, const std::vector<int64_t>& thing_ids,
                       const std::vector<std::vector<int64_t>>& centers, const StridedView& out,
                       bool wait) {
  const IeeeFloatModes float_modes;  // host-side conversions (the centres' floats) as the CPU's
  const int64_t B = in.off.batch(), H = in.off.height(), W = in.off.width(), hw = H * W;
  if (static_cast<int64_t>(centers.size()) != B) {
    throw ValueError("centers: expected one list per image (" + std::to_string(B) + "), got " +
                     std::to_string(centers.size()));
  }
  if (B * hw == 0) return;
  check_batch_shape(B, H);
  if (out.dtype != DType::kInt32) {
    throw ValueError(std::string("out: expected int32, got ") + dtype_name(out.dtype));
  }
  const cudaStream_t stream = cuda::stream_of(in.stream);
  const cuda::DeviceGuard guard(in.device);
  cuda::require_kernel_image(in.device);
  cuda::require_not_capturing(stream);

  // The centres as the vote reads them (CenterList), each image's instance and histogram rows
  // (1 + K_b: its votes counted in one class), and the vote grids for many centres.
  std::vector<int64_t> pixel, begin(B), count(B), inst_offset(B);
  std::vector<float> ys, xs;
  int64_t instance_slots = 0, max_instances = 0;
  for (int64_t b = 0; b < B; ++b) {
    const std::vector<int64_t>& yx = centers[b];
    begin[b] = static_cast<int64_t>(pixel.size());
    count[b] = static_cast<int64_t>(yx.size() / 2);
    for (size_t k = 0; k + 1 < yx.size(); k += 2) {
      pixel.push_back(yx[k] * W + yx[k + 1]);
      ys.push_back(static_cast<float>(yx[k]));  // as the peaks' (center_nms.cu)
      xs.push_back(static_cast<float>(yx[k + 1]));
    }
    inst_offset[b] = instance_slots;
    instance_slots += count[b] + 1;
    max_instances = std::max(max_instances, count[b]);
  }
  VoteGridPlan grids(H, W, count, max_instances);
  // Signed labels without a mask: their minimum is read back (negative ids are an error).
  const bool check_labels =
      in.mask.data == nullptr && in.sem.data != nullptr && in.sem.dtype != DType::kUInt8;
  cuda::UploadPack pack;
  const size_t at_pixel = pack.add(pixel), at_y = pack.add(ys), at_x = pack.add(xs);
  const size_t at_begin = pack.add(begin), at_count = pack.add(count);
  const size_t at_inst = pack.add(inst_offset);
  const size_t at_range = pack.add(std::vector<long long>{LLONG_MAX, LLONG_MIN});
  // The one label every pixel reads (a stride-0 view): one class, the instances' rows alone.
  const size_t at_no_label = pack.add(std::vector<uint8_t>{0});
  grids.add_to(pack);
  const cuda::ThingUpload thing_upload(thing_ids, pack);
  const bool argmax = in.logits.data != nullptr;
  const bool flag_things = in.mask.data == nullptr;  // else the mask says which pixels vote
  struct Arrays {
    void* tables;
    int32_t* labels;           // argmax of logits
    uint8_t* things;           // the thing flags, read as the vote's mask
    unsigned long long* hist;  // [instance_slots + B]: the votes per instance, the chunk cursors
    cuda::ManyCenters many;
  };
  cuda::Scratch scratch;
  const Arrays a = cuda::carve(scratch, stream, [&](cuda::Scratch& sc) {
    Arrays t{};
    t.tables = sc.take_bytes(pack.bytes(), "tables");
    if (argmax) t.labels = sc.take<int32_t>(B * hw, "argmax labels");
    if (flag_things) t.things = sc.take<uint8_t>(B * hw, "thing pixels");
    t.hist = sc.take<unsigned long long>(instance_slots + B, "vote counts");
    if (grids.many) t.many = grids.take(sc, instance_slots - B, instance_slots, 1);
    return t;
  });
  pack.upload(a.tables, stream);
  StridedView mask = in.mask;
  if (flag_things) {
    const StridedView sem = argmax ? argmax_labels(in.logits, a.labels, stream) : in.sem;
    long long* range = cuda::UploadPack::at<long long>(a.tables, at_range);
    if (check_labels) cuda::label_range(sem, range, stream);
    cuda::thing_flags(sem, thing_upload.view(a.tables), a.things, stream);
    mask = planes_of(a.things, DType::kUInt8, B, H, W);
  }
  check(cudaMemsetAsync(a.hist, 0, static_cast<size_t>(instance_slots + B) * sizeof(a.hist[0]),
                        stream),
        "cudaMemsetAsync");
  const StridedView no_label{cuda::UploadPack::at<uint8_t>(a.tables, at_no_label),
                             DType::kUInt8,
                             {B, 1, H, W},
                             {0, 0, 0, 0}};
  const cuda::CenterList center_list{cuda::UploadPack::at<int64_t>(a.tables, at_pixel),
                                     cuda::UploadPack::at<float>(a.tables, at_y),
                                     cuda::UploadPack::at<float>(a.tables, at_x),
                                     nullptr,  // no scores: the vote does not read them
                                     cuda::UploadPack::at<int64_t>(a.tables, at_begin),
                                     cuda::UploadPack::at<int64_t>(a.tables, at_count)};
  const int64_t* inst_device = cuda::UploadPack::at<int64_t>(a.tables, at_inst);
  // One class: the histogram rows are the instances' (K_b + 1 per image, at inst_offset).
  const cuda::FuseLayout layout{1, nullptr, inst_device, inst_device, nullptr, max_instances, 0};
  cuda::FuseBuffers buffers{};
  buffers.hist = a.hist;
  buffers.vote_cursor = a.hist + instance_slots;
  buffers.instance = static_cast<int32_t*>(out.data);
  const cuda::ManyCenters many = grids.placed(a.many, a.tables);
  const int64_t bins = max_instances + 1;
  cuda::vote_and_count(no_label, mask, in.off, thing_upload.view(a.tables), center_list, layout,
                       bins <= cuda::kSharedBinLimit ? bins : 0, grids.many ? &many : nullptr,
                       nullptr, buffers, stream);
  if (!check_labels && !wait) return;  // the scratch is freed in stream order
  long long lowest = 0;
  check(cudaMemcpyAsync(&lowest, cuda::UploadPack::at<long long>(a.tables, at_range),
                        sizeof(long long), cudaMemcpyDeviceToHost, stream),
        "cudaMemcpyAsync (label range)");
  check(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
  if (check_labels && lowest < 0) {
    throw ValueError("sem: class ids must be >= 0, got a minimum of " + std::to_string(lowest));
  }
}

}  // namespace pdl_post
