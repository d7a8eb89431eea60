// cub::BlockScan::ExclusiveSum on the host emulator (see pdl_emu/emulator.h); the temp storage
// needs a __syncthreads before it is used again, as in cub.
#pragma once

#include "cub/block/block_storage.h"

namespace cub {

template <typename T, int BLOCK_DIM_X>
class BlockScan {
 public:
  struct TempStorage {
    T values[BLOCK_DIM_X];
    T prefix[BLOCK_DIM_X];
    T total;
    detail::StorageUse use;
  };

  explicit BlockScan(TempStorage& storage) : storage_(storage) {}

  void ExclusiveSum(T input, T& output, T& block_aggregate) {
    const unsigned tid = detail::enter<BLOCK_DIM_X>(storage_.use, "cub::BlockScan");
    storage_.values[tid] = input;
    pdl_emu::sync_block(
        0, "cub::BlockScan",
        [](void* p) {
          TempStorage& s = *static_cast<TempStorage*>(p);
          T acc{};
          for (int i = 0; i < BLOCK_DIM_X; ++i) {
            s.prefix[i] = acc;
            acc = acc + s.values[i];
          }
          s.total = acc;
          detail::completed(s.use);
        },
        &storage_);
    output = storage_.prefix[tid];
    block_aggregate = storage_.total;
  }

  void ExclusiveSum(T input, T& output) {
    T aggregate;
    ExclusiveSum(input, output, aggregate);
  }

 private:
  TempStorage& storage_;
};

}  // namespace cub
