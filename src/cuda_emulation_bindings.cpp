// pdl_post._cuda_emulation: the CUDA path's sources (cpp/cuda) compiled for the host emulator
// (cpp/cuda_emulation), with the same bindings as _core's CUDA part plus the emulator's test
// hooks. Built for the test suite only (PDL_POST_CUDA_EMULATION=ON), never shipped in a wheel.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "cuda_bindings.h"
#include "pdl_emu/emulator.h"

namespace py = pybind11;

namespace pdl_emu {
// cpp/cuda_emulation/selftest.cu
std::pair<std::string, std::vector<int>> run_selftest(const std::string& name);
}  // namespace pdl_emu

namespace pdl_post::cuda {
// cpp/cuda/fusion.cu (cuda_common.cuh)
int64_t score_chunk_blocks(int64_t height, int64_t segment_slots);
}  // namespace pdl_post::cuda

PYBIND11_MODULE(_cuda_emulation, m) {
  m.doc() = "The CUDA path on a host emulator of CUDA (tests only).";
  pdl_post_bindings::bind_cuda(m);
  m.def("set_schedule_seed", &pdl_emu::set_schedule_seed, py::arg("seed"),
        "Order of blocks and threads (0: in index order, else a seeded shuffle).");
  m.def("schedule_seed", &pdl_emu::schedule_seed);
  m.def("set_compute_capability", &pdl_emu::set_compute_capability, py::arg("major"),
        py::arg("minor"), "The emulated device's compute capability (default 9.0).");
  m.def("set_device_count", &pdl_emu::set_device_count, py::arg("count"),
        "Emulated devices (1 to 8, default 1; never fewer than before): a kernel touching another "
        "device's memory, a launch into another device's stream and an event recorded on one "
        "fail, as on a GPU.");
  m.def("current_device", &pdl_emu::current_device, "The calling thread's current device.");
  m.def("create_stream", &pdl_emu::create_stream, py::arg("device"),
        "A stream handle of `device` (other handles belong to the current device).");
  m.def("allocate_on_device", &pdl_emu::allocate_on_device, py::arg("bytes"), py::arg("device"),
        "A device allocation of `bytes` on `device` (host memory here): its address.");
  m.def("free_on_device", &pdl_emu::free_on_device, py::arg("pointer"),
        "Frees an allocation of allocate_on_device.");
  m.def("set_stream_capture", &pdl_emu::set_stream_capture, py::arg("status"),
        "What cudaStreamIsCapturing reports for every stream: 0 none, 1 active (a "
        "synchronisation or host copy then fails and invalidates it), 2 invalidated.");
  m.def("stream_capture", &pdl_emu::stream_capture, "The capture status (see set_stream_capture).");
  m.def("inject_failure", &pdl_emu::inject_failure, py::arg("call"), py::arg("after") = 0,
        "Makes the runtime call `call` fail once, after `after` calls of it went through.");
  m.def("pending_failures", &pdl_emu::pending_failures,
        "Injected failures not yet due (and drops them).");
  m.def("take_violations", &pdl_emu::take_violations,
        "Violations of CUDA's rules recorded since the last call (and clears them).");
  m.def("take_counters", &pdl_emu::take_counters,
        "Runtime calls since the last call: launches (and 'launches of NAME' per kernel), "
        "synchronisations, copies by kind, memsets, "
        "allocations from pools and plain, page-locked host allocations and frees (and clears "
        "them).");
  m.def("take_timeline", &pdl_emu::take_timeline,
        "Kernels launched (by name), copies ('copy ' + the counter's name) and "
        "'synchronisation's in order since the last call of this or take_counters (both clear "
        "it).");
  m.def("live_allocations", &pdl_emu::live_allocations, "Device allocations not yet freed.");
  m.def("live_host_allocations", &pdl_emu::live_host_allocations,
        "Page-locked host allocations (cudaHostAlloc) not yet freed.");
  m.def("score_chunk_blocks", &pdl_post::cuda::score_chunk_blocks, py::arg("height"),
        py::arg("segment_slots"),
        "Row blocks per chunk of score sums (the emulated build's chunks are 64 KiB).");
  m.def("selftest", &pdl_emu::run_selftest, py::arg("name"),
        "Runs one of the emulator's own test kernels: (error text or '', output ints).");
}
