// Shared by the emulated cub block collectives: the "reuse needs a __syncthreads" rule.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>

#include "pdl_emu/emulator.h"

namespace cub {
namespace detail {

struct StorageUse {
  uint64_t completed_epoch;  // barrier epoch right after the last use's own barrier (0: never)
};

// Checks the block shape and that a __syncthreads separates this use from the previous one.
template <int BLOCK_DIM_X>
unsigned enter(const StorageUse& use, const char* what) {
  const dim3& d = pdl_emu::block_dim();
  if (d.x != BLOCK_DIM_X || d.y != 1 || d.z != 1) {
    pdl_emu::fail(std::string(what) + ": block of " + std::to_string(d.x) + "x" +
                  std::to_string(d.y) + "x" + std::to_string(d.z) + " threads, the collective " +
                  "is declared for " + std::to_string(BLOCK_DIM_X));
  }
  // Epochs are unique over all blocks and launches, so storage left by an earlier block never
  // matches.
  if (use.completed_epoch == pdl_emu::barrier_epoch()) {
    pdl_emu::fail(std::string(what) +
                  ": temp storage reused without a __syncthreads after the previous use");
  }
  return pdl_emu::linear_thread();
}

// Called by the last thread at the collective's own barrier (the epoch counts that barrier).
inline void completed(StorageUse& use) { use.completed_epoch = pdl_emu::barrier_epoch(); }

template <typename T>
T garbage() {
  T value;
  std::memset(static_cast<void*>(&value), 0x5a, sizeof value);
  return value;
}

}  // namespace detail
}  // namespace cub
