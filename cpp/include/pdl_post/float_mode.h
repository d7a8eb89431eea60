// IEEE default floating-point modes on every thread that computes, whatever modes its caller set.
//
// A thread's float modes are its own state: torch.set_flush_denormal(True) and libraries built
// with -ffast-math set flush-to-zero / denormals-are-zero (x86 MXCSR FTZ and DAZ, AArch64
// FPCR.FZ) on the threads they touch, fesetround() changes the rounding, feenableexcept() turns
// invalid operations into SIGFPE. Our OpenMP workers keep the modes they were created with, so a
// pixel's answer would depend on which thread computed it (argmax of logits 0 and 1e-40, a
// heatmap against threshold 0, softmax terms that underflow), and an infinite offset could kill
// the process. The GPU (built without -ftz) and the reference compute with the defaults: round
// to nearest, subnormals kept, exceptions masked. Every stretch of CPU work holds an
// IeeeFloatModes while it runs: each entry point on the calling thread, and each parallel region
// on every thread through ParallelRegion (parallel_region.h; integer-only regions too: one rule,
// nothing to judge per loop). The modes found are put back when it ends. One read per region and
// thread, two writes only where the modes differ: no cost measurable (benchmarks/RESULTS.md,
// "IEEE float modes on every thread").
#pragma once

#include <cstdint>

#if defined(__x86_64__) || defined(_M_X64) || defined(__SSE2__)
#include <xmmintrin.h>
#define PDL_POST_FLOAT_MODES_MXCSR 1
#elif defined(__aarch64__)
#define PDL_POST_FLOAT_MODES_FPCR 1
#endif

namespace pdl_post {

class IeeeFloatModes {
 public:
  IeeeFloatModes() : saved_(read()) {
    if (saved_ != ieee(saved_)) write(ieee(saved_));
  }
  ~IeeeFloatModes() {
    if (saved_ != ieee(saved_)) write(saved_);
  }
  IeeeFloatModes(const IeeeFloatModes&) = delete;
  IeeeFloatModes& operator=(const IeeeFloatModes&) = delete;

  // The modes of `modes` with the IEEE defaults in the bits above (the others kept as found).
  static uint64_t ieee(uint64_t modes) { return (modes & ~kClear) | kSet; }
  static uint64_t read() {
#if defined(PDL_POST_FLOAT_MODES_MXCSR)
    return _mm_getcsr();
#elif defined(PDL_POST_FLOAT_MODES_FPCR)
    uint64_t v;
    asm volatile("mrs %0, fpcr" : "=r"(v));
    return v;
#else
    return 0;
#endif
  }
  static void write(uint64_t modes) {
#if defined(PDL_POST_FLOAT_MODES_MXCSR)
    _mm_setcsr(static_cast<unsigned>(modes));
#elif defined(PDL_POST_FLOAT_MODES_FPCR)
    asm volatile("msr fpcr, %0" : : "r"(modes));
#else
    (void)modes;
#endif
  }

 private:
#if defined(PDL_POST_FLOAT_MODES_MXCSR)
  // FTZ (bit 15), rounding control (bits 13-14, 0 = to nearest), DAZ (bit 6); the six exception
  // masks (bits 7-12) set.
  static constexpr uint64_t kClear = 0x8000 | 0x6000 | 0x0040;
  static constexpr uint64_t kSet = 0x1f80;
#elif defined(PDL_POST_FLOAT_MODES_FPCR)
  // FZ (bit 24), FZ16 (bit 19), RMode (bits 22-23, 0 = to nearest), the trap enables IDE (bit 15)
  // and IXE, UFE, OFE, DZE, IOE (bits 8-12).
  static constexpr uint64_t kClear = (uint64_t{1} << 24) | (uint64_t{1} << 19) |
                                     (uint64_t{3} << 22) | (uint64_t{1} << 15) | 0x1f00;
  static constexpr uint64_t kSet = 0;
#else
  // Other processors: the thread's modes as they are.
  static constexpr uint64_t kClear = 0;
  static constexpr uint64_t kSet = 0;
#endif
  uint64_t saved_;
};

}  // namespace pdl_post
