// The CUDA path of merge/postprocess (and of find_centers: finish_centers below): the same steps
// as pipeline.h, on device memory, on the caller's stream.
//
// A call runs in two phases because the output dtype depends on the data (the largest class id,
// docs/merge-semantics.md "Output dtype") and the output is allocated by the caller's own array
// library:
//   CudaMerge(...)   argmax of logits, label range and per-row peak counts are queued on the
//                    stream. The first of label_range(), finish() and finish_if_fits() then
//                    waits for them: one small device-to-host copy (label range + peak counts
//                    per image) and a wait for an event recorded after it (a synchronisation).
//                    Everything else is sized from these counts. The caller allocates the output
//                    for the likeliest dtype before the job and hands it to finish_if_fits(),
//                    which goes on at once when the label range fits it: no return to Python
//                    while the device idles between phases.
//                    On images of a size seen before (merge and postprocess alike),
//                    finish_if_fits first queues the whole second phase speculatively,
//                    sized by what earlier calls of that size needed (centres per image, classes,
//                    with headroom), and a one-block check of those sizes against the counts on
//                    the device; the header's copy is queued before that work and waited for
//                    alone, so the device runs from the first phase into the vote while the host
//                    waits. Where the check failed (more centres or classes, a top-k sort, ids
//                    the output cannot hold), the speculative kernels return at once and the call
//                    goes on as without it; the capacities grow to what it needed.
//   finish(out)      top-k (segmented radix sort on the device, only for images with more peaks
//                    than top_k), compaction, voting with segment statistics, majority vote,
//                    stuff filter, write; one device-to-host copy of per-image results (centres,
//                    segments, error flags) and a synchronisation at the end. merge skips that
//                    end when no image keeps label_divisor centres or more (no class can then
//                    overflow its instance numbers, the only error found on the device) and the
//                    caller does not ask it to wait (the stream's order must cover the output's
//                    readers and the reuse of the inputs' memory): it returns with the work
//                    queued. Class ids from
//                    ClassIndex::kDenseLabelLimit up: first the batch's distinct ids, sorted on the
//                    device, and a synchronisation for their number; the tables are then indexed
//                    by rank, as on the CPU.
// Each phase takes its scratch arrays from one stream-ordered pool allocation (host time per call
// does not grow with the number of arrays). Every per-pixel rule is the HOST_DEVICE function the
// CPU path calls, so the answer is the CPU's bit for bit (scores with logits too: same summation
// order, and exp_nonpositive() instead of libm's or CUDA's exp()).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "pdl_post/common.h"
#include "pdl_post/majority_vote.h"
#include "pdl_post/pipeline.h"

namespace pdl_post {

// A CUDA runtime error (the bindings raise RuntimeError with this message).
struct CudaError : std::runtime_error {
  explicit CudaError(const std::string& what) : std::runtime_error(what) {}
};

// Number of usable CUDA devices; 0 without a driver or device (never throws).
int cuda_device_count();
// The device that owns a device (or managed) pointer, or -1 for host or unknown memory.
int cuda_pointer_device(uintptr_t pointer);
// Returns the scratch memory the CUDA path's pools keep between calls to the driver (after
// synchronising each device that has a pool); the number of device bytes released. The
// page-locked host blocks kept for copies (4 KiB each for merge) go too, uncounted.
int64_t cuda_release_memory();
// Queues on `stream` of `device` a wait for the work queued so far on `producer` (an event; the
// host does not block). Both are __cuda_array_interface__ v3 handles (1 / 2: the legacy /
// per-thread default streams). For inputs made, or an output allocated, on another stream.
void cuda_stream_wait(int device, uintptr_t stream, uintptr_t producer);
// Compiled architectures and CUDA runtime version, for build_info().
std::string cuda_build_description();

// Whether the vote's warps take their pixels in chunks of 256 from a counter per image (one atomic
// add per chunk) until none are left, instead of a fixed share each: warps whose pixels are mostly
// stuff no longer idle beside busier ones (Nsight Compute at batch 8 on an H200: 54 % achieved
// occupancy of 75 %). The same answer; off until GPU timings decide (benchmarks/RESULTS.md). A
// process-wide test and benchmark hook; returns the previous setting.
bool set_cuda_vote_chunks(bool chunks);
// Whether the vote's warps compare only the centres that can be nearest somewhere in the box of
// the warp's votes (bounds that round as the distance does, the CPU vote cells' rule) instead of
// every centre: about 1 centre of 38 per warp in gpu_bench's scene, against the box's and the
// cut's warp reductions and two bounds per centre per warp. The same answer; off until GPU
// timings decide. A hook like set_cuda_vote_chunks; returns the previous setting.
bool set_cuda_vote_box(bool box);
// Whether the peaks (or, every peak kept, the centres) are written by a warp per row, the rows
// spread over one wave of warps, instead of a block per row (B * H blocks, most of them rows
// without a peak, between the first synchronisation and the vote). The same answer; off until GPU
// timings decide. A hook like set_cuda_vote_chunks; returns the previous setting.
bool set_cuda_warp_peaks(bool by_warp);
// Whether the label range and the write of the ids read row-major inputs (one contiguous block,
// aligned, H*W a multiple of 4) 4 pixels per load instead of pixel by pixel through the strides:
// the same answer; on by default (faster on an H200, benchmarks/RESULTS.md). A process-wide test
// hook like set_cuda_vote_chunks (off: the strided reads for every input); returns the previous
// setting.
bool set_cuda_packed_loads(bool packed);
// Whether merge may queue its second phase speculatively (see CudaMerge above): the same answer,
// one synchronisation either way; on by default. Off also forgets the capacities learnt so far
// (a test hook: the next calls start afresh). Returns the previous setting.
bool set_cuda_speculation(bool speculate);

struct CudaMergeInputs {
  // labels [B, 1, H, W]; data == nullptr when logits are given, or for a job that only finds the
  // centres (neither: finish_centers)
  StridedView sem;
  StridedView logits;  // [B, C, H, W] float32/float64 or data == nullptr
  StridedView ctr;     // [B, 1, H, W]
  StridedView off;     // [B, 2, H, W]
  StridedView mask;    // uint8 [B, 1, H, W] or data == nullptr
  int device = 0;
  uintptr_t stream = 0;  // cudaStream_t; 1 and 2 mean the legacy / per-thread default streams
  // A job for fuse (finish_fuse): sem or logits and the caller's instance map [B, 1, H, W] (any
  // integer dtype the labels may have); ctr, off and mask are not read.
  bool fuse = false;
  StridedView instance;
};

struct CudaGroupInputs {
  StridedView sem;     // labels [B, 1, H, W]; data == nullptr with logits or a mask
  StridedView logits;  // [B, C, H, W] float32/float64 or data == nullptr
  StridedView off;     // [B, 2, H, W]
  StridedView mask;    // uint8 [B, 1, H, W], thing pixels where != 0 (sem is then not read)
  int device = 0;
  uintptr_t stream = 0;  // as CudaMergeInputs::stream
};

// group_pixels on the device (pipeline.h's group_pixels): out (int32 [B, 1, H, W] contiguous, on
// the same device) = 0 where no instance, else 1 + the index of the centre nearest to the pixel's
// vote (ties to the lower index), by merge's vote kernels. centers: per image its (y, x) pairs,
// flattened, inside the image (the caller checks). Queued on the stream, with no synchronisation
// unless `wait`, or signed labels without a mask: their minimum is read back after the work
// (negative class ids are an error, as on the CPU).
void cuda_group_pixels(const CudaGroupInputs& inputs, const std::vector<int64_t>& thing_ids,
                       const std::vector<std::vector<int64_t>>& centers, const StridedView& out,
                       bool wait);

// The inputs must stay alive and unchanged until finish() returns: it reads them again (the
// peaks are written where the first phase counted them).
class CudaMerge {
 public:
  CudaMerge(const CudaMergeInputs& inputs, const CenterOptions& centers, const FuseParams& params);
  ~CudaMerge();
  CudaMerge(const CudaMerge&) = delete;
  CudaMerge& operator=(const CudaMerge&) = delete;

  // (min, max) class id over the batch; (0, -1) when there are no pixels.
  std::pair<int64_t, int64_t> label_range();

  // Runs the rest of the pipeline into `out` (int32/int64 [B, 1, H, W] contiguous, on the same
  // device). Centres and segments are returned when with_segments, else empty lists. Without
  // them and without `wait` it may return with the work queued (see above); `wait` is for
  // callers whose stream order covers neither the readers of `out` nor the reuse of the inputs'
  // memory. Once only.
  std::vector<ImageResult> finish(const StridedView& out, bool with_segments, bool wait);

  // finish(out, ...) when the class ids are >= 0 and at most `max_label` (the largest whose
  // panoptic ids fit out's dtype), else nothing: the caller reads label_range() and allocates
  // another output (or raises) and calls finish.
  std::optional<std::vector<ImageResult>> finish_if_fits(const StridedView& out, int64_t max_label,
                                                         bool with_segments, bool wait);

  // find_centers on the device instead of the rest of the pipeline: the top-k selection of the
  // counted peaks, as finish's, and one copy of the kept centres (y, x, heatmap value) to the host
  // with a synchronisation (sync point 2). The only finish of a job made without sem and logits
  // (whose off and mask are not read). Once only.
  std::vector<ImageCenters> finish_centers();

  // A fuse job's instance ids: the smallest over the batch, and each image's largest (sync point
  // 1, with the label range).
  std::pair<int64_t, std::vector<int64_t>> instance_range();

  // fuse on the device (pipeline.h's fuse): the majority vote, numbering, stuff filter and write
  // into `out` (as finish's) of `instance` (int32 [B, 1, H, W] contiguous, ids 0..counts[b]: the
  // job's map, or its renumbered copy where ids exceed H * W), as merge's second phase does with
  // its votes. Returns with the work queued unless `wait`, or an image may number
  // label_divisor instances (the error is then read back, sync point 2). Once only.
  void finish_fuse(const StridedView& out, const StridedView& instance,
                   const std::vector<int64_t>& counts, bool wait);

  // Frees the first phase's scratch now, in order on the call's stream, for a caller that will not
  // finish (an error between the phases): the destructor would free it on that stream whenever
  // the object goes, and the stream (a CuPy stream, or a thread's per-thread default stream) may
  // be gone or another thread's by then. label_range() and the finishes then raise.
  void release() noexcept;

  struct State;

 private:
  std::unique_ptr<State> state_;
};

}  // namespace pdl_post
