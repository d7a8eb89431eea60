// Kernels for the emulator's own tests (tests/test_cuda_emulation.py): correct uses of every
// intrinsic and cub shim with known answers, and kernels that each break one rule the emulator
// must report. Written in CUDA and translated like cpp/cuda; never built for a GPU.
#include <cuda_runtime.h>

#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>
#include <cub/device/device_scan.cuh>
#include <map>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace pdl_emu {
namespace {

constexpr int kThreads = 64;

// out[t] = exclusive sum of t + 1, then the block total, the OR of a predicate, the ballot, the
// match_any and shuffle results of lane t.
__global__ void correct_collectives(int* out) {
  using Scan = cub::BlockScan<int, kThreads>;
  using Reduce = cub::BlockReduce<int, kThreads>;
  __shared__ typename Scan::TempStorage scan_storage;
  __shared__ typename Reduce::TempStorage reduce_storage;
  const int t = static_cast<int>(threadIdx.x);
  int prefix = 0, total = 0;
  Scan(scan_storage).ExclusiveSum(t + 1, prefix, total);
  const int sum = Reduce(reduce_storage).Sum(t);
  const int any = __syncthreads_or(t == 37);
  const unsigned odd = __ballot_sync(0xffffffffu, t % 2 == 1);
  const unsigned same = __match_any_sync(0xffffffffu, t % 3);
  const int from_next = __shfl_sync(0xffffffffu, t * 10, (t + 1) % 32);
  int* row = out + 7 * t;
  row[0] = prefix;
  row[1] = total;
  row[2] = t == 0 ? sum : -1;
  row[3] = any;
  row[4] = static_cast<int>(odd);
  row[5] = static_cast<int>(same);
  row[6] = from_next;
}

__global__ void barrier_after_exit(int* out) {
  if (threadIdx.x == 5) return;
  __syncthreads();
  out[threadIdx.x] = 1;
}

__global__ void barriers_at_two_sites(int* out) {
  if (threadIdx.x < 32) {
    __syncthreads();
  } else {
    __syncthreads();
  }
  out[threadIdx.x] = 1;
}

__global__ void ballot_outside_its_mask(int* out) {
  out[threadIdx.x] = static_cast<int>(__ballot_sync(0x0000ffffu, 1));
}

__global__ void ballot_with_a_missing_lane(int* out) {
  if (threadIdx.x != 3) out[threadIdx.x] = static_cast<int>(__ballot_sync(0xffffffffu, 1));
}

__global__ void write_past_the_end(int* out, int n) { out[n + threadIdx.x] = 1; }

__global__ void scan_storage_reused_without_barrier(int* out) {
  using Scan = cub::BlockScan<int, kThreads>;
  __shared__ typename Scan::TempStorage storage;
  int a = 0, b = 0;
  Scan(storage).ExclusiveSum(1, a);
  Scan(storage).ExclusiveSum(1, b);
  out[threadIdx.x] = a + b;
}

__global__ void copy(const int* in, int* out) { out[threadIdx.x] = in[threadIdx.x]; }

// `in` is device 1's memory, the kernel runs on device 0 (run with two emulated devices).
__global__ void another_devices_memory(const int* in, int* out) {
  out[threadIdx.x] = in[threadIdx.x];
}

// Reads a neighbour's shared value without a barrier: the answer depends on the thread order.
__global__ void unsynchronised_neighbour_read(int* out) {
  __shared__ int values[kThreads];
  values[threadIdx.x] = static_cast<int>(threadIdx.x);
  out[threadIdx.x] = values[(threadIdx.x + 1) % kThreads];
}

__device__ int deep(int n) {
  volatile char frame[4096];  // 4 KiB per call: 1000 calls overflow any fibre stack
  frame[0] = static_cast<char>(n);
  return n == 0 ? 0 : deep(n - 1) + frame[0];
}

__global__ void stack_overflow(int* out) { out[threadIdx.x] = deep(1000); }

__global__ void null_pointer_write(int* out, int* nowhere) {
  nowhere[threadIdx.x] = 1;
  out[threadIdx.x] = 0;
}

__global__ void dynamic_shared_overrun(int* out) {
  extern __shared__ int scratch[];
  scratch[threadIdx.x * 2] = 1;  // 2 x 64 ints into a buffer for 64
  out[threadIdx.x] = 0;
}

// What a GPU computes whatever the host thread's modes: subnormals kept, round to nearest.
// out[3t..3t+2] = [1e-40 > 0, bits of 1 + 2^-24 (a tie: 1), bits of 1e-40 * 1].
__global__ void float_modes(int* out) {
  volatile float subnormal = 1e-40f, one = 1.0f, half_ulp = 0x1p-24f;
  out[threadIdx.x * 3] = subnormal > 0.0f ? 1 : 0;
  out[threadIdx.x * 3 + 1] = __float_as_int(one + half_ulp);
  out[threadIdx.x * 3 + 2] = __float_as_int(subnormal * one);
}

}  // namespace

// Runs one named case on a fresh device buffer of 7 x 64 ints; returns the launch's error text
// ("" on success) and the buffer (copied back).
std::pair<std::string, std::vector<int>> run_selftest(const std::string& name) {
  constexpr int n = 7 * kThreads;
  int* out = nullptr;
  int* in = nullptr;
  if (cudaMalloc(reinterpret_cast<void**>(&out), n * sizeof(int)) != cudaSuccess ||
      cudaMalloc(reinterpret_cast<void**>(&in), n * sizeof(int)) != cudaSuccess) {
    throw std::runtime_error("selftest: cudaMalloc failed");
  }
  cudaMemsetAsync(out, 0, n * sizeof(int));
  if (name == "correct_collectives") {
    correct_collectives<<<1, kThreads>>>(out);
  } else if (name == "barrier_after_exit") {
    barrier_after_exit<<<1, kThreads>>>(out);
  } else if (name == "barriers_at_two_sites") {
    barriers_at_two_sites<<<1, kThreads>>>(out);
  } else if (name == "ballot_outside_its_mask") {
    ballot_outside_its_mask<<<1, kThreads>>>(out);
  } else if (name == "ballot_with_a_missing_lane") {
    ballot_with_a_missing_lane<<<1, kThreads>>>(out);
  } else if (name == "write_past_the_end") {
    write_past_the_end<<<1, kThreads>>>(out, n);
  } else if (name == "scan_storage_reused_without_barrier") {
    scan_storage_reused_without_barrier<<<1, kThreads>>>(out);
  } else if (name == "read_unwritten_memory") {
    copy<<<1, kThreads>>>(in, out);
  } else if (name == "unsynchronised_neighbour_read") {
    unsynchronised_neighbour_read<<<1, kThreads>>>(out);
  } else if (name == "dynamic_shared_overrun") {
    dynamic_shared_overrun<<<1, kThreads, kThreads * sizeof(int)>>>(out);
  } else if (name == "stack_overflow") {
    stack_overflow<<<1, kThreads>>>(out);
  } else if (name == "null_pointer_write") {
    null_pointer_write<<<1, kThreads>>>(out, nullptr);
  } else if (name == "float_modes") {
    float_modes<<<1, kThreads>>>(out);
  } else if (name == "another_devices_memory") {
    int* elsewhere = nullptr;
    cudaSetDevice(1);
    const cudaError_t allocated = cudaMalloc(reinterpret_cast<void**>(&elsewhere), n * sizeof(int));
    cudaSetDevice(0);
    if (allocated != cudaSuccess) throw std::runtime_error("selftest: no device 1");
    another_devices_memory<<<1, kThreads>>>(elsewhere, out);
    cudaFree(elsewhere);
  } else if (name == "launch_into_another_devices_stream") {
    copy<<<1, kThreads, 0, reinterpret_cast<cudaStream_t>(create_stream(1))>>>(in, out);
  } else if (name == "event_on_another_devices_stream") {
    cudaEvent_t event = nullptr;
    cudaEventCreateWithFlags(&event, cudaEventDisableTiming);
    cudaEventRecord(event, reinterpret_cast<cudaStream_t>(create_stream(1)));
    cudaEventDestroy(event);
  } else if (name == "cub_with_another_devices_memory_and_stream") {
    void* temp = nullptr;
    size_t temp_bytes = 0;
    cub::DeviceScan::ExclusiveSum(nullptr, temp_bytes, in, out, kThreads);
    cudaSetDevice(1);
    cudaMalloc(&temp, temp_bytes);
    cudaSetDevice(0);
    cub::DeviceScan::ExclusiveSum(temp, temp_bytes, in, out, kThreads,
                                  reinterpret_cast<cudaStream_t>(create_stream(1)));
    cudaFree(temp);
  } else if (name == "too_many_threads") {
    copy<<<1, 2048>>>(in, out);
  } else if (name == "too_much_dynamic_shared_memory") {
    dynamic_shared_overrun<<<1, kThreads, 64 * 1024>>>(out);
  } else {
    throw std::invalid_argument("selftest: unknown case " + name);
  }
  const cudaError_t status = cudaGetLastError();
  std::string error = status == cudaSuccess ? ""
                                            : std::string(cudaGetErrorName(status)) + ": " +
                                                  cudaGetErrorString(status);
  std::vector<int> host(n);
  cudaMemcpyAsync(host.data(), out, n * sizeof(int), cudaMemcpyDeviceToHost);
  cudaFree(out);
  cudaFree(in);
  return {error, host};
}

}  // namespace pdl_emu
