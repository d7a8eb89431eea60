// cub::BlockReduce on the host emulator (see pdl_emu/emulator.h): the result is defined in
// thread 0 only, as in cub; the temp storage needs a __syncthreads before it is used again.
#pragma once

#include <string>

#include "cub/block/block_storage.h"

namespace cub {

template <typename T, int BLOCK_DIM_X>
class BlockReduce {
 public:
  struct TempStorage {
    T values[BLOCK_DIM_X];
    T result;
    detail::StorageUse use;
  };

  explicit BlockReduce(TempStorage& storage) : storage_(storage) {}

  T Sum(T input) {
    return Reduce(input, [](const T& a, const T& b) { return a + b; });
  }

  template <typename Op>
  T Reduce(T input, Op op) {
    const unsigned tid = detail::enter<BLOCK_DIM_X>(storage_.use, "cub::BlockReduce");
    storage_.values[tid] = input;
    struct Job {
      TempStorage* s;
      Op* op;
    } job{&storage_, &op};
    pdl_emu::sync_block(
        0, "cub::BlockReduce",
        [](void* p) {
          Job& j = *static_cast<Job*>(p);
          T acc = j.s->values[0];
          for (int i = 1; i < BLOCK_DIM_X; ++i) acc = (*j.op)(acc, j.s->values[i]);
          j.s->result = acc;
          detail::completed(j.s->use);
        },
        &job);
    return tid == 0 ? storage_.result : detail::garbage<T>();
  }

 private:
  TempStorage& storage_;
};

}  // namespace cub
