// cub::DeviceSelect::Unique on the host emulator: the two-call temp storage protocol, then the
// first item of every run of equal items, in order, and their number.
#pragma once

#include <cstddef>

#include "cuda_runtime.h"

namespace cub {

struct DeviceSelect {
  static constexpr size_t kTempBytes = 256;

  template <typename In, typename Out, typename Count>
  static cudaError_t Unique(void* temp, size_t& temp_bytes, In in, Out out, Count num_selected,
                            int num_items, cudaStream_t stream = nullptr) {
    if (temp == nullptr) {
      temp_bytes = kTempBytes;
      return cudaSuccess;
    }
    if (temp_bytes < kTempBytes || num_items < 0) return cudaErrorInvalidValue;
    pdl_emu::check_allocation(temp, temp_bytes, "cub::DeviceSelect temp storage", stream);
    int selected = 0;
    for (int i = 0; i < num_items; ++i) {
      if (i == 0 || !(in[i] == in[i - 1])) out[selected++] = in[i];
    }
    *num_selected = selected;
    return cudaSuccess;
  }
};

}  // namespace cub
