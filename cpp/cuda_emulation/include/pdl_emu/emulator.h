// A host emulator of the CUDA execution model, so that the unmodified kernels of cpp/cuda run and
// are compared with the CPU path on machines without a GPU (tests only, never shipped).
//
// translate.py turns each .cu file into C++: `kernel<<<grid, block, shared, stream>>>(args)`
// becomes `pdl_emu::launch(kernel, "kernel", grid, block, shared, stream)(args)` and
// `extern __shared__ T name[]` a pointer to the launch's dynamic shared memory. A launch runs the
// blocks one after another; the threads of a block are fibres switched only at __syncthreads and
// warp intrinsics, in an order shuffled by a seed, so code that depends on an unsynchronised
// order of threads or blocks gives different answers under different seeds.
//
// What it checks beyond the answer: barriers reached by only part of a block or at different
// call sites, warp intrinsics called by a lane outside their mask or with differing masks,
// lanes that exit while the rest of their warp waits (deadlocks), cub temp storage reused without
// a __syncthreads in between, launch configurations CUDA refuses, any access past the end of a
// device allocation or of dynamic shared memory (each ends at an inaccessible page; the fault
// ends the launch with a message), writes just before the start (guard bytes), frees of unknown
// pointers, leaks (live_allocations). Device allocations and dynamic shared memory start filled
// with a poison pattern, as do static shared variables at every block's start, so reads of
// unwritten memory change the answer. It also counts runtime
// calls (take_counters). What it cannot see: races between blocks (they never overlap), races
// between barriers that every schedule resolves alike, the memory model, and speed.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <map>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

struct uint3 {
  unsigned int x, y, z;
};

struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1)
      : x(vx), y(vy), z(vz) {}
};

struct CUstream_st;
typedef CUstream_st* cudaStream_t;

namespace pdl_emu {

// The calling fiber's coordinates (valid inside a kernel only).
const uint3& thread_idx();
const uint3& block_idx();
const dim3& block_dim();
const dim3& grid_dim();
unsigned linear_thread();
void* dynamic_shared();
// A static __shared__ variable (a function static here): poisoned now if new, and at the start
// of every later block.
void shared_variable(void* address, size_t bytes);

// __syncthreads(): every thread of the block at the same call site. `on_complete` runs once, in
// the last thread to arrive, before any thread continues (the cub shims compute there).
// Returns the OR of `predicate` over the block.
int sync_block(int predicate, const char* site, void (*on_complete)(void*) = nullptr,
               void* context = nullptr);
// Number of __syncthreads completed by the calling block so far.
uint64_t barrier_epoch();
// Every lane of `mask` deposits `value`; returns the 32 deposited values (lanes outside the mask
// hold garbage).
const uint64_t* warp_exchange(unsigned mask, uint64_t value, const char* site);
// Stops the calling kernel with a violation of CUDA's rules.
[[noreturn]] void fail(const std::string& message);

// Runs `body` once per thread of every block; returns a cudaError_t value.
int launch_kernel(const char* name, const void* kernel, dim3 grid, dim3 block, size_t shared_bytes,
                  cudaStream_t stream, const std::function<void()>& body);

template <typename... P>
struct Launch {
  void (*kernel)(P...);
  const char* name;
  dim3 grid, block;
  size_t shared_bytes;
  cudaStream_t stream;

  template <typename... A>
  void operator()(A&&... args) const {
    // The arguments are converted to the parameter types once, as a launch does, and every
    // thread gets its own copies (kernel parameters are per-thread values).
    const std::tuple<std::decay_t<P>...> params(std::forward<A>(args)...);
    auto* k = kernel;
    launch_kernel(name, reinterpret_cast<const void*>(k), grid, block, shared_bytes, stream,
                  [k, &params] { std::apply(k, params); });
  }
};

template <typename... P>
Launch<P...> launch(void (*kernel)(P...), const char* name, dim3 grid, dim3 block,
                    size_t shared_bytes = 0, cudaStream_t stream = nullptr) {
  return Launch<P...>{kernel, name, grid, block, shared_bytes, stream};
}

// The cub shims' checks: their temp storage lies inside one allocation of the current device,
// and their stream is the current device's (cub's kernels would be launched into it).
void check_allocation(const void* pointer, size_t bytes, const char* what, cudaStream_t stream);
// A piece of a scratch block (cuda_common.cuh's Scratch, built with PDL_POST_EMULATED_CUDA) as
// its own guarded, poisoned allocation, so that accesses past a piece are caught; counted as
// "scratch_pieces", not as allocations (the block itself is the allocation a GPU sees).
void* allocate_piece(size_t bytes);
void free_piece(void* pointer);

// Test hooks (exposed by the _cuda_emulation module).
void set_schedule_seed(uint64_t seed);
uint64_t schedule_seed();
// The emulated device's compute capability (default 9.0); below 9.0 the emulated build has no
// kernel image for it, as a build for 90-real;90-virtual on such a GPU.
void set_compute_capability(int major, int minor);
// Emulated devices (1 to 8, default 1), alike but for their memory: a kernel touching another
// device's allocation fails (no peer access), a launch into another device's stream and an event
// recorded on another device's stream are refused, as on a GPU. Devices are never removed (as on
// a machine; the CUDA path keeps pools and capacities per device).
void set_device_count(int count);
// The calling thread's current device (cudaGetDevice).
int current_device();
// A stream handle of `device` (the default streams and unknown handles belong to the current
// device).
uintptr_t create_stream(int device);
// `bytes` of device memory on `device` (poisoned), for tests' arrays; counted as
// "test_allocations".
uintptr_t allocate_on_device(size_t bytes, int device);
void free_on_device(uintptr_t pointer);
// What cudaStreamIsCapturing reports for every stream: 0 none, 1 active (a synchronisation or a
// host copy then fails and invalidates it), 2 invalidated.
void set_stream_capture(int status);
int stream_capture();
// Makes the runtime call `call` fail (cudaErrorInvalidValue, also left as the last error, as CUDA
// does) once, after letting `after` calls of it through; for the tests of error paths. Calls:
// cudaMallocFromPoolAsync, cudaMemcpyAsync, cudaMemsetAsync, cudaStreamSynchronize,
// cudaEventSynchronize, cudaEventCreateWithFlags, cudaEventRecord, cudaStreamWaitEvent,
// cudaHostAlloc.
void inject_failure(const std::string& call, int64_t after);
// Injected failures not yet due (and drops them).
int64_t pending_failures();
std::vector<std::string> take_violations();
// Runtime calls since the last call (launches, and "launches of NAME" per kernel name,
// synchronisations, copies by kind, memsets,
// allocations from pools and plain, page-locked host allocations and frees), and clears them.
std::map<std::string, int64_t> take_counters();
// The kernels launched (by name), the copies ("copy " + the counter's name, e.g. "copy
// host_to_device_copies") and the synchronisations ("synchronisation"), in order, since the last
// call of this or take_counters (both clear it).
std::vector<std::string> take_timeline();
int64_t live_allocations();
// Page-locked host allocations (cudaHostAlloc) not yet freed.
int64_t live_host_allocations();

template <typename T>
uint64_t to_bits(T value) {
  static_assert(sizeof(T) <= 8, "warp intrinsics take values of at most 8 bytes");
  uint64_t bits = 0;
  std::memcpy(&bits, &value, sizeof(T));
  return bits;
}

template <typename T>
T from_bits(uint64_t bits) {
  T value;
  std::memcpy(&value, &bits, sizeof(T));
  return value;
}

inline unsigned ballot(unsigned mask, int predicate, const char* site) {
  const uint64_t* v = warp_exchange(mask, predicate != 0, site);
  unsigned result = 0;
  for (unsigned lane = 0; lane < 32; ++lane) {
    if ((mask >> lane & 1u) && v[lane]) result |= 1u << lane;
  }
  return result;
}

template <typename T>
unsigned match_any(unsigned mask, T value, const char* site) {
  const uint64_t mine = to_bits(value);
  const uint64_t* v = warp_exchange(mask, mine, site);
  unsigned result = 0;
  for (unsigned lane = 0; lane < 32; ++lane) {
    if ((mask >> lane & 1u) && v[lane] == mine) result |= 1u << lane;
  }
  return result;
}

template <typename T>
T shfl(unsigned mask, T value, int source, const char* site) {
  const uint64_t* v = warp_exchange(mask, to_bits(value), site);
  const unsigned lane = static_cast<unsigned>(source) & 31u;
  if (!(mask >> lane & 1u)) fail(std::string(site) + ": __shfl_sync reads a lane outside its mask");
  return from_bits<T>(v[lane]);
}

}  // namespace pdl_emu
