"""GPU timings of the CUDA path against dense PyTorch and the device copy floor (issue 5).

Run by ``benchmarks/gpu_check.sh`` on a GPU machine (needs torch with CUDA). Every time is the
median of ``--repeat`` calls after ``--warmup`` calls, measured with CUDA events recorded on the
current stream around the whole call: end to end, inputs on the device -> panoptic ids on the
device (``merge`` synchronises once, for its sizes, and returns with the rest queued: the end event
follows its last kernel). The batch-8 target is about throughput, so batch 8 is also timed "in
a row": 10 calls queued back to back between two events, per call (a loop over batches, where a
call's host work overlaps the previous call's queued kernels), beside the copy floor timed the
same way; the single call's latency stays in the table.

- ours: ``pdl_post.merge`` on torch CUDA tensors (batch 1 and batch 8, 1024x2048, 40 centres);
- dense torch: ``pdl_post.baselines.dense_torch`` on the same GPU, image by image (batch 1);
- copy floor: device-to-device copies of the same input bytes (sem, ctr, off) plus writing the
  int32 output once, i.e. what any pass over the data costs.

The table ends with the issue's targets and whether each is met, then the host side of batch 1
(the call's host time beside an idle synchronisation and small device-to-host copies), the host
phases of a call, and torch.profiler tables (kernels and runtime calls: where the time goes) of
batch 1, the batch, and the batch with every candidate on (the candidates: changes that stay off
by default until their rows here show them faster, timed in rounds alternating with the default;
their kernels' times beside the default's). The candidates' table also times the default's
alternative, merge's second phase queued only after its counts (speculation off).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys

import numpy as np

DEVICE = "cuda"  # benchmarks/test_gpu_bench_script.py runs the script on a CPU stand-in


def _time(fn, warmup: int, repeat: int, calls: int = 1) -> float:
    """Median time per call in ms of ``repeat`` rounds, each ``calls`` calls queued back to back
    between two CUDA events, after ``warmup`` calls. One call per round: its latency, end to end."""
    import torch

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeat):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(calls):
            fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / calls)
    return statistics.median(times)


def _time_in_a_row(fn, warmup: int, repeat: int, calls: int = 10) -> float:
    """Time per call when ``calls`` calls are queued back to back (``repeat // calls`` rounds, at
    least 3): the throughput of a loop over batches, the issue's measure for batch 8. ``merge``
    returns with its second phase queued, so a call's host work before its first synchronisation
    overlaps the previous call's kernels, which a single call timed alone (its latency) cannot
    show."""
    return _time(fn, warmup, max(3, repeat // calls), calls)


def _host_time(fn, warmup: int, repeat: int) -> float:
    """Median host time of a call in ms (perf_counter), the device drained between calls: what
    the call keeps the host busy, which merge's early return makes less than its device time."""
    import time

    import torch

    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    torch.cuda.synchronize()
    return statistics.median(times)


def _runtime_floors(device, warmup: int, repeat: int) -> list[tuple[str, float]]:
    """Host costs every call pays (ms, median): a synchronisation of an idle stream, and a small
    device-to-host copy plus synchronisation into pageable and into pinned memory (merge's first
    phase reads its sizes back through such a copy, into pageable memory). Each ends drained, so
    _host_time's synchronisation between calls adds nothing to what it times."""
    import torch

    small = torch.arange(8, dtype=torch.int64, device=device)
    pageable = torch.empty(8, dtype=torch.int64)
    pinned = torch.empty(8, dtype=torch.int64, pin_memory=True)

    def host(fn):
        return _host_time(fn, warmup, repeat)

    def copy_into(buffer):
        buffer.copy_(small, non_blocking=True)
        torch.cuda.current_stream().synchronize()

    return [
        ("synchronise an idle stream", host(torch.cuda.current_stream().synchronize)),
        ("64 B device -> pageable host + sync", host(lambda: copy_into(pageable))),
        ("64 B device -> pinned host + sync", host(lambda: copy_into(pinned))),
    ]


def add_scene_arguments(parser: argparse.ArgumentParser) -> None:
    """The scenes the targets are about (also benchmarks/vote_pruning_reads.py's)."""
    parser.add_argument("--height", type=int, default=1024)
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--centers", type=int, default=40)
    parser.add_argument("--batch", type=int, default=8)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_scene_arguments(parser)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=50)
    parser.add_argument("--dense-repeat", type=int, default=5)
    parser.add_argument(
        "--candidate-rounds",
        type=int,
        default=3,
        help="rounds that alternate each candidate with the default (each row timed per round)",
    )
    parser.add_argument(
        "--profile", type=int, default=20, help="calls profiled at batch 1 (0: no profile)"
    )
    parser.add_argument(
        "--trace", metavar="PREFIX", help="write the profiles' Chrome traces to PREFIX-b1.json, ..."
    )
    args = parser.parse_args(argv)

    import torch

    import pdl_post
    from pdl_post import synthetic
    from pdl_post.baselines.dense_torch import panoptic_dense_torch

    if not (torch.cuda.is_available() and pdl_post.cuda_available()):
        print("needs a CUDA device, torch with CUDA and pdl_post built with CUDA", file=sys.stderr)
        return 2
    device = torch.device(DEVICE)
    kw = pdl_post.presets.CITYSCAPES.kwargs()
    h, w, n, b = args.height, args.width, args.centers, args.batch

    def upload(arrays):
        return [torch.from_numpy(np.ascontiguousarray(a)).to(device) for a in arrays]

    scene = synthetic.make_scene(h, w, n, seed=0)
    sem1, ctr1, off1 = upload([scene.sem.astype(np.int32), scene.ctr, scene.off])
    batch = synthetic.make_batch(b, h, w, n, seed=0)
    semb, ctrb, offb = upload([batch.sem.astype(np.int32), batch.ctr, batch.off])

    # The two merge inputs the targets are about, on the device and on the host.
    on_device = {"batch 1": (sem1, ctr1, off1), f"batch {b}": (semb, ctrb, offb)}
    on_host = {
        "batch 1": (scene.sem.astype(np.int32), scene.ctr, scene.off),
        f"batch {b}": (batch.sem.astype(np.int32), batch.ctr, batch.off),
    }

    def merge_of(label):
        return lambda: pdl_post.merge(*on_device[label], **kw)

    # Correctness first: the GPU answer equals the CPU answer. A mismatch is reported and the
    # timings still run (device time is scarce: one run should bring back both).
    mismatches = []

    def check(label, gpu, cpu):
        if gpu.shape != cpu.shape:
            mismatches.append(f"{label}: GPU shape {gpu.shape} != CPU shape {cpu.shape}")
        elif not np.array_equal(gpu, cpu):
            differ = int(np.count_nonzero(gpu != cpu))
            mismatches.append(f"{label}: GPU != CPU ({differ} elements differ)")

    cpu_answer = {label: pdl_post.merge(*inputs, **kw) for label, inputs in on_host.items()}
    for label in on_device:
        check(f"merge, {label}", merge_of(label)().cpu().numpy(), cpu_answer[label])
    k = len(pdl_post.postprocess(sem1, ctr1, off1, **kw).centers)
    # Scores with logits summed in several chunks of row blocks equal the CPU's: a centre per
    # pixel of 640 columns (1024 rows: 256 blocks x 655,360 segment slots x 8 bytes = 1.34 GB of
    # partial sums, two chunks of at most 1 GiB).
    (logits1,) = upload([synthetic.make_scene(h, w, n, seed=0, logits=True).logits])
    flat_ctr = torch.full_like(ctr1, 0.5)
    all_kw = {**kw, "top_k": None}
    strip = [t[..., : min(w, 640)] for t in (logits1, flat_ctr, off1)]
    gpu_strip = pdl_post.postprocess(*strip, **all_kw)
    cpu_strip = pdl_post.postprocess(*(t.cpu().numpy() for t in strip), **all_kw)
    check("postprocess, logits, flat strip", gpu_strip.panoptic.cpu().numpy(), cpu_strip.panoptic)
    if gpu_strip.segments != cpu_strip.segments:  # scores too, bit for bit
        mismatches.append("postprocess, logits, flat strip: segments differ")

    ours1 = _time(merge_of("batch 1"), args.warmup, args.repeat)
    oursb = _time(merge_of(f"batch {b}"), args.warmup, args.repeat)
    oursb_row = _time_in_a_row(merge_of(f"batch {b}"), args.warmup, args.repeat)
    # Candidates that stay off by default until these rows show them faster (cuda_pipeline.h),
    # each checked against the CPU, then timed in rounds that alternate it with the default (the
    # batch-1 rows drift with the host's launch overhead over a run: a default timed minutes
    # earlier is no fair baseline), each side's median over the rounds.
    candidates = _candidates()
    candidate_ms = {}  # (candidate, row label) -> ms
    beside_ms = {}  # (candidate, row label) -> the default's ms in the same rounds
    timed_rows = {
        **{
            label: (lambda label=label: _time(merge_of(label), args.warmup, args.repeat))
            for label in on_device
        },
        f"batch {b}, in a row": lambda: _time_in_a_row(
            merge_of(f"batch {b}"), args.warmup, args.repeat
        ),
    }
    for name, settings in candidates.items():
        with _switched(settings):
            for label in on_device:
                gpu = merge_of(label)().cpu().numpy()
                check(f"merge, {label}, {name}", gpu, cpu_answer[label])
        for label, timed in timed_rows.items():
            ours, theirs = [], []
            for _ in range(args.candidate_rounds):
                ours.append(timed())
                with _switched(settings):
                    theirs.append(timed())
            beside_ms[name, label] = statistics.median(ours)
            candidate_ms[name, label] = statistics.median(theirs)
    # Paths beside the targets, for the next session's leads: postprocess with logits (the score
    # sums run in the CPU's order, serially per block of rows), COCO's NMS window and class ids
    # from 2**16 up (compacted tables: a device sort and one more synchronisation).
    scores1 = _time(
        lambda: pdl_post.postprocess(logits1, ctr1, off1, **kw), args.warmup, args.repeat
    )
    # postprocess on labels: merge's work plus the read-back of centres and segments (one more
    # synchronisation and copy), beside merge's batch 1 row.
    post1 = _time(lambda: pdl_post.postprocess(sem1, ctr1, off1, **kw), args.warmup, args.repeat)
    # find_centers alone (steps 1-4): the peak counts, the selection, the centres read back (two
    # synchronisations) and handed back as tensors on the device; checked against the CPU's.
    center_kw = {key: kw[key] for key in ("threshold", "nms_kernel", "top_k")}
    on_gpu = pdl_post.find_centers(ctr1, **center_kw)
    on_cpu = pdl_post.find_centers(ctr1.cpu().numpy(), **center_kw)
    for got, want, what in zip(on_gpu, on_cpu, ("centres", "scores")):
        if not np.array_equal(got.cpu().numpy() if hasattr(got, "cpu") else got, want):
            mismatches.append(f"find_centers: GPU {what} != CPU {what}")
    centers1 = _time(lambda: pdl_post.find_centers(ctr1, **center_kw), args.warmup, args.repeat)
    # group_pixels alone with those centres (merge's vote, queued without a synchronisation on
    # int32 labels but for their minimum), beside merge's batch-1 row; checked against the CPU's.
    found = on_cpu[0]
    grouped = pdl_post.group_pixels(sem1, found, off1)
    want_grouped = pdl_post.group_pixels(sem1.cpu().numpy(), found, off1.cpu().numpy())
    if not np.array_equal(np.asarray(grouped.cpu()), want_grouped):
        mismatches.append("group_pixels: GPU != CPU")
    group1 = _time(lambda: pdl_post.group_pixels(sem1, found, off1), args.warmup, args.repeat)
    # fuse alone on that instance map (merge's second phase on it: one synchronisation).
    fused = pdl_post.fuse(sem1, grouped)
    want_fused = pdl_post.fuse(sem1.cpu().numpy(), want_grouped)
    if not np.array_equal(np.asarray(fused.cpu()), want_fused):
        mismatches.append("fuse: GPU != CPU")
    fuse1 = _time(lambda: pdl_post.fuse(sem1, grouped), args.warmup, args.repeat)
    # COCO's 41 x 41 NMS window (presets.COCO) on the same scene: the per-pixel window test.
    coco_nms1 = _time(
        lambda: pdl_post.merge(sem1, ctr1, off1, **{**kw, "nms_kernel": 41}),
        args.warmup,
        args.repeat,
    )
    # Windows above 41 take the separable filter (4 more kernels, 3 heatmap-sized buffers).
    separable_nms1 = _time(
        lambda: pdl_post.merge(sem1, ctr1, off1, **{**kw, "nms_kernel": 43}),
        args.warmup,
        args.repeat,
    )
    # Every peak kept (top_k=None): 2000 centres requested take the grid search and the
    # numbering by sort (above 256 centres per image); a heatmap flat above the threshold makes
    # every pixel a centre (few calls: what was O(pixels x K) before the grid).
    many = synthetic.make_scene(h, w, 2000, seed=0)
    sem_many, ctr_many, off_many = upload([many.sem.astype(np.int32), many.ctr, many.off])
    many1 = _time(
        lambda: pdl_post.merge(sem_many, ctr_many, off_many, **all_kw), args.warmup, args.repeat
    )
    flat1 = _time(lambda: pdl_post.merge(sem1, flat_ctr, off1, **all_kw), 1, 5)
    # ... and postprocess with logits there: score sums over K + C slots per image, summed in
    # chunks of row blocks (1 GiB of partial sums at a time: 5 chunks, 4.3 GB in one go before).
    flat_scores1 = _time(lambda: pdl_post.postprocess(logits1, flat_ctr, off1, **all_kw), 1, 5)
    shift = 70_000
    big1 = sem1.long() + shift
    big_kw = {**kw, "thing_ids": [t + shift for t in kw["thing_ids"]]}
    compacted1 = _time(lambda: pdl_post.merge(big1, ctr1, off1, **big_kw), args.warmup, args.repeat)

    dense_kw = {key: kw[key] for key in ("thing_ids", "label_divisor", "stuff_area", "threshold")}
    dense_kw.update(nms_kernel=kw["nms_kernel"], top_k=kw["top_k"])

    # The detectron2 drop-in on what detectron2 hands it: int64 labels [1, H, W] on the GPU
    # (postprocess, then int64 ids and the centres as tensors on the device).
    from pdl_post.detectron2 import get_panoptic_segmentation

    d2_sem = sem1.long()[None]
    d2_positional = [kw[key] for key in ("thing_ids", "label_divisor", "stuff_area", "void_label")]
    d2_args = (d2_sem, ctr1, off1, *d2_positional)
    d2_kw = {key: kw[key] for key in ("threshold", "nms_kernel", "top_k")}
    d2_pan, _ = get_panoptic_segmentation(*d2_args, **d2_kw)
    dropin1 = _time(lambda: get_panoptic_segmentation(*d2_args, **d2_kw), args.warmup, args.repeat)

    def dense():
        return panoptic_dense_torch(sem1.long(), ctr1, off1, **dense_kw)

    dense_out, _ = dense()
    same_as_d2 = np.array_equal(
        dense_out.cpu().numpy(),
        pdl_post.merge(sem1, ctr1, off1, topk_mode="detectron2", **kw).cpu().numpy(),
    ) and np.array_equal(dense_out.cpu().numpy(), d2_pan[0].cpu().numpy())
    if not same_as_d2:
        mismatches.append("dense torch != ours (topk_mode='detectron2') or the drop-in")
    dense1 = _time(dense, 1, args.dense_repeat)

    def floor_for(inputs):
        scratch = [torch.empty_like(t) for t in inputs]
        out_shape = inputs[0].shape

        def copy():
            for dst, src in zip(scratch, inputs):
                dst.copy_(src)
            torch.empty(out_shape, dtype=torch.int32, device=device).zero_()

        return copy

    floor1 = _time(floor_for([sem1, ctr1, off1]), args.warmup, args.repeat)
    floorb = _time(floor_for([semb, ctrb, offb]), args.warmup, args.repeat)
    floorb_row = _time_in_a_row(floor_for([semb, ctrb, offb]), args.warmup, args.repeat)

    name = torch.cuda.get_device_name(device)
    print(f"\nGPU: {name}; torch {torch.__version__}; pdl_post {pdl_post.__version__}")
    print(f"build: {pdl_post.build_info()['cuda_build']}")
    print(f"scene: synthetic {h}x{w}, {n} centres requested, K = {k} found; sem int32")
    print(f"median of {args.repeat} (dense: {args.dense_repeat}) after warm-up, CUDA events;")
    print("'in a row': per call of 10 calls queued back to back (throughput), beside that row's")
    print("copy floor timed the same way\n")
    floors = {"batch 1": floor1, f"batch {b}": floorb, f"batch {b}, in a row": floorb_row}
    rows = [  # (case, ms, the copy floor of its batch)
        ("ours, batch 1", ours1, floor1),
        ("dense torch, batch 1", dense1, floor1),
        ("copy floor, batch 1", floor1, floor1),
        (f"ours, batch {b}", oursb, floorb),
        (f"copy floor, batch {b}", floorb, floorb),
        (f"ours, batch {b}, in a row", oursb_row, floorb_row),
        (f"copy floor, batch {b}, in a row", floorb_row, floorb_row),
        *[
            (f"ours, {name} (not the default), {label}", ms, floors[label])
            for (name, label), ms in candidate_ms.items()
        ],
        ("ours postprocess, labels, batch 1", post1, floor1),
        ("ours postprocess, logits, batch 1", scores1, floor1),
        ("ours find_centers, batch 1", centers1, floor1),
        ("ours group_pixels, batch 1", group1, floor1),
        ("ours fuse, batch 1", fuse1, floor1),
        ("ours, nms_kernel=41 (COCO's window), batch 1", coco_nms1, floor1),
        ("ours, nms_kernel=43 (separable filter), batch 1", separable_nms1, floor1),
        (f"ours, class ids + {shift} (compacted), batch 1", compacted1, floor1),
        ("ours, detectron2 drop-in (int64 labels), batch 1", dropin1, floor1),
        ("ours, top_k=None, 2000 centres requested (grid search), batch 1", many1, floor1),
        ("ours, top_k=None, flat heatmap (a centre per pixel), batch 1", flat1, floor1),
        ("ours postprocess, logits, top_k=None, flat heatmap, batch 1", flat_scores1, floor1),
    ]
    print("| case | ms | x floor |")
    print("|---|---:|---:|")
    for label, ms, floor in rows:
        print(f"| {label} | {ms:.3f} | {ms / floor:.2f} |")
    print(f"\ndense torch equals ours (topk_mode='detectron2', and the drop-in): {same_as_d2}")
    if candidates:
        _print_candidates(candidate_ms, beside_ms)
    targets = [
        (f"batch 1 end to end <= 0.3 ms (got {ours1:.3f} ms)", ours1 <= 0.3),
        (
            f"batch {b} throughput within 3x of the copy floor's (calls in a row: got "
            f"{oursb_row / floorb_row:.2f}x; one call alone: {oursb / floorb:.2f}x)",
            oursb_row <= 3 * floorb_row,
        ),
        (f">= 50x faster than dense torch (got {dense1 / ours1:.1f}x)", dense1 >= 50 * ours1),
    ]
    print("\n| target | met |")
    print("|---|---|")
    for label, ok in targets:
        print(f"| {label} | {'yes' if ok else 'NO'} |")
    print(
        "\ncorrectness: " + ("; ".join(mismatches) if mismatches else "GPU == CPU on every check")
    )
    _host_side(merge_of("batch 1"), device, args)
    _host_phases({label: merge_of(label) for label in on_device}, args)
    if args.profile:
        _profile(merge_of("batch 1"), args.profile, "b1", args.trace)
        _profile(merge_of(f"batch {b}"), args.profile, f"b{b}", args.trace)
        on = [settings for name, settings in candidates.items() if name != SPECULATION_OFF]
        if on:  # the candidates' kernels' own times, beside the default's
            with _switched(on[-1]):  # all candidates where there are several
                _profile(merge_of(f"batch {b}"), args.profile, f"b{b}-candidates", args.trace)
            _candidates_kernel_times(merge_of(f"batch {b}"), candidates, args.profile, b)
    return 1 if mismatches else 0


# The default's alternative timed beside the candidates: merge's second phase queued only after
# its counts arrive (set_cuda_speculation off), against the speculative phase (cuda_pipeline.h).
SPECULATION_OFF = "second phase after the counts (speculation off)"


def _candidates() -> dict[str, list[tuple[str, bool]]]:
    """The settings (hook, value) of each candidate this build has (pdl_post._cuda.CANDIDATES, on),
    alone, and of all of them together ("all candidates"); then the speculation turned off."""
    import pdl_post
    from pdl_post._cuda import CANDIDATES

    have = {name: [(h, True)] for name, (h, _) in CANDIDATES.items() if hasattr(pdl_post._core, h)}
    if len(have) > 1:
        have["all candidates"] = [s for settings in have.values() for s in settings]
    if hasattr(pdl_post._core, "_set_cuda_speculation"):
        have[SPECULATION_OFF] = [("_set_cuda_speculation", False)]
    return have


@contextlib.contextmanager
def _switched(settings):
    """The hooks set as given inside the block, as they were after it."""
    import pdl_post

    previous = [(h, getattr(pdl_post._core, h)(value)) for h, value in settings]
    try:
        yield
    finally:
        for h, was in reversed(previous):
            getattr(pdl_post._core, h)(was)


def _print_candidates(candidate_ms, beside_ms) -> None:
    """Each candidate's time over the default's timed in the same rounds, row by row (below 1:
    the candidate is faster), for the decision the candidates wait for; the speculation's row is
    its alternative's time over the default's (above 1: the speculative phase is faster)."""
    labels = list(dict.fromkeys(label for _, label in candidate_ms))
    print(
        "\ncandidates: time / the default's time in alternating rounds (below 1.00: faster; "
        f"the default's ms in brackets; in the row '{SPECULATION_OFF}', above 1.00: the "
        "speculative default is faster)"
    )
    print("| candidate | " + " | ".join(labels) + " |")
    print("|---|" + "---:|" * len(labels))
    for name in dict.fromkeys(name for name, _ in candidate_ms):
        cells = [
            f"{candidate_ms[name, label] / beside_ms[name, label]:.2f} "
            f"({beside_ms[name, label]:.3f})"
            for label in labels
        ]
        print(f"| {name} | " + " | ".join(cells) + " |")


def _host_side(merge1, device, args) -> None:
    """The host's share of batch 1 beside the runtime's floors, for the next session's leads."""
    print("\nhost side (perf_counter, median; the device drained before each call):")
    try:
        rows = [
            (
                "ours, batch 1: the merge call on the host (returns before the device)",
                _host_time(merge1, args.warmup, args.repeat),
            ),
            *_runtime_floors(device, args.warmup, args.repeat),
        ]
    except Exception as e:  # diagnostics only: the timings above stand without them
        print(f"unavailable here: {type(e).__name__}: {e}")
        return
    print("| what | ms |")
    print("|---|---:|")
    for label, ms in rows:
        print(f"| {label} | {ms:.4f} |")


def _host_phases(calls, args) -> None:
    """Where a merge call's host time goes: the Python before the job (the output's allocation
    included), the first phase's launches, the Python after them (while the device works), then
    the core's wait for the label range and peak counts with the second phase's launches (where
    the label range fits the output allocated beforehand, no return to Python between them; on
    sizes seen before, the speculative phase's launches come first, then the wait) and what
    follows; perf_counter medians, the device drained before each call."""
    import time

    import torch

    from pdl_post import _cuda

    stamps = {}
    core = _cuda._core
    job_class = core.CudaMerge

    class TimedJob:
        def __init__(self, *a):
            stamps["first phase's launches"] = time.perf_counter()
            self.job = job_class(*a)
            stamps["Python"] = time.perf_counter()

        def label_range(self):
            return self.job.label_range()

        def release(self):
            self.job.release()

        def _timed(self, method: str, *a):
            stamps.setdefault("second phase and wait", time.perf_counter())
            try:
                return getattr(self.job, method)(*a)
            finally:
                stamps["after"] = time.perf_counter()

        def finish_if_fits(self, *a):
            return self._timed("finish_if_fits", *a)

        def finish(self, *a):
            return self._timed("finish", *a)

    order = ["before", "first phase's launches", "Python", "second phase and wait", "after"]
    print("\nhost phases of a merge call (perf_counter, us, median; the device drained first):")
    print("| call | " + " | ".join(order) + " | whole |")
    print("|---|" + "---:|" * (len(order) + 1))
    core.CudaMerge = TimedJob
    try:
        for label, fn in calls.items():
            rows = []
            for _ in range(args.warmup + args.repeat):
                torch.cuda.synchronize()
                start = time.perf_counter()
                stamps.clear()
                stamps["before"] = start
                fn()
                if len(stamps) < len(order):
                    raise RuntimeError("the call did not take the CUDA path")
                end = time.perf_counter()
                marks = [stamps[name] for name in order[1:]] + [end]
                at = [stamps["before"], *marks]
                rows.append(
                    [(at[i + 1] - at[i]) * 1e6 for i in range(len(order))] + [(end - start) * 1e6]
                )
            rows = rows[args.warmup :]
            medians = [statistics.median(column) for column in zip(*rows)]
            print(f"| {label} | " + " | ".join(f"{m:.1f}" for m in medians) + " |")
    except Exception as e:  # diagnostics only
        print(f"unavailable here: {type(e).__name__}: {e}")
    finally:
        core.CudaMerge = job_class
        torch.cuda.synchronize()


def _profile(fn, calls: int, label: str = "b1", trace: str | None = None) -> None:
    """Where a call's time goes (kernels by device time, runtime calls by host time), for the
    next session; with ``trace`` the Chrome trace too (kernels and runtime calls on a timeline)."""
    import torch

    print(f"\nprofile of {calls} calls, {label} (torch.profiler):")
    try:
        activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
        prof = _profiled(fn, calls, activities)
        averages = prof.key_averages()
        for sort_by in ("self_device_time_total", "self_cpu_time_total"):
            print(averages.table(sort_by=sort_by, row_limit=30, max_name_column_width=100))
        if trace:
            prof.export_chrome_trace(f"{trace}-{label}.json")
            _print_phase_gaps(f"{trace}-{label}.json")
    except Exception as e:  # the profiler is optional: the timings above stand without it
        print(f"profiler unavailable here: {type(e).__name__}: {e}")


def short_kernel_name(key: str) -> str:
    """A profiler key without its namespaces, template arguments and parameters:
    "void pdl_post::cuda::(anonymous namespace)::vote_kernel<int, float, false, true, 2>(...)" ->
    "vote_kernel" (so that a candidate's instantiation shares its row with the default's);
    "Memcpy DtoH (Device -> Pinned)" -> "Memcpy DtoH"."""
    name = key.removeprefix("void ").replace("(anonymous namespace)::", "")
    for stop in ("<", "("):
        name = name.split(stop)[0]
    return name.strip().split("::")[-1]


def _profiled(fn, calls: int, activities):
    """torch.profiler's record of ``calls`` calls of ``fn``, after three unrecorded ones."""
    import torch

    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=activities, acc_events=True) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    return prof


def _kernel_times(fn, calls: int) -> dict[str, float]:
    """Device time per call (us) of each kernel, copy and memset of ``fn`` (torch.profiler), by
    short_kernel_name."""
    import torch

    times: dict[str, float] = {}
    prof = _profiled(fn, calls, [torch.profiler.ProfilerActivity.CUDA])
    for event in prof.key_averages():
        if event.self_device_time_total > 0:
            name = short_kernel_name(event.key)
            times[name] = times.get(name, 0.0) + event.self_device_time_total / calls
    return times


def kernel_times_table(columns: dict[str, dict[str, float]]) -> list[str]:
    """Markdown rows: a column per setting (the default's first), a row per kernel taking at least
    0.5 us per call in one of them, the heaviest of the default's first, and their sum."""
    names = sorted(
        {n for times in columns.values() for n, us in times.items() if us >= 0.5},
        key=lambda n: -next(iter(columns.values())).get(n, 0.0),
    )
    lines = ["| kernel | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    for n in names:
        lines.append(
            f"| {n} | " + " | ".join(f"{t.get(n, 0.0):.1f}" for t in columns.values()) + " |"
        )
    sums = (f"{sum(t.values()):.1f}" for t in columns.values())
    lines.append("| all device work | " + " | ".join(sums) + " |")
    return lines


def _candidates_kernel_times(fn, candidates, calls: int, batch: int) -> None:
    """Each candidate's kernels beside the default's (us per call at batch ``batch``): what the
    decision on a candidate reads besides its time (one profile per setting)."""
    print(f"\nkernels per call at batch {batch}, each candidate alone (us, torch.profiler):")
    try:
        columns = {"default": _kernel_times(fn, calls)}
        for name, settings in candidates.items():
            if name not in (SPECULATION_OFF, "all candidates"):
                with _switched(settings):
                    columns[name] = _kernel_times(fn, calls)
        if not any(columns.values()):
            print("no device work in the profiles")
            return
        print("\n".join(kernel_times_table(columns)))
    except Exception as e:  # the profiler is optional: the timings above stand without it
        print(f"profiler unavailable here: {type(e).__name__}: {e}")


_DEVICE_WORK = ("kernel", "gpu_memcpy", "gpu_memset")  # the trace's device activities


def phase_gaps(events: list[dict]) -> list[dict]:
    """Per call, from a Chrome trace's events: the device's time from the end of the first
    phase's read-back (the last copy to the host before a vote kernel) to the vote's start, what
    the device ran in between (the peaks, the memsets; the tables' upload too where the second
    phase was not speculative: a speculative one's goes before the read-back) and the rest, where
    it idled waiting for the host. Microseconds, one dict per vote kernel."""
    device = sorted(
        (e for e in events if e.get("ph") == "X" and e.get("cat") in _DEVICE_WORK),
        key=lambda e: e["ts"],
    )
    gaps, read_back_end = [], None
    for e in device:
        name = e.get("name", "")
        if e["cat"] == "gpu_memcpy" and "DtoH" in name:
            read_back_end, busy = e["ts"] + e["dur"], 0.0
        elif read_back_end is None:
            continue
        elif "vote_kernel" in name:
            gap = e["ts"] - read_back_end
            gaps.append({"gap": gap, "busy": busy, "idle": gap - busy})
            read_back_end = None
        else:  # device work between the read-back and the vote, clipped to that span
            busy += e["dur"] - max(0.0, read_back_end - e["ts"])
    return gaps


def _print_phase_gaps(path: str) -> None:
    """The median of phase_gaps over the calls of a trace (profiled: the profiler adds host time
    to every runtime call, so the idle part reads longer than in an unprofiled call)."""
    import json

    with open(path) as f:
        gaps = phase_gaps(json.load(f).get("traceEvents", []))
    if not gaps:
        print("between the phases: no read-back followed by a vote kernel in the trace")
        return
    medians = {k: statistics.median(g[k] for g in gaps) for k in ("gap", "busy", "idle")}
    print(
        f"between the phases (trace, median of {len(gaps)} calls, us): read-back end -> vote "
        f"start {medians['gap']:.1f}, device busy {medians['busy']:.1f}, device idle "
        f"{medians['idle']:.1f}"
    )


if __name__ == "__main__":
    sys.exit(main())
