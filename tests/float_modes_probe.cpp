// float_mode.h on another processor (tests/test_float_modes.py cross-compiles it for AArch64 and
// runs it under qemu-user where those tools are installed): the caller sets flush-to-zero and
// rounding toward -inf; inside an IeeeFloatModes a subnormal product is kept, and the caller's
// modes are back afterwards. Exit status 0 when so.
#include <cstdint>
#include <cstdio>

#include "pdl_post/float_mode.h"

using pdl_post::IeeeFloatModes;

namespace {
float product(float a, float b) {
  volatile float x = a, y = b;  // computed at run time, in the thread's modes
  return x * y;
}
}  // namespace

int main() {
  const uint64_t found = IeeeFloatModes::read();
#if defined(__aarch64__)
  const uint64_t flush = (uint64_t{1} << 24) | (uint64_t{2} << 22);  // FPCR.FZ, RMode = to -inf
#else
  const uint64_t flush = 0x8040 | 0x2000;  // MXCSR FTZ and DAZ, rounding toward -inf
#endif
  IeeeFloatModes::write(found | flush);
  const uint64_t caller = IeeeFloatModes::read();
  const float flushed = product(1e-20f, 1e-20f);  // 1e-40, a subnormal: 0 when flushed
  float kept = 0.0f;
  {
    const IeeeFloatModes modes;
    kept = product(1e-20f, 1e-20f);
  }
  const uint64_t after = IeeeFloatModes::read();
  IeeeFloatModes::write(found);
  std::printf("caller %#llx, after %#llx, flushed %g, kept %g\n",
              static_cast<unsigned long long>(caller), static_cast<unsigned long long>(after),
              flushed, kept);
  return flushed == 0.0f && kept > 0.0f && after == caller ? 0 : 1;
}
