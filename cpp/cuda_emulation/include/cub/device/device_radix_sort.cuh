// cub::DeviceRadixSort::SortKeys on the host emulator: the two-call temp storage protocol, then a
// stable sort by the radix order of bits [begin_bit, end_bit) (signed keys: sign bit flipped, as
// cub does), smallest first. With a DoubleBuffer the sorted keys land in the alternate buffer and
// the selector flips (as after an odd number of cub's passes), so that callers must read
// Current().
#pragma once

#include <algorithm>
#include <cstddef>
#include <vector>

#include "cub/device/device_segmented_radix_sort.cuh"
#include "cuda_runtime.h"

namespace cub {

template <typename T>
struct DoubleBuffer {
  T* d_buffers[2] = {nullptr, nullptr};
  int selector = 0;
  DoubleBuffer() = default;
  DoubleBuffer(T* current, T* alternate) : d_buffers{current, alternate} {}
  T* Current() const { return d_buffers[selector]; }
  T* Alternate() const { return d_buffers[selector ^ 1]; }
};

struct DeviceRadixSort {
  static constexpr size_t kTempBytes = 256;

  template <typename K>
  static cudaError_t SortKeys(void* temp, size_t& temp_bytes, const K* keys_in, K* keys_out,
                              int num_items, int begin_bit = 0, int end_bit = sizeof(K) * 8,
                              cudaStream_t stream = nullptr) {
    if (temp == nullptr) {
      temp_bytes = kTempBytes;
      return cudaSuccess;
    }
    if (temp_bytes < kTempBytes || num_items < 0 || begin_bit < 0 ||
        end_bit > static_cast<int>(sizeof(K) * 8) || begin_bit >= end_bit) {
      return cudaErrorInvalidValue;
    }
    pdl_emu::check_allocation(temp, temp_bytes, "cub::DeviceRadixSort temp storage", stream);
    std::vector<K> keys(keys_in, keys_in + num_items);
    std::stable_sort(keys.begin(), keys.end(), [&](K a, K b) {
      return DeviceSegmentedRadixSort::radix_key(a, begin_bit, end_bit) <
             DeviceSegmentedRadixSort::radix_key(b, begin_bit, end_bit);
    });
    std::copy(keys.begin(), keys.end(), keys_out);
    return cudaSuccess;
  }

  template <typename K>
  static cudaError_t SortKeys(void* temp, size_t& temp_bytes, DoubleBuffer<K>& keys, int num_items,
                              int begin_bit = 0, int end_bit = sizeof(K) * 8,
                              cudaStream_t stream = nullptr) {
    const cudaError_t status = SortKeys(temp, temp_bytes, keys.Current(), keys.Alternate(),
                                        num_items, begin_bit, end_bit, stream);
    if (temp != nullptr && status == cudaSuccess) keys.selector ^= 1;
    return status;
  }
};

}  // namespace cub
