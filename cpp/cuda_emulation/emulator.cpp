// The host emulator of the CUDA execution model and runtime API (see pdl_emu/emulator.h).
#include <pthread.h>
#include <signal.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>
#if defined(__x86_64__) && !defined(PDL_EMU_UCONTEXT)
#include <xmmintrin.h>
#endif

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>
#include <new>
#include <numeric>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#include "cuda_runtime.h"

namespace pdl_emu {
namespace {

constexpr size_t kStackBytes = 256 * 1024;
constexpr size_t kGuardBytes = 64;
constexpr unsigned char kPoison = 0xA5;        // fresh device memory
constexpr unsigned char kSharedPoison = 0xCD;  // dynamic shared memory at block start
constexpr unsigned char kGuard = 0xFD;         // bytes around every allocation
constexpr int kDefaultSharedLimit = 48 * 1024;
constexpr int kSharedOptinLimit = 232448;  // H100: 227 KiB per block
constexpr int kMultiprocessors = 132;
constexpr size_t kSharedPerMultiprocessor = 233472;  // H100: 228 KiB
constexpr int kMaxDevices = 8;

size_t page_size() { return static_cast<size_t>(sysconf(_SC_PAGESIZE)); }

// Memory whose payload (16-byte aligned) ends flush with an inaccessible page, so that a kernel
// reading or writing past the end faults; guard bytes fill the slack before and after it.
struct Span {
  unsigned char* base = nullptr;
  size_t mapped = 0;
  unsigned char* payload = nullptr;
  size_t bytes = 0;
  bool pooled = false;  // from cudaMallocFromPoolAsync
  int device = 0;       // whose memory: only that device's kernels may touch it
};

Span map_guarded(size_t bytes) {
  const size_t page = page_size();
  const size_t rounded = (bytes + 15) / 16 * 16;
  const size_t data_pages = (rounded + kGuardBytes + page - 1) / page;
  Span span;
  span.bytes = bytes;
  span.mapped = (data_pages + 1) * page;
  void* p = mmap(nullptr, span.mapped, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return Span{};
  span.base = static_cast<unsigned char*>(p);
  mprotect(span.base + data_pages * page, page, PROT_NONE);
  span.payload = span.base + data_pages * page - rounded;
  std::memset(span.base, kGuard, static_cast<size_t>(span.payload - span.base));
  std::memset(span.payload + bytes, kGuard, rounded - bytes);
  return span;
}

void unmap(const Span& span) {
  if (span.base) munmap(span.base, span.mapped);
}

// Whether the guard bytes around `bytes` at `payload` are intact.
bool guards_intact(const unsigned char* payload, size_t bytes) {
  const size_t after = (bytes + 15) / 16 * 16 - bytes;
  for (size_t i = 1; i <= kGuardBytes; ++i) {
    if (payload[-static_cast<ptrdiff_t>(i)] != kGuard) return false;
  }
  for (size_t i = 0; i < after; ++i) {
    if (payload[bytes + i] != kGuard) return false;
  }
  return true;
}

void fiber_entry();
void fault_exit();

// Fibre contexts. On x86-64 a switch is a few instructions (callee-saved registers and the
// floating-point control words, no system call: swapcontext's signal-mask call dominated the
// emulator's run time); elsewhere ucontext.
#if defined(__x86_64__) && !defined(PDL_EMU_UCONTEXT)
extern "C" void pdl_emu_switch(void** save_sp, void* load_sp);
asm(R"(
  .text
  .globl pdl_emu_switch
  .hidden pdl_emu_switch
  .type pdl_emu_switch, @function
pdl_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size pdl_emu_switch, .-pdl_emu_switch
)");

struct Context {
  void* sp = nullptr;
};

// A context that starts fiber_entry on the stack below `top` (16-byte aligned), with a GPU's
// floating-point modes whatever the calling thread's: round to nearest, subnormals kept (code
// built without -ftz), no traps. MXCSR: FTZ, rounding control and DAZ cleared (0xe040), the six
// exception masks set (0x1f80); the x87 control word its default (0x037f).
void start_context(Context& c, char* top) {
  auto* slot = reinterpret_cast<uint64_t*>(top);
  slot[-1] = 0;                                         // fiber_entry's return address: unused
  slot[-2] = reinterpret_cast<uint64_t>(&fiber_entry);  // where pdl_emu_switch returns to
  for (int i = 3; i <= 8; ++i) slot[-i] = 0;            // rbp, rbx, r12-r15
  auto* modes = reinterpret_cast<uint32_t*>(slot - 9);
  modes[0] = (_mm_getcsr() & ~0xe040u) | 0x1f80u;
  modes[1] = 0x037f;
  c.sp = slot - 9;
}

void switch_context(Context& from, const Context& to) { pdl_emu_switch(&from.sp, to.sp); }

// From the fault handler: the faulting fibre resumes in fault_exit at the top of its stack.
void redirect_to_fault_exit(void* signal_context, char* top) {
  auto* uc = static_cast<ucontext_t*>(signal_context);
  uc->uc_mcontext.gregs[REG_RSP] = reinterpret_cast<greg_t>(top - 8);
  uc->uc_mcontext.gregs[REG_RIP] = reinterpret_cast<greg_t>(&fault_exit);
}
#else
struct Context {
  ucontext_t uc;
};

void start_context(Context& c, char* top) {
  getcontext(&c.uc);
  c.uc.uc_stack.ss_sp = top - kStackBytes;
  c.uc.uc_stack.ss_size = kStackBytes;
  c.uc.uc_link = nullptr;
  makecontext(&c.uc, fiber_entry, 0);
}

void switch_context(Context& from, const Context& to) { swapcontext(&from.uc, &to.uc); }

void redirect_to_fault_exit(void*, char*) { fault_exit(); }  // setcontext restores the mask
#endif

struct Fiber {
  Context context;
  char* stack_top = nullptr;
  uint3 idx;
  unsigned linear = 0;
  bool done = false, blocked = false;
  const char* waiting_at = nullptr;
  int barrier_result = 0;
  uint64_t exchange[32];
};

struct Warp {
  unsigned pending = 0, arrived = 0;
  const char* site = nullptr;
  uint64_t values[32];
};

struct LaunchState {
  const char* name = nullptr;
  dim3 grid, block;
  uint3 block_idx{0, 0, 0};
  unsigned threads = 0;
  const std::function<void()>* body = nullptr;
  std::vector<Fiber> fibers;
  std::vector<Warp> warps;
  Span shared;  // dynamic shared memory
  size_t shared_bytes = 0;
  int barrier_arrived = 0, barrier_or = 0;
  const char* barrier_site = nullptr;
  Context scheduler;
  pthread_t launcher;  // the OS thread that runs the fibres
  int device = 0;      // the device it runs on (current at its launch)
  Fiber* current = nullptr;
  bool failed = false;
  std::string error;
};

std::recursive_mutex g_mutex;
LaunchState* g_launch = nullptr;
uint64_t g_epoch = 1;
uint64_t g_seed = 1;
std::vector<std::string> g_violations;
// A failed launch is reported once: by cudaGetLastError or, if that is not called first, by the
// next cudaStreamSynchronize (not sticky as on a GPU, so that one test's broken kernel does not
// fail the next). The last error is per host thread, as CUDA's.
thread_local cudaError_t g_last_error = cudaSuccess;
cudaError_t g_sync_error = cudaSuccess;
std::string g_message;
std::map<uintptr_t, Span> g_allocations;  // live device allocations by payload address
std::set<void*> g_host_allocations;       // live page-locked host allocations
// Each device's memory pool as a pool that keeps what it once held (release threshold: all)
// until cudaMemPoolTrimTo: bytes in use, and bytes reserved (the high-water mark since the last
// trim).
size_t g_pool_used[kMaxDevices] = {}, g_pool_reserved[kMaxDevices] = {};
int g_pools[kMaxDevices] = {};  // a pool's handle is the address of its device's entry
std::map<const void*, int> g_max_dynamic_shared;
// The emulated device's compute capability (major * 10 + minor). The emulated build stands for
// one compiled for 90-real;90-virtual: devices below 9.0 have no kernel image for it.
int g_compute_capability = 90;
constexpr int kBuiltArchitecture = 90;

bool has_kernel_image() { return g_compute_capability >= kBuiltArchitecture; }

// As in the CUDA runtime, a call that fails also leaves its error as the thread's last error,
// until cudaGetLastError reads it (callers that throw must clear it, or the caller's next CUDA
// call, ours or another library's, reports it).
cudaError_t recorded(cudaError_t error) {
  if (error != cudaSuccess) g_last_error = error;
  return error;
}

// What a GPU without a kernel image for the build answers `name` (a launch or a lookup).
cudaError_t no_kernel_image(const char* name) {
  g_message = std::string(name) + ": no kernel image for a device of compute capability " +
              std::to_string(g_compute_capability / 10) + "." +
              std::to_string(g_compute_capability % 10);
  g_last_error = cudaErrorNoKernelImageForDevice;
  return g_last_error;
}

// What cudaStreamIsCapturing reports for every stream (set_stream_capture). While a capture is
// active, a synchronisation or a copy from or to (pageable) host memory fails and invalidates
// it, as on a GPU.
cudaStreamCaptureStatus g_capture = cudaStreamCaptureStatusNone;

// A call a stream being captured into a CUDA graph does not allow.
cudaError_t refused_in_capture(const char* call) {
  if (g_capture != cudaStreamCaptureStatusActive) return cudaSuccess;
  g_capture = cudaStreamCaptureStatusInvalidated;
  g_message = std::string(call) + ": operation not permitted when stream is capturing";
  return recorded(cudaErrorStreamCaptureUnsupported);
}

// Failures injected into runtime calls (inject_failure): call name -> calls to let through first.
std::map<std::string, int64_t> g_injected;

// cudaErrorInvalidValue (recorded) when a failure of `call` is due, else cudaSuccess.
cudaError_t injected(const char* call) {
  std::lock_guard<std::recursive_mutex> lock(g_mutex);
  const auto at = g_injected.find(call);
  if (at == g_injected.end()) return cudaSuccess;
  if (at->second-- > 0) return cudaSuccess;
  g_injected.erase(at);
  g_message = std::string(call) + ": injected failure";
  return recorded(cudaErrorInvalidValue);
}

std::vector<char*> g_stacks;
// Devices (set_device_count) and the host thread's current one, as CUDA's.
int g_device_count = 1;
thread_local int t_device = 0;
// Streams of a known device (create_stream); any other handle, the default streams included,
// belongs to the current device.
std::map<cudaStream_t, int> g_stream_devices;
uintptr_t g_next_stream = 0x7e500000;       // far from the handles tests make up
std::map<std::string, int64_t> g_counters;  // launches, synchronisations, copies, allocations
std::vector<std::string> g_timeline;        // launches, copies and synchronisations in order
struct Event {
  int recorded = 0;  // times recorded
  int device = 0;    // current at its creation
};
std::map<const void*, Event> g_events;  // live CUDA events
uintptr_t g_next_event = 1;
std::map<void*, size_t> g_shared_statics;  // static __shared__ variables seen so far

void violation(const std::string& message) {
  g_violations.push_back(message);
  g_message = message;
}

bool is_device(int device) { return device >= 0 && device < g_device_count; }

// The live device allocation that starts at or below `address` (the only one that can hold it,
// or end just below it), or nullptr; its payload address and span.
const std::pair<const uintptr_t, Span>* allocation_below(uintptr_t address) {
  const auto above = g_allocations.upper_bound(address);
  return above == g_allocations.begin() ? nullptr : &*std::prev(above);
}

// The device a stream belongs to (see g_stream_devices).
int device_of(cudaStream_t stream) {
  const auto at = g_stream_devices.find(stream);
  return at == g_stream_devices.end() ? t_device : at->second;
}

// While a kernel runs on `device`, the other devices' allocations are inaccessible (no peer
// access), so that touching one faults and fault_handler names it; `accessible` restores them.
void protect_other_devices(int device, bool accessible) {
  if (g_device_count == 1) return;
  for (const auto& [payload, span] : g_allocations) {
    if (span.device == device) continue;
    mprotect(span.base, span.mapped - page_size(), accessible ? PROT_READ | PROT_WRITE : PROT_NONE);
  }
}

// The allocation of a device other than `device` whose pages hold `address`, or nullptr.
const Span* other_device_allocation(uintptr_t address, int device) {
  for (const auto& [payload, span] : g_allocations) {
    const uintptr_t base = reinterpret_cast<uintptr_t>(span.base);
    if (span.device != device && address >= base && address < base + span.mapped - page_size()) {
      return &span;
    }
  }
  return nullptr;
}

char* stack_for(size_t i) {
  const size_t page = page_size();
  while (g_stacks.size() <= i) {
    void* p = mmap(nullptr, kStackBytes + page, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) {
      std::fprintf(stderr, "pdl_emu: cannot map a fiber stack\n");
      std::abort();
    }
    mprotect(p, page, PROT_NONE);  // an overflow faults instead of corrupting a neighbour
    g_stacks.push_back(static_cast<char*>(p) + page);
  }
  return g_stacks[i];
}

uint64_t mix(uint64_t x) {  // splitmix64
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

void shuffle(std::vector<unsigned>& order, uint64_t& state) {
  for (size_t i = order.size(); i > 1; --i) {
    state = mix(state);
    std::swap(order[i - 1], order[state % i]);
  }
}

void fiber_entry() {
  LaunchState& L = *g_launch;
  Fiber* f = L.current;
  try {
    (*L.body)();
  } catch (const std::exception& e) {  // no exception may unwind past a fibre's first frame
    fail(std::string("C++ exception in device code: ") + e.what());
  }
  f->done = true;
  switch_context(f->context, L.scheduler);  // never resumed
  std::abort();
}

// A fibre that faulted ends here (the launch's failure is recorded already).
void fault_exit() {
  LaunchState& L = *g_launch;
  Fiber* f = L.current;
  f->done = true;
  switch_context(f->context, L.scheduler);  // abandoned: never resumed
  std::abort();
}

void wait_here(Fiber* f, const char* site) {
  f->blocked = true;
  f->waiting_at = site;
  switch_context(f->context, g_launch->scheduler);
}

std::string describe(const dim3& d) {
  return "(" + std::to_string(d.x) + "," + std::to_string(d.y) + "," + std::to_string(d.z) + ")";
}

std::string deadlock_report(const LaunchState& L) {
  std::map<std::string, int> waiting;
  int exited = 0;
  for (unsigned i = 0; i < L.threads; ++i) {
    const Fiber& f = L.fibers[i];
    if (f.done) {
      ++exited;
    } else {
      ++waiting[f.waiting_at ? f.waiting_at : "?"];
    }
  }
  std::string s = "deadlock: ";
  for (const auto& [site, n] : waiting) s += std::to_string(n) + " threads wait at " + site + "; ";
  s +=
      std::to_string(exited) + " of " + std::to_string(L.threads) +
      " threads have exited (a barrier or warp intrinsic must be reached by every thread it names)";
  return s;
}

void check_guards(uintptr_t payload, size_t bytes, const char* when) {
  if (!guards_intact(reinterpret_cast<const unsigned char*>(payload), bytes)) {
    violation(std::string("device memory of ") + std::to_string(bytes) +
              " bytes written out of bounds (found " + when + ")");
  }
}

// A kernel thread that touches an inaccessible page (past the end of a device allocation, or its
// own stack overflowing) ends the launch with a violation instead of the process.
struct sigaction g_previous_segv, g_previous_bus;
thread_local std::vector<char> t_signal_stack;

void fault_handler(int signal, siginfo_t* info, void* context) {
  LaunchState* L = g_launch;
  if (!L || !L->current || !pthread_equal(pthread_self(), L->launcher)) {
    // Not a kernel thread: the previous handler decides.
    sigaction(signal, signal == SIGSEGV ? &g_previous_segv : &g_previous_bus, nullptr);
    raise(signal);
    return;
  }
  char text[200];
  const uintptr_t address = reinterpret_cast<uintptr_t>(info->si_addr);
  const uintptr_t stack_top = reinterpret_cast<uintptr_t>(L->current->stack_top);
  const auto* below = allocation_below(address);
  const Span* foreign = other_device_allocation(address, L->device);
  if (foreign) {
    std::snprintf(text, sizeof text,
                  "thread %u: access to device %d's memory (an allocation of %zu bytes) from a "
                  "kernel on device %d",
                  L->current->linear, foreign->device, foreign->bytes, L->device);
  } else if (address < stack_top - kStackBytes &&
             address + page_size() >= stack_top - kStackBytes) {
    std::snprintf(text, sizeof text, "thread %u: stack overflow (%zu bytes per thread)",
                  L->current->linear, kStackBytes);
  } else if (below && address >= below->first + below->second.bytes &&
             address < below->first + below->second.bytes + page_size()) {
    std::snprintf(text, sizeof text,
                  "thread %u: access %zu bytes past the end of a device allocation of %zu bytes",
                  L->current->linear,
                  static_cast<size_t>(address - below->first - below->second.bytes),
                  below->second.bytes);
  } else if (address >= reinterpret_cast<uintptr_t>(L->shared.payload) + L->shared_bytes &&
             address < reinterpret_cast<uintptr_t>(L->shared.base) + L->shared.mapped) {
    std::snprintf(text, sizeof text,
                  "thread %u: access past the end of the block's %zu bytes of dynamic shared "
                  "memory",
                  L->current->linear, L->shared_bytes);
  } else {
    std::snprintf(text, sizeof text, "thread %u: invalid memory access at %p", L->current->linear,
                  info->si_addr);
  }
  L->failed = true;
  L->error = text;
  redirect_to_fault_exit(context, L->current->stack_top);
}

void install_fault_handler() {
  if (t_signal_stack.empty()) {
    t_signal_stack.resize(64 * 1024);
    stack_t stack{};
    stack.ss_sp = t_signal_stack.data();
    stack.ss_size = t_signal_stack.size();
    sigaltstack(&stack, nullptr);
  }
  struct sigaction action{};
  action.sa_sigaction = fault_handler;
  action.sa_flags = SA_SIGINFO | SA_ONSTACK;
  sigemptyset(&action.sa_mask);
  sigaction(SIGSEGV, &action, &g_previous_segv);
  sigaction(SIGBUS, &action, &g_previous_bus);
}

void restore_fault_handler() {
  sigaction(SIGSEGV, &g_previous_segv, nullptr);
  sigaction(SIGBUS, &g_previous_bus, nullptr);
}

bool run_block(LaunchState& L, uint64_t block_number) {
  ++g_epoch;
  L.barrier_arrived = 0;
  L.barrier_or = 0;
  for (Warp& w : L.warps) w = Warp{};
  std::memset(L.shared.payload, kSharedPoison, L.shared_bytes);
  for (const auto& [address, bytes] : g_shared_statics) std::memset(address, kSharedPoison, bytes);
  const unsigned bx = L.block.x, by = L.block.y;
  for (unsigned i = 0; i < L.threads; ++i) {
    Fiber& f = L.fibers[i];
    f.idx = uint3{i % bx, (i / bx) % by, i / (bx * by)};
    f.linear = i;
    f.done = f.blocked = false;
    f.waiting_at = nullptr;
    f.stack_top = stack_for(i) + kStackBytes;
    start_context(f.context, f.stack_top);
  }
  std::vector<unsigned> order(L.threads);
  std::iota(order.begin(), order.end(), 0u);
  uint64_t state = mix(g_seed ^ mix(block_number));
  for (;;) {
    if (g_seed != 0) shuffle(order, state);
    bool ran = false;
    for (unsigned i : order) {
      Fiber& f = L.fibers[i];
      if (f.done || f.blocked) continue;
      L.current = &f;
      switch_context(L.scheduler, f.context);
      L.current = nullptr;
      ran = true;
      if (L.failed) return false;
    }
    const bool all_done = std::all_of(L.fibers.begin(), L.fibers.begin() + L.threads,
                                      [](const Fiber& f) { return f.done; });
    if (all_done) break;
    if (!ran) {
      L.failed = true;
      L.error = deadlock_report(L);
      return false;
    }
  }
  if (!guards_intact(L.shared.payload, L.shared_bytes)) {
    L.failed = true;
    L.error = "dynamic shared memory written out of bounds (" + std::to_string(L.shared_bytes) +
              " bytes were requested)";
    return false;
  }
  return true;
}

}  // namespace

const uint3& thread_idx() { return g_launch->current->idx; }
const uint3& block_idx() { return g_launch->block_idx; }
const dim3& block_dim() { return g_launch->block; }
const dim3& grid_dim() { return g_launch->grid; }
unsigned linear_thread() { return g_launch->current->linear; }
void* dynamic_shared() { return g_launch->shared.payload; }

void shared_variable(void* address, size_t bytes) {
  if (g_shared_statics.emplace(address, bytes).second) {
    std::memset(address, kSharedPoison, bytes);  // its first use ever: nobody has written it
  }
}
uint64_t barrier_epoch() { return g_epoch; }

void fail(const std::string& message) {
  LaunchState& L = *g_launch;
  Fiber* f = L.current;
  if (!L.failed) {
    L.failed = true;
    L.error = message;
  }
  f->done = true;
  switch_context(f->context, L.scheduler);  // abandoned: never resumed
  std::abort();
}

int sync_block(int predicate, const char* site, void (*on_complete)(void*), void* context) {
  LaunchState& L = *g_launch;
  Fiber* f = L.current;
  if (L.barrier_arrived == 0) {
    L.barrier_site = site;
  } else if (std::strcmp(L.barrier_site, site) != 0) {
    fail(std::string("thread ") + std::to_string(f->linear) + " reaches the barrier at " + site +
         " while other threads of its block wait at " + L.barrier_site);
  }
  L.barrier_or |= predicate != 0 ? 1 : 0;
  if (++L.barrier_arrived == static_cast<int>(L.threads)) {
    const int result = L.barrier_or;
    L.barrier_arrived = 0;
    L.barrier_or = 0;
    ++g_epoch;
    if (on_complete) on_complete(context);
    for (unsigned i = 0; i < L.threads; ++i) {
      L.fibers[i].barrier_result = result;
      L.fibers[i].blocked = false;
    }
    return result;
  }
  wait_here(f, site);
  return f->barrier_result;
}

const uint64_t* warp_exchange(unsigned mask, uint64_t value, const char* site) {
  LaunchState& L = *g_launch;
  Fiber* f = L.current;
  const unsigned lane = f->linear & 31u, warp = f->linear >> 5;
  const unsigned size = std::min(32u, L.threads - warp * 32u);
  const unsigned existing = size == 32 ? ~0u : (1u << size) - 1u;
  char buffer[160];
  if (!(mask >> lane & 1u)) {
    std::snprintf(buffer, sizeof buffer,
                  ": lane %u calls a warp intrinsic whose mask 0x%08x "
                  "does not name it",
                  lane, mask);
    fail(site + std::string(buffer));
  }
  if (mask & ~existing) {
    std::snprintf(buffer, sizeof buffer, ": mask 0x%08x names lanes beyond the block's %u threads",
                  mask, L.threads);
    fail(site + std::string(buffer));
  }
  Warp& w = L.warps[warp];
  if (w.arrived == 0) {
    w.pending = mask;
    w.site = site;
  } else if (w.pending != mask || std::strcmp(w.site, site) != 0) {
    std::snprintf(buffer, sizeof buffer, " (mask 0x%08x) while lanes of its warp wait at ", mask);
    fail(std::string("warp intrinsic at ") + site + buffer + w.site);
  }
  w.values[lane] = value;
  w.arrived |= 1u << lane;
  if (w.arrived == mask) {
    for (unsigned l = 0; l < 32; ++l) {
      if (!(mask >> l & 1u)) continue;
      Fiber& u = L.fibers[warp * 32 + l];
      std::memcpy(u.exchange, w.values, sizeof w.values);
      u.blocked = false;
    }
    w.arrived = 0;
    return f->exchange;
  }
  wait_here(f, site);
  return f->exchange;
}

int launch_kernel(const char* name, const void* kernel, dim3 grid, dim3 block, size_t shared_bytes,
                  cudaStream_t stream, const std::function<void()>& body) {
  std::lock_guard<std::recursive_mutex> lock(g_mutex);
  const uint64_t threads = uint64_t{block.x} * block.y * block.z;
  if (g_launch) {
    violation(std::string("launch of ") + name + " from device code is not supported");
    g_last_error = cudaErrorLaunchFailure;
    return g_last_error;
  }
  if (!has_kernel_image()) return no_kernel_image(name);
  if (threads == 0 || threads > 1024 || block.z > 64 || grid.x == 0 || grid.y == 0 || grid.z == 0 ||
      grid.x > 2147483647u || grid.y > 65535 || grid.z > 65535) {
    g_message = std::string(name) + ": grid " + describe(grid) + " x block " + describe(block) +
                " is not a valid launch configuration";
    g_last_error = cudaErrorInvalidConfiguration;
    return g_last_error;
  }
  if (device_of(stream) != t_device) {  // as CUDA: a launch goes to a stream of the current device
    violation(std::string(name) + ": launched on device " + std::to_string(t_device) +
              " into a stream of device " + std::to_string(device_of(stream)));
    g_last_error = cudaErrorInvalidResourceHandle;
    return g_last_error;
  }
  int limit = kDefaultSharedLimit;
  const auto attribute = g_max_dynamic_shared.find(kernel);
  if (attribute != g_max_dynamic_shared.end()) limit = std::max(limit, attribute->second);
  if (shared_bytes > static_cast<size_t>(limit)) {
    g_message = std::string(name) + ": " + std::to_string(shared_bytes) +
                " bytes of dynamic shared memory exceed the kernel's limit of " +
                std::to_string(limit) + " (cudaFuncAttributeMaxDynamicSharedMemorySize)";
    g_last_error = cudaErrorInvalidValue;
    return g_last_error;
  }
  LaunchState L;
  L.name = name;
  L.grid = grid;
  L.block = block;
  L.threads = static_cast<unsigned>(threads);
  L.launcher = pthread_self();
  L.device = t_device;
  L.body = &body;
  L.fibers.resize(L.threads);
  L.warps.resize((L.threads + 31) / 32);
  L.shared_bytes = shared_bytes;
  L.shared = map_guarded(shared_bytes);
  if (!L.shared.payload) {
    g_message = std::string(name) + ": cannot map dynamic shared memory";
    g_last_error = cudaErrorMemoryAllocation;
    return g_last_error;
  }
  g_launch = &L;
  install_fault_handler();
  protect_other_devices(L.device, false);
  const uint64_t blocks = uint64_t{grid.x} * grid.y * grid.z;
  std::vector<unsigned> order;
  uint64_t state = mix(g_seed ^ 0x5eedull);
  if (g_seed != 0 && blocks <= (uint64_t{1} << 24)) {
    order.resize(blocks);
    std::iota(order.begin(), order.end(), 0u);
    shuffle(order, state);
  }
  for (uint64_t i = 0; i < blocks && !L.failed; ++i) {
    const uint64_t n = order.empty() ? i : order[i];
    L.block_idx =
        uint3{static_cast<unsigned>(n % grid.x), static_cast<unsigned>((n / grid.x) % grid.y),
              static_cast<unsigned>(n / (uint64_t{grid.x} * grid.y))};
    run_block(L, n);
  }
  protect_other_devices(L.device, true);
  restore_fault_handler();
  unmap(L.shared);
  g_launch = nullptr;
  ++g_counters["launches"];
  ++g_counters[std::string("launches of ") + name];
  g_timeline.push_back(name);
  if (L.failed) {
    const dim3 at(L.block_idx.x, L.block_idx.y, L.block_idx.z);
    violation(std::string(name) + " block " + describe(at) + ": " + L.error);
    g_last_error = g_sync_error = cudaErrorLaunchFailure;
    return g_last_error;
  }
  return cudaSuccess;
}

cudaError_t set_max_dynamic_shared(const void* kernel, int bytes) {
  std::lock_guard<std::recursive_mutex> lock(g_mutex);
  if (bytes < 0 || bytes > kSharedOptinLimit) {
    g_message = "cudaFuncSetAttribute: " + std::to_string(bytes) +
                " bytes of dynamic shared memory exceed the device's " +
                std::to_string(kSharedOptinLimit);
    return recorded(cudaErrorInvalidValue);
  }
  g_max_dynamic_shared[kernel] = bytes;
  return cudaSuccess;
}

// The kernel's cudaFuncAttributeMaxDynamicSharedMemorySize (g_mutex held).
int max_dynamic_shared(const void* kernel) {
  const auto attribute = g_max_dynamic_shared.find(kernel);
  return attribute != g_max_dynamic_shared.end() ? attribute->second : kDefaultSharedLimit;
}

cudaError_t function_attributes(cudaFuncAttributes* attributes, const void* kernel) {
  std::lock_guard<std::recursive_mutex> lock(g_mutex);
  if (!has_kernel_image()) return no_kernel_image("cudaFuncGetAttributes");
  *attributes = cudaFuncAttributes{};
  attributes->maxThreadsPerBlock = 1024;
  attributes->ptxVersion = attributes->binaryVersion = kBuiltArchitecture;
  attributes->maxDynamicSharedSizeBytes = max_dynamic_shared(kernel);
  return cudaSuccess;
}

cudaError_t resident_blocks(int* blocks, const void* kernel, int block_size, size_t shared_bytes) {
  std::lock_guard<std::recursive_mutex> lock(g_mutex);
  if (!has_kernel_image()) return no_kernel_image("cudaOccupancyMaxActiveBlocksPerMultiprocessor");
  if (block_size <= 0 || block_size > 1024) {
    g_message =
        "cudaOccupancyMaxActiveBlocksPerMultiprocessor: block size " + std::to_string(block_size);
    return recorded(cudaErrorInvalidValue);
  }
  const size_t allowed = static_cast<size_t>(max_dynamic_shared(kernel));
  const size_t by_threads = 2048 / static_cast<size_t>(block_size);
  const size_t by_shared = shared_bytes == 0 ? 32 : kSharedPerMultiprocessor / shared_bytes;
  *blocks =
      shared_bytes > allowed ? 0 : static_cast<int>(std::min({by_threads, by_shared, size_t{32}}));
  return cudaSuccess;
}

void check_allocation(const void* pointer, size_t bytes, const char* what, cudaStream_t stream) {
  std::lock_guard<std::recursive_mutex> lock(g_mutex);
  const uintptr_t p = reinterpret_cast<uintptr_t>(pointer);
  const auto* below = allocation_below(p);
  if (!below || p + bytes > below->first + below->second.bytes) {
    violation(std::string(what) + ": " + std::to_string(bytes) +
              " bytes are not inside one device allocation");
  } else if (below->second.device != t_device) {
    violation(std::string(what) + ": device " + std::to_string(below->second.device) +
              "'s memory used on device " + std::to_string(t_device));
  }
  if (device_of(stream) != t_device) {  // cub's kernels would go to another device's stream
    violation(std::string(what) + ": used on device " + std::to_string(t_device) +
              " with a stream of device " + std::to_string(device_of(stream)));
  }
}

void set_schedule_seed(uint64_t seed) {
  std::lock_guard<std::recursive_mutex> lock(g_mutex);
  g_seed = seed;
}

uint64_t schedule_seed() { return g_seed; }

void set_stream_capture(int status) {
  if (status < cudaStreamCaptureStatusNone || status > cudaStreamCaptureStatusInvalidated) {
    throw std::invalid_argument("set_stream_capture: expected 0, 1 or 2, got " +
                                std::to_string(status));
  }
  std::lock_guard<std::recursive_mutex> lock(g_mutex);
  g_capture = static_cast<cudaStreamCaptureStatus>(status);
}

int stream_capture() {
  std::lock_guard<std::recursive_mutex> lock(g_mutex);
  return static_cast<int>(g_capture);
}

void inject_failure(const std::string& call, int64_t after) {
  static const char* const kCalls[] = {
      "cudaMallocFromPoolAsync", "cudaMemcpyAsync",      "cudaMemsetAsync",
      "cudaStreamSynchronize",   "cudaEventSynchronize", "cudaEventCreateWithFlags",
      "cudaEventRecord",         "cudaStreamWaitEvent",  "cudaHostAlloc"};
  if (std::find(std::begin(kCalls), std::end(kCalls), call) == std::end(kCalls) || after < 0) {
    std::string calls;
    for (const char* name : kCalls) calls += std::string(calls.empty() ? "" : ", ") + name;
    throw std::invalid_argument("inject_failure: expected one of " + calls +
                                " and after >= 0, got " + call + ", " + std::to_string(after));
  }
  std::lock_guard<std::recursive_mutex> lock(g_mutex);
  g_injected[call] = after;
}

int64_t pending_failures() {
  std::lock_guard<std::recursive_mutex> lock(g_mutex);
  const int64_t pending = static_cast<int64_t>(g_injected.size());
  g_injected.clear();
  return pending;
}

void set_compute_capability(int major, int minor) {
  std::lock_guard<std::recursive_mutex> lock(g_mutex);
  g_compute_capability = major * 10 + minor;
}

void set_device_count(int count) {
  std::lock_guard<std::recursive_mutex> lock(g_mutex);
  if (count < g_device_count || count > kMaxDevices) {
    throw std::invalid_argument(
        "set_device_count: expected " + std::to_string(g_device_count) + " to " +
        std::to_string(kMaxDevices) + " devices, got " + std::to_string(count) +
        " (devices are never removed: the CUDA path keeps state per device)");
  }
  g_device_count = count;
}

int current_device() { return t_device; }

uintptr_t create_stream(int device) {
  std::lock_guard<std::recursive_mutex> lock(g_mutex);
  if (!is_device(device)) {
    throw std::invalid_argument("create_stream: no device " + std::to_string(device));
  }
  const uintptr_t handle = g_next_stream++;
  g_stream_devices[reinterpret_cast<cudaStream_t>(handle)] = device;
  return handle;
}

std::vector<std::string> take_violations() {
  std::lock_guard<std::recursive_mutex> lock(g_mutex);
  for (const auto& [payload, span] : g_allocations) check_guards(payload, span.bytes, "at a check");
  if (!g_events.empty()) {
    violation(std::to_string(g_events.size()) + " CUDA events left alive (never destroyed)");
    g_events.clear();
  }
  std::vector<std::string> out;
  out.swap(g_violations);
  return out;
}

std::map<std::string, int64_t> take_counters() {
  std::lock_guard<std::recursive_mutex> lock(g_mutex);
  std::map<std::string, int64_t> out;
  out.swap(g_counters);
  g_timeline.clear();
  return out;
}

std::vector<std::string> take_timeline() {
  std::lock_guard<std::recursive_mutex> lock(g_mutex);
  std::vector<std::string> out;
  out.swap(g_timeline);
  return out;
}

int64_t live_allocations() {
  std::lock_guard<std::recursive_mutex> lock(g_mutex);
  return static_cast<int64_t>(g_allocations.size());
}

int64_t live_host_allocations() {
  std::lock_guard<std::recursive_mutex> lock(g_mutex);
  return static_cast<int64_t>(g_host_allocations.size());
}

}  // namespace pdl_emu

using pdl_emu::g_allocations;
using pdl_emu::g_mutex;

namespace {

// `bytes` of `device`'s memory (by default the current device's).
cudaError_t allocate(void** pointer, size_t bytes, const char* counter, bool pooled = false,
                     int device = -1) {
  std::lock_guard<std::recursive_mutex> lock(g_mutex);
  pdl_emu::Span span = pdl_emu::map_guarded(bytes);
  span.pooled = pooled;
  span.device = device >= 0 ? device : pdl_emu::t_device;
  *pointer = span.payload;
  if (!span.payload) {
    pdl_emu::g_message = "cannot map " + std::to_string(bytes) + " bytes of device memory";
    return cudaErrorMemoryAllocation;
  }
  ++pdl_emu::g_counters[counter];
  std::memset(span.payload, pdl_emu::kPoison, bytes);
  g_allocations[reinterpret_cast<uintptr_t>(span.payload)] = span;
  if (pooled) {
    size_t& used = pdl_emu::g_pool_used[span.device];
    used += bytes;
    pdl_emu::g_pool_reserved[span.device] = std::max(pdl_emu::g_pool_reserved[span.device], used);
  }
  return cudaSuccess;
}

cudaError_t release(void* pointer) {
  if (!pointer) return cudaSuccess;
  std::lock_guard<std::recursive_mutex> lock(g_mutex);
  const auto it = g_allocations.find(reinterpret_cast<uintptr_t>(pointer));
  if (it == g_allocations.end()) {
    pdl_emu::violation("cudaFree of a pointer that is not a live device allocation");
    return cudaErrorInvalidDevicePointer;
  }
  pdl_emu::check_guards(it->first, it->second.bytes, "when it was freed");
  if (it->second.pooled) pdl_emu::g_pool_used[it->second.device] -= it->second.bytes;
  pdl_emu::unmap(it->second);
  g_allocations.erase(it);
  return cudaSuccess;
}

// A range that starts inside a device allocation must end inside it.
cudaError_t check_range(const void* pointer, size_t bytes, const char* what) {
  const uintptr_t p = reinterpret_cast<uintptr_t>(pointer);
  const auto* below = pdl_emu::allocation_below(p);
  if (!below) return cudaSuccess;
  const uintptr_t end = below->first + below->second.bytes;
  if (p >= end || p + bytes <= end) return cudaSuccess;
  pdl_emu::violation(std::string(what) + " of " + std::to_string(bytes) +
                     " bytes runs past the end of a device allocation");
  return cudaErrorInvalidValue;
}

}  // namespace

const char* cudaGetErrorName(cudaError_t error) {
  switch (error) {
    case cudaSuccess:
      return "cudaSuccess";
    case cudaErrorInvalidValue:
      return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation:
      return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration:
      return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidDevicePointer:
      return "cudaErrorInvalidDevicePointer";
    case cudaErrorInvalidDeviceFunction:
      return "cudaErrorInvalidDeviceFunction";
    case cudaErrorNoKernelImageForDevice:
      return "cudaErrorNoKernelImageForDevice";
    case cudaErrorInvalidResourceHandle:
      return "cudaErrorInvalidResourceHandle";
    case cudaErrorNoDevice:
      return "cudaErrorNoDevice";
    case cudaErrorInvalidDevice:
      return "cudaErrorInvalidDevice";
    case cudaErrorLaunchFailure:
      return "cudaErrorLaunchFailure";
    case cudaErrorStreamCaptureUnsupported:
      return "cudaErrorStreamCaptureUnsupported";
    case cudaErrorStreamCaptureInvalidated:
      return "cudaErrorStreamCaptureInvalidated";
  }
  return "cudaErrorUnknown";
}

const char* cudaGetErrorString(cudaError_t error) {
  thread_local std::string text;
  std::lock_guard<std::recursive_mutex> lock(g_mutex);
  text = std::string("emulated: ") + (error == cudaSuccess ? "no error" : pdl_emu::g_message);
  return text.c_str();
}

cudaError_t cudaGetLastError() {
  std::lock_guard<std::recursive_mutex> lock(g_mutex);
  const cudaError_t e = pdl_emu::g_last_error;
  pdl_emu::g_last_error = pdl_emu::g_sync_error = cudaSuccess;
  return e;
}

cudaError_t cudaGetDevice(int* device) {
  *device = pdl_emu::t_device;
  return cudaSuccess;
}

cudaError_t cudaSetDevice(int device) {
  std::lock_guard<std::recursive_mutex> lock(g_mutex);
  if (!pdl_emu::is_device(device)) return pdl_emu::recorded(cudaErrorInvalidDevice);
  pdl_emu::t_device = device;
  return cudaSuccess;
}

cudaError_t cudaGetDeviceCount(int* count) {
  std::lock_guard<std::recursive_mutex> lock(g_mutex);
  *count = pdl_emu::g_device_count;
  return cudaSuccess;
}

cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attribute, int device) {
  if (!pdl_emu::is_device(device)) return pdl_emu::recorded(cudaErrorInvalidDevice);
  switch (attribute) {
    case cudaDevAttrMultiProcessorCount:
      *value = pdl_emu::kMultiprocessors;
      return cudaSuccess;
    case cudaDevAttrComputeCapabilityMajor:
      *value = pdl_emu::g_compute_capability / 10;
      return cudaSuccess;
    case cudaDevAttrComputeCapabilityMinor:
      *value = pdl_emu::g_compute_capability % 10;
      return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin:
      *value = pdl_emu::kSharedOptinLimit;
      return cudaSuccess;
    case cudaDevAttrMemoryPoolsSupported:  // PDL_EMU_NO_MEMORY_POOLS=1: a device without them
      *value = std::getenv("PDL_EMU_NO_MEMORY_POOLS") ? 0 : 1;
      return cudaSuccess;
  }
  return pdl_emu::recorded(cudaErrorInvalidValue);
}

// A device allocation's pointer is its device's memory; every other non-null pointer device 0's:
// the emulator's device memory is host memory, so numpy arrays exposed through
// __cuda_array_interface__ are read as device 0's arrays.
cudaError_t cudaPointerGetAttributes(cudaPointerAttributes* attributes, const void* pointer) {
  std::lock_guard<std::recursive_mutex> lock(g_mutex);
  *attributes = cudaPointerAttributes{};
  attributes->type = pointer ? cudaMemoryTypeDevice : cudaMemoryTypeUnregistered;
  attributes->device = pointer ? 0 : -1;
  attributes->devicePointer = const_cast<void*>(pointer);
  const uintptr_t p = reinterpret_cast<uintptr_t>(pointer);
  const auto* below = pdl_emu::allocation_below(p);
  if (below && p < below->first + below->second.bytes) attributes->device = below->second.device;
  return cudaSuccess;
}

namespace {

// The device of a pool that cudaMemPoolCreate made.
int device_of_pool(cudaMemPool_t pool) {
  return static_cast<int>(reinterpret_cast<int*>(pool) - pdl_emu::g_pools);
}

}  // namespace

cudaError_t cudaMemPoolCreate(cudaMemPool_t* pool, const cudaMemPoolProps* props) {
  if (!pdl_emu::is_device(props->location.id)) return pdl_emu::recorded(cudaErrorInvalidDevice);
  *pool = reinterpret_cast<cudaMemPool_t>(&pdl_emu::g_pools[props->location.id]);
  return cudaSuccess;
}

cudaError_t cudaMemPoolSetAttribute(cudaMemPool_t, cudaMemPoolAttr, void*) { return cudaSuccess; }

cudaError_t cudaMemPoolGetAttribute(cudaMemPool_t pool, cudaMemPoolAttr attribute, void* value) {
  if (attribute != cudaMemPoolAttrReservedMemCurrent)
    return pdl_emu::recorded(cudaErrorInvalidValue);
  std::lock_guard<std::recursive_mutex> lock(g_mutex);
  *static_cast<uint64_t*>(value) = pdl_emu::g_pool_reserved[device_of_pool(pool)];
  return cudaSuccess;
}

cudaError_t cudaMemPoolTrimTo(cudaMemPool_t pool, size_t keep) {
  std::lock_guard<std::recursive_mutex> lock(g_mutex);
  const int device = device_of_pool(pool);
  size_t& reserved = pdl_emu::g_pool_reserved[device];
  reserved = std::max(pdl_emu::g_pool_used[device], std::min(reserved, keep));
  return cudaSuccess;
}

cudaError_t cudaMallocFromPoolAsync(void** pointer, size_t bytes, cudaMemPool_t pool,
                                    cudaStream_t) {
  if (const cudaError_t e = pdl_emu::injected("cudaMallocFromPoolAsync")) return e;
  return pdl_emu::recorded(
      allocate(pointer, bytes, "pool_allocations", true, device_of_pool(pool)));
}

namespace pdl_emu {

void* allocate_piece(size_t bytes) {
  void* pointer = nullptr;
  if (allocate(&pointer, bytes, "scratch_pieces") != cudaSuccess) {
    throw std::bad_alloc();
  }
  return pointer;
}

void free_piece(void* pointer) { (void)release(pointer); }

uintptr_t allocate_on_device(size_t bytes, int device) {
  std::lock_guard<std::recursive_mutex> lock(g_mutex);
  if (!is_device(device)) {
    throw std::invalid_argument("allocate_on_device: no device " + std::to_string(device));
  }
  void* pointer = nullptr;
  if (allocate(&pointer, bytes, "test_allocations", false, device) != cudaSuccess) {
    throw std::bad_alloc();
  }
  return reinterpret_cast<uintptr_t>(pointer);
}

void free_on_device(uintptr_t pointer) {
  if (release(reinterpret_cast<void*>(pointer)) != cudaSuccess) {
    throw std::invalid_argument("free_on_device: not a live device allocation");
  }
}

}  // namespace pdl_emu

cudaError_t cudaMalloc(void** pointer, size_t bytes) {
  return pdl_emu::recorded(allocate(pointer, bytes, "allocations"));
}

cudaError_t cudaFree(void* pointer) { return pdl_emu::recorded(release(pointer)); }

cudaError_t cudaFreeAsync(void* pointer, cudaStream_t) {
  return pdl_emu::recorded(release(pointer));
}

// Page-locked host memory is plain host memory here; only its bookkeeping is emulated.
cudaError_t cudaHostAlloc(void** pointer, size_t bytes, unsigned) {
  std::lock_guard<std::recursive_mutex> lock(g_mutex);
  *pointer = nullptr;
  if (const cudaError_t e = pdl_emu::injected("cudaHostAlloc")) return e;
  *pointer = std::malloc(bytes ? bytes : 1);
  if (!*pointer) {
    pdl_emu::g_message = "cannot allocate " + std::to_string(bytes) + " bytes of host memory";
    return pdl_emu::recorded(cudaErrorMemoryAllocation);
  }
  ++pdl_emu::g_counters["host_allocations"];
  pdl_emu::g_host_allocations.insert(*pointer);
  return cudaSuccess;
}

cudaError_t cudaFreeHost(void* pointer) {
  std::lock_guard<std::recursive_mutex> lock(g_mutex);
  if (pdl_emu::g_host_allocations.erase(pointer) == 0) {
    pdl_emu::violation("cudaFreeHost: not a live page-locked allocation");
    return pdl_emu::recorded(cudaErrorInvalidValue);
  }
  ++pdl_emu::g_counters["host_frees"];
  std::free(pointer);
  return cudaSuccess;
}

cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind,
                            cudaStream_t) {
  std::lock_guard<std::recursive_mutex> lock(g_mutex);
  if (const cudaError_t e = pdl_emu::injected("cudaMemcpyAsync")) return e;
  static const char* const kinds[] = {"host_to_host_copies", "host_to_device_copies",
                                      "device_to_host_copies", "device_to_device_copies",
                                      "default_copies"};
  ++pdl_emu::g_counters[kinds[kind]];
  pdl_emu::g_timeline.push_back(std::string("copy ") + kinds[kind]);
  if (kind != cudaMemcpyDeviceToDevice) {  // host memory here is pageable, never captured
    if (const cudaError_t e = pdl_emu::refused_in_capture("cudaMemcpyAsync")) return e;
  }
  if (check_range(dst, bytes, "cudaMemcpyAsync destination") != cudaSuccess ||
      check_range(src, bytes, "cudaMemcpyAsync source") != cudaSuccess) {
    return pdl_emu::recorded(cudaErrorInvalidValue);
  }
  if (bytes) std::memmove(dst, src, bytes);
  return cudaSuccess;
}

cudaError_t cudaMemsetAsync(void* pointer, int value, size_t bytes, cudaStream_t) {
  std::lock_guard<std::recursive_mutex> lock(g_mutex);
  if (const cudaError_t e = pdl_emu::injected("cudaMemsetAsync")) return e;
  ++pdl_emu::g_counters["memsets"];
  if (check_range(pointer, bytes, "cudaMemsetAsync") != cudaSuccess)
    return pdl_emu::recorded(cudaErrorInvalidValue);
  if (bytes) std::memset(pointer, value, bytes);
  return cudaSuccess;
}

cudaError_t cudaDeviceSynchronize() { return cudaStreamSynchronize(nullptr); }

namespace {

// The end of a host wait (a stream's or an event's synchronisation, `where`): every allocation's
// guard bytes checked, and the error a failed launch left for the next synchronisation returned.
cudaError_t end_of_wait(const char* where) {
  for (const auto& [payload, span] : g_allocations) {
    pdl_emu::check_guards(payload, span.bytes, where);
  }
  const cudaError_t e = pdl_emu::g_sync_error;
  pdl_emu::g_sync_error = cudaSuccess;
  return e;
}

}  // namespace

cudaError_t cudaStreamSynchronize(cudaStream_t) {
  std::lock_guard<std::recursive_mutex> lock(g_mutex);
  if (const cudaError_t e = pdl_emu::injected("cudaStreamSynchronize")) return e;
  ++pdl_emu::g_counters["synchronisations"];
  pdl_emu::g_timeline.push_back("synchronisation");
  if (const cudaError_t e = pdl_emu::refused_in_capture("cudaStreamSynchronize")) return e;
  return end_of_wait("at a stream synchronisation");
}

cudaError_t cudaStreamIsCapturing(cudaStream_t, cudaStreamCaptureStatus* status) {
  std::lock_guard<std::recursive_mutex> lock(g_mutex);
  *status = pdl_emu::g_capture;
  return cudaSuccess;
}

// Events order streams; the emulator runs every call to completion in order, so they only count
// and check their use: live events and how often each was recorded (an unknown or destroyed
// event, a wait on one never recorded and events left alive are violations).
cudaError_t cudaEventCreateWithFlags(cudaEvent_t* event, unsigned) {
  std::lock_guard<std::recursive_mutex> lock(g_mutex);
  if (const cudaError_t e = pdl_emu::injected("cudaEventCreateWithFlags")) return e;
  ++pdl_emu::g_counters["events"];
  *event = reinterpret_cast<cudaEvent_t>(pdl_emu::g_next_event++);
  pdl_emu::g_events[*event] = pdl_emu::Event{0, pdl_emu::t_device};
  return cudaSuccess;
}

cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream) {
  std::lock_guard<std::recursive_mutex> lock(g_mutex);
  if (const cudaError_t e = pdl_emu::injected("cudaEventRecord")) return e;
  const auto at = pdl_emu::g_events.find(event);
  if (at == pdl_emu::g_events.end()) {
    pdl_emu::violation("cudaEventRecord: not a live event");
    return pdl_emu::recorded(cudaErrorInvalidResourceHandle);
  }
  if (at->second.device != pdl_emu::device_of(stream)) {  // CUDA refuses it
    pdl_emu::violation("cudaEventRecord: an event of device " + std::to_string(at->second.device) +
                       " recorded on a stream of device " +
                       std::to_string(pdl_emu::device_of(stream)));
    return pdl_emu::recorded(cudaErrorInvalidResourceHandle);
  }
  ++at->second.recorded;
  return cudaSuccess;
}

cudaError_t cudaStreamWaitEvent(cudaStream_t, cudaEvent_t event, unsigned) {
  std::lock_guard<std::recursive_mutex> lock(g_mutex);
  if (const cudaError_t e = pdl_emu::injected("cudaStreamWaitEvent")) return e;
  ++pdl_emu::g_counters["stream_waits"];
  const auto at = pdl_emu::g_events.find(event);
  if (at == pdl_emu::g_events.end() || at->second.recorded == 0) {
    pdl_emu::violation("cudaStreamWaitEvent: the event is not live or was never recorded");
    return pdl_emu::recorded(cudaErrorInvalidResourceHandle);
  }
  return cudaSuccess;
}

// A host wait for the work before the event's last record: a synchronisation like the stream's
// (counted so), everything queued having run already. An event never recorded is complete.
cudaError_t cudaEventSynchronize(cudaEvent_t event) {
  std::lock_guard<std::recursive_mutex> lock(g_mutex);
  if (const cudaError_t e = pdl_emu::injected("cudaEventSynchronize")) return e;
  ++pdl_emu::g_counters["synchronisations"];
  pdl_emu::g_timeline.push_back("synchronisation");
  if (pdl_emu::g_events.find(event) == pdl_emu::g_events.end()) {
    pdl_emu::violation("cudaEventSynchronize: not a live event");
    return pdl_emu::recorded(cudaErrorInvalidResourceHandle);
  }
  return end_of_wait("at an event synchronisation");
}

cudaError_t cudaEventDestroy(cudaEvent_t event) {
  std::lock_guard<std::recursive_mutex> lock(g_mutex);
  if (pdl_emu::g_events.erase(event) == 0) {
    pdl_emu::violation("cudaEventDestroy: not a live event");
    return pdl_emu::recorded(cudaErrorInvalidResourceHandle);
  }
  return cudaSuccess;
}
