// cub::DeviceSegmentedRadixSort::SortPairsDescending on the host emulator: a stable sort of each
// segment by the radix order of the keys' bits (floats: sign-magnitude flipped, as cub does),
// largest first. Items outside every segment are left unwritten, as in cub.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <type_traits>
#include <vector>

#include "cuda_runtime.h"

namespace cub {

struct DeviceSegmentedRadixSort {
  static constexpr size_t kTempBytes = 256;

  template <typename K>
  static uint64_t radix_key(K key, int begin_bit, int end_bit) {
    uint64_t bits = 0;
    std::memcpy(&bits, &key, sizeof(K));
    const int width = static_cast<int>(sizeof(K) * 8);
    const uint64_t sign = uint64_t{1} << (width - 1);
    if (std::is_floating_point<K>::value) {
      const uint64_t all = width == 64 ? ~uint64_t{0} : (uint64_t{1} << width) - 1;
      bits = (bits & sign) ? (~bits & all) : (bits | sign);
    } else if (std::is_signed<K>::value) {
      bits ^= sign;
    }
    const uint64_t span =
        end_bit - begin_bit >= 64 ? ~uint64_t{0} : (uint64_t{1} << (end_bit - begin_bit)) - 1;
    return (bits >> begin_bit) & span;
  }

  template <typename K, typename V, typename BeginIt, typename EndIt>
  static cudaError_t SortPairsDescending(void* temp, size_t& temp_bytes, const K* keys_in,
                                         K* keys_out, const V* values_in, V* values_out,
                                         int num_items, int num_segments, BeginIt begin_offsets,
                                         EndIt end_offsets, int begin_bit = 0,
                                         int end_bit = sizeof(K) * 8,
                                         cudaStream_t stream = nullptr) {
    if (temp == nullptr) {
      temp_bytes = kTempBytes;
      return cudaSuccess;
    }
    if (temp_bytes < kTempBytes || num_items < 0 || num_segments < 0 || begin_bit < 0 ||
        end_bit > static_cast<int>(sizeof(K) * 8) || begin_bit >= end_bit) {
      return cudaErrorInvalidValue;
    }
    pdl_emu::check_allocation(temp, temp_bytes, "cub::DeviceSegmentedRadixSort temp storage",
                              stream);
    std::vector<int> order;
    for (int s = 0; s < num_segments; ++s) {
      const int begin = begin_offsets[s], end = end_offsets[s];
      if (end <= begin) continue;
      if (begin < 0 || end > num_items) return cudaErrorInvalidValue;
      order.resize(static_cast<size_t>(end - begin));
      std::iota(order.begin(), order.end(), begin);
      std::stable_sort(order.begin(), order.end(), [&](int a, int b) {
        return radix_key(keys_in[a], begin_bit, end_bit) >
               radix_key(keys_in[b], begin_bit, end_bit);
      });
      std::vector<K> keys(order.size());
      std::vector<V> values(order.size());
      for (size_t i = 0; i < order.size(); ++i) {
        keys[i] = keys_in[order[i]];
        values[i] = values_in[order[i]];
      }
      std::copy(keys.begin(), keys.end(), keys_out + begin);
      std::copy(values.begin(), values.end(), values_out + begin);
    }
    return cudaSuccess;
  }
};

}  // namespace cub
