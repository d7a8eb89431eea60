// cub::DeviceScan::ExclusiveSum on the host emulator: the two-call temp storage protocol, then a
// sequential sum.
#pragma once

#include <cstddef>

#include "cuda_runtime.h"

namespace cub {

struct DeviceScan {
  static constexpr size_t kTempBytes = 256;

  template <typename In, typename Out>
  static cudaError_t ExclusiveSum(void* temp, size_t& temp_bytes, In in, Out out, int num_items,
                                  cudaStream_t stream = nullptr) {
    if (temp == nullptr) {
      temp_bytes = kTempBytes;
      return cudaSuccess;
    }
    if (temp_bytes < kTempBytes || num_items < 0) return cudaErrorInvalidValue;
    pdl_emu::check_allocation(temp, temp_bytes, "cub::DeviceScan temp storage", stream);
    auto acc = decltype(+in[0]){};
    for (int i = 0; i < num_items; ++i) {
      const auto value = in[i];
      out[i] = acc;
      acc = acc + value;
    }
    return cudaSuccess;
  }
};

}  // namespace cub
