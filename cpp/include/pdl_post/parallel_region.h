// What every OpenMP region of the CPU path runs its work through: ParallelRegion::run, per loop
// iteration (or per thread, where a region is one iteration per thread).
//   - No exception may leave an OpenMP region: the process would terminate (std::terminate; a
//     std::bad_alloc from a vector inside a region did, under a memory limit). run() keeps the
//     first one (of the lowest `order`, where iterations give one: the first image's error
//     whichever thread met it first) and rethrow() raises it after the region, on the calling
//     thread (the bindings turn std::bad_alloc into MemoryError). The other iterations still
//     run; their results go with the error. A worksharing loop that every thread of a team must
//     reach is never inside run(): it wraps the iterations, so that no thread skips the loop's
//     barrier.
//   - Each thread computes in the IEEE default float modes while it runs (float_mode.h).
#pragma once

#include <cstdint>
#include <exception>
#include <mutex>

#include "pdl_post/float_mode.h"

namespace pdl_post {

class ParallelRegion {
 public:
  template <typename F>
  void run(F&& body, int64_t order = 0) noexcept {
    try {
      const IeeeFloatModes float_modes;
      body();
    } catch (...) {
      const std::lock_guard<std::mutex> lock(mutex_);
      if (!error_ || order < error_order_) {
        error_ = std::current_exception();
        error_order_ = order;
      }
    }
  }
  // After the region, on the thread that started it.
  void rethrow() const {
    if (error_) std::rethrow_exception(error_);
  }

 private:
  std::mutex mutex_;
  std::exception_ptr error_;
  int64_t error_order_ = 0;
};

}  // namespace pdl_post
