"""The host emulator of CUDA that runs the CUDA path's sources on machines without a GPU.

test_cuda.py runs the real kernels on it (the ``emulated`` device); here the emulator itself:
its intrinsics and cub shims give CUDA's answers, every rule it promises to check is reported
(cpp/cuda_emulation/selftest.cu breaks each one on purpose), and the CUDA path's output does not
depend on the order in which it runs threads and blocks.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

import pdl_post
from conftest import assert_results_equal
from devices import forget_capacities
from pdl_post import synthetic

emulation = pytest.importorskip(
    "pdl_post._cuda_emulation", reason="built only with PDL_POST_CUDA_EMULATION=ON (make test)"
)


@pytest.fixture(autouse=True)
def clean_emulator():
    seed = emulation.schedule_seed()
    emulation.take_violations()
    forget_capacities()
    yield
    emulation.set_schedule_seed(seed)
    emulation.take_violations()


def test_intrinsics_and_cub_shims_give_cuda_answers():
    for seed in (0, 1, 2):
        emulation.set_schedule_seed(seed)
        error, out = emulation.selftest("correct_collectives")
        assert error == ""
        rows = np.array(out).reshape(64, 7)
        t = np.arange(64)
        np.testing.assert_array_equal(rows[:, 0], t * (t + 1) // 2)  # exclusive sum of t + 1
        assert (rows[:, 1] == 64 * 65 // 2).all()  # block aggregate in every thread
        assert rows[0, 2] == 63 * 64 // 2  # BlockReduce: thread 0 holds the sum
        assert (rows[:, 3] == 1).all()  # __syncthreads_or
        assert (rows[:, 4].astype(np.uint32) == 0xAAAAAAAA).all()  # ballot of the odd lanes
        lane = t % 32
        same = [sum(1 << j for j in range(32) if j % 3 == k % 3) for k in lane]
        np.testing.assert_array_equal(rows[:, 5].astype(np.uint32), np.array(same, np.uint32))
        np.testing.assert_array_equal(rows[:, 6], (t // 32 * 32 + (lane + 1) % 32) * 10)
    assert emulation.take_violations() == []


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("barrier_after_exit", r"deadlock: 63 threads wait at .*selftest\.cu:\d+; 1 of 64 threads"),
        ("barriers_at_two_sites", r"reaches the barrier at .*selftest\.cu:\d+ while other"),
        ("ballot_outside_its_mask", r"lane \d+ calls a warp intrinsic whose mask 0x0000ffff"),
        ("ballot_with_a_missing_lane", r"deadlock: 31 threads wait at .*selftest\.cu"),
        ("write_past_the_end", r"past the end of a device allocation of 1792 bytes"),
        ("scan_storage_reused_without_barrier", r"temp storage reused without a __syncthreads"),
        ("dynamic_shared_overrun", r"past the end of the block's 256 bytes of dynamic shared"),
        ("stack_overflow", r"thread \d+: stack overflow \(262144 bytes per thread\)"),
        ("null_pointer_write", r"thread \d+: invalid memory access at 0x[0-9a-f]+$"),
    ],
)
def test_broken_rules_are_reported(case, message):
    error, out = emulation.selftest(case)
    assert error.startswith("cudaErrorLaunchFailure")
    assert out[:32] == [0] * 32  # the first warp never got past the broken rule
    violations = emulation.take_violations()
    assert len(violations) == 1
    assert violations[0].startswith(f"{case} block (0,0,0): ")
    assert re.search(message, violations[0]), violations[0]
    assert re.search(message, error)


@pytest.mark.parametrize(
    ("case", "error"),
    [
        ("too_many_threads", r"cudaErrorInvalidConfiguration: .*block \(2048,1,1\)"),
        ("too_much_dynamic_shared_memory", r"cudaErrorInvalidValue: .*65536 bytes of dynamic"),
    ],
)
def test_launches_cuda_refuses_are_refused(case, error):
    message, _ = emulation.selftest(case)
    assert re.match(error, message), message


def test_fresh_device_memory_is_poisoned():
    error, out = emulation.selftest("read_unwritten_memory")
    assert error == ""
    assert (np.array(out[:64], np.int64) & 0xFFFFFFFF == 0xA5A5A5A5).all()


def test_unsynchronised_code_depends_on_the_schedule():
    poison = np.array(0xCDCDCDCD, np.uint32).view(np.int32).item()  # unwritten shared memory
    answers = set()
    for seed in (0, 1, 2, 3):
        emulation.set_schedule_seed(seed)
        error, out = emulation.selftest("unsynchronised_neighbour_read")
        assert error == ""
        answers.add(tuple(out[:64]))
    # In index order thread t reads values[t + 1] before thread t + 1 writes it; shuffled orders
    # read some written values.
    assert tuple(poison if t < 63 else 0 for t in range(64)) in answers
    assert len(answers) > 1


def test_static_shared_memory_is_poisoned_at_every_block():
    # Every run starts from poison, not from what the previous launch left behind.
    emulation.set_schedule_seed(0)
    first = emulation.selftest("unsynchronised_neighbour_read")[1][:64]
    assert emulation.selftest("unsynchronised_neighbour_read")[1][:64] == first


def test_cuda_path_does_not_depend_on_the_schedule(emulated_cuda):
    from devices import HostCudaArray

    s = synthetic.make_scene(72, 100, 40, seed=3, logits=True)
    b = synthetic.make_batch(3, 40, 70, 8, seed=5)
    expected = pdl_post.merge(s.logits, s.ctr, s.off, stuff_area=8)
    expected_batch = pdl_post.merge(b.sem, b.ctr, b.off, top_k=5, stuff_area=8)
    for seed in (0, 7, 12345):
        emulation.set_schedule_seed(seed)
        out = pdl_post.merge(*(HostCudaArray(a) for a in (s.logits, s.ctr, s.off)), stuff_area=8)
        np.testing.assert_array_equal(out.a, expected)
        out = pdl_post.merge(
            *(HostCudaArray(a) for a in (b.sem, b.ctr, b.off)), top_k=5, stuff_area=8
        )
        np.testing.assert_array_equal(out.a, expected_batch)


def test_a_gpu_the_build_does_not_cover_gets_a_clear_error(emulated_cuda):
    # The emulated build stands for one compiled for 90-real;90-virtual: a Turing GPU (7.5) has no
    # kernel image for it. The error names the device, its architecture, the build's and the fix,
    # before any launch; a GPU it covers through PTX (10.0) runs it.
    from devices import HostCudaArray

    s = synthetic.make_scene(48, 64, 6, seed=2)
    inputs = [HostCudaArray(a) for a in (s.sem, s.ctr, s.off)]
    try:
        emulation.set_compute_capability(7, 5)
        emulation.take_counters()
        with pytest.raises(RuntimeError) as error:
            pdl_post.merge(*inputs)
        assert emulation.take_counters().get("launches", 0) == 0
        message = str(error.value)
        assert "CUDA device 0 has compute capability 7.5" in message
        assert "architectures 90-real,90-virtual (host emulation)" in message
        assert 'PDL_POST_CUDA_ARCHITECTURES="75-real;90-virtual"' in message
        emulation.set_compute_capability(10, 0)
        np.testing.assert_array_equal(
            pdl_post.merge(*inputs).a, pdl_post.merge(s.sem, s.ctr, s.off)
        )
    finally:
        emulation.set_compute_capability(9, 0)


def test_a_stream_being_captured_into_a_graph_is_refused_and_left_intact(emulated_cuda):
    # The CUDA path synchronises (its sizes come from the data), which a capture does not allow;
    # CUDA would fail the first synchronisation and invalidate the caller's capture. It is
    # refused by name before any work, the capture still active; empty inputs need no work.
    from devices import HostCudaArray

    s = synthetic.make_scene(48, 64, 6, seed=2)
    inputs = [HostCudaArray(a) for a in (s.sem, s.ctr, s.off)]
    try:
        emulation.set_stream_capture(1)
        calls = (
            pdl_post.merge,
            pdl_post.postprocess,
            lambda sem, ctr, off: pdl_post.find_centers(ctr),
        )
        for call in calls:
            emulation.take_counters()
            with pytest.raises(RuntimeError, match="being captured into a CUDA graph"):
                call(*inputs)
            counts = emulation.take_counters()
            assert counts.get("launches", 0) == counts.get("synchronisations", 0) == 0
            assert emulation.stream_capture() == 1
        empty = [HostCudaArray(a[..., :0]) for a in (s.sem, s.ctr, s.off)]
        assert pdl_post.merge(*empty).a.shape == (48, 0)
        centers, scores = pdl_post.find_centers(empty[1])
        assert centers.a.shape == (0, 2) and scores.a.shape == (0,)
    finally:
        emulation.set_stream_capture(0)
    np.testing.assert_array_equal(pdl_post.merge(*inputs).a, pdl_post.merge(s.sem, s.ctr, s.off))


def test_the_emulator_refuses_synchronisation_during_a_capture_as_cuda_does(emulated_cuda):
    # What the check above spares the caller: without it the first synchronisation fails with
    # CUDA's error and the capture is invalidated. Shown on the emulator's own rule, by a call
    # that reaches a synchronisation (the capture is switched on after the check has passed).
    from devices import HostCudaArray

    s = synthetic.make_scene(48, 64, 6, seed=2)
    inputs = [HostCudaArray(a) for a in (s.sem, s.ctr, s.off)]
    original = emulation.CudaMerge

    def capture_after_the_check(*args):
        job = original(*args)  # the first phase's launches run uncaptured, its sync comes later
        emulation.set_stream_capture(1)
        return job

    try:
        pdl_post._core.CudaMerge = capture_after_the_check
        with pytest.raises(RuntimeError, match="cudaErrorStreamCaptureUnsupported"):
            pdl_post.merge(*inputs)
        assert emulation.stream_capture() == 2  # invalidated
    finally:
        pdl_post._core.CudaMerge = original
        emulation.set_stream_capture(0)


def test_synchronisations_copies_and_launches_per_call(emulated_cuda):
    # The design (cpp/include/pdl_post/cuda_pipeline.h): merge synchronises the stream once
    # (label range and peak counts), with one small copy to the device and one back, and returns
    # with the rest queued; postprocess adds one, after one copy back of the error flags, centres
    # and segments together (two in all; it took three, and up to 4 + B copies back). Each phase
    # takes its scratch arrays from one pool allocation (cuda_common.cuh's Scratch). A batch
    # runs in one pass: the number of launches does not grow with it. A merge on a size seen
    # before queues its second phase speculatively (cuda_pipeline.h): the same runtime calls and
    # one launch more, its plan's check.
    from devices import HostCudaArray

    launches = {}
    for batch in (1, 8):
        b = synthetic.make_batch(batch, 48, 64, 6, seed=batch, logits=True)
        for name in ("merge", "postprocess", "merge again"):
            for sem in (b.sem, b.logits):
                if name != "merge again":
                    forget_capacities()
                else:  # the merge before taught it this size
                    pdl_post.merge(*(HostCudaArray(a) for a in (sem, b.ctr, b.off)), stuff_area=8)
                emulation.take_counters()
                getattr(pdl_post, name.split()[0])(
                    *(HostCudaArray(a) for a in (sem, b.ctr, b.off)), stuff_area=8
                )
                counts = emulation.take_counters()
                merge = name != "postprocess"
                assert counts["synchronisations"] == (1 if merge else 2)
                assert counts["host_to_device_copies"] == 1
                assert counts["device_to_host_copies"] == (1 if merge else 2)
                assert counts.get("launches of plan_check_kernel", 0) == (name == "merge again")
                assert counts["pool_allocations"] == 2
                assert counts.get("allocations", 0) == 0
                # the histogram's: the error flags start with the tables, the scan's end in a kernel
                assert counts["memsets"] == 1
                # each piece guarded on its own (no peak list or selection: every peak is kept)
                assert counts["scratch_pieces"] >= 24
                launches.setdefault((name, sem.dtype.kind), set()).add(counts["launches"])
    assert all(len(n) == 1 for n in launches.values()), launches
    for kind in "if":
        (speculative,), (merge,) = launches["merge again", kind], launches["merge", kind]
        assert speculative == merge + 1


class _RecordedJob:
    """Wraps the emulated CudaMerge and records which of its methods the Python layer calls."""

    calls: list
    last = None

    def __init__(self, *args):
        self.job = emulation.CudaMerge(*args)
        _RecordedJob.last = self
        self.calls = []

    def __getattr__(self, name):
        method = getattr(self.job, name)

        def recorded(*args):
            self.calls.append(name)
            return method(*args)

        return recorded


@pytest.mark.parametrize(
    ("options", "calls", "dtype"),
    [
        ({}, ["finish_if_fits"], np.int32),
        ({"void_label": -(2**40)}, ["finish_if_fits"], np.int64),  # guessed int64 at once
        ({"label_divisor": 2**27}, ["finish_if_fits", "label_range", "finish"], np.int64),
        ({"int32_edge": 0}, ["finish_if_fits"], np.int32),  # the largest id is 2**31 - 4
        ({"int32_edge": 1}, ["finish_if_fits", "label_range", "finish"], np.int64),
        ({"label_divisor": 2**62}, ["finish_if_fits", "label_range", "release"], None),
        ({"negative": True}, ["finish_if_fits", "label_range", "release"], None),
    ],
)
def test_the_second_phase_follows_the_first_without_python_when_the_output_fits(
    emulated_cuda, monkeypatch, options, calls, dtype
):
    # The output is allocated before the job in the dtype of the smallest label range, and the
    # core goes from the first phase's synchronisation straight to the second phase when the ids
    # fit it (cuda_pipeline.h): no return to Python while the device idles. Ids that need int64
    # (label_divisor 2**27: 19 x 2**27 > 2**31) come back for a new output and finish; ids
    # beyond int64 or negative come back for the error, and the job is released.
    from devices import HostCudaArray
    from pdl_post import _core

    monkeypatch.setattr(_core, "CudaMerge", _RecordedJob)
    s = synthetic.make_scene(48, 64, 12, seed=4)
    options = dict(options, stuff_area=8)
    sem = s.sem.copy()
    if options.pop("negative", False):
        sem[5, 6] = -3
    if "int32_edge" in options:  # the largest label_divisor whose ids fit int32, and one more
        options["label_divisor"] = 2**31 // (int(sem.max()) + 1) + options.pop("int32_edge")
    emulation.take_counters()
    try:
        out = pdl_post.merge(*(HostCudaArray(a) for a in (sem, s.ctr, s.off)), **options).a
    except ValueError as error:
        out = error
    assert _RecordedJob.last.calls == calls
    assert emulation.take_counters()["synchronisations"] == 1
    try:
        expected = pdl_post.merge(sem, s.ctr, s.off, **options)
    except ValueError as error:
        assert dtype is None and isinstance(out, ValueError) and str(out) == str(error)
    else:
        assert out.dtype == dtype == expected.dtype
        np.testing.assert_array_equal(out, expected)
        with pytest.raises(ValueError, match="already called"):
            _RecordedJob.last.job.finish_if_fits(None, 10**6, False, False)


def test_read_backs_use_page_locked_blocks_kept_between_calls(emulated_cuda):
    # The synchronisations' copies to the host go to page-locked memory (cuda_common.cuh's
    # HostTransferBuffer), from blocks kept between calls, and so does a speculative second
    # phase's upload (cuda_pipeline.h); cuda_release_memory frees them; where the runtime grants
    # no page-locked memory the copies go from or to pageable memory, with the same answer.
    from devices import HostCudaArray

    emulation.cuda_release_memory()
    assert emulation.live_host_allocations() == 0
    s = synthetic.make_scene(48, 64, 12, seed=4)
    inputs = [HostCudaArray(a) for a in (s.sem, s.ctr, s.off)]
    expected = pdl_post.postprocess(s.sem, s.ctr, s.off, stuff_area=8)
    emulation.take_counters()
    for _ in range(3):
        out = pdl_post.merge(*inputs, stuff_area=8)
        np.testing.assert_array_equal(out.a, expected.panoptic)
        result = pdl_post.postprocess(*inputs, stuff_area=8)
        assert result.segments == expected.segments
    # Two blocks: the speculative merges (after the first call) stage their upload in one while
    # the header's read-back goes to the other; the other read-backs, each taken while both are
    # free again, reuse them (all fit 4 KiB here).
    assert emulation.take_counters().get("host_allocations", 0) == 2
    assert emulation.live_host_allocations() == 2
    emulation.cuda_release_memory()
    assert emulation.live_host_allocations() == 0
    assert emulation.take_counters()["host_frees"] == 2

    emulation.take_timeline()
    emulation.inject_failure("cudaHostAlloc")
    out = pdl_post.merge(*inputs, stuff_area=8)  # the upload staged in pageable memory
    np.testing.assert_array_equal(out.a, expected.panoptic)
    assert "plan_check_kernel" in emulation.take_timeline()
    assert emulation.pending_failures() == 0
    assert emulation.live_host_allocations() == 1  # taken for the header's read-back
    emulation.cuda_release_memory()

    forget_capacities()  # not speculative: the first read-back is the first block asked for
    emulation.inject_failure("cudaHostAlloc")
    result = pdl_post.postprocess(*inputs, stuff_area=8)  # pageable at the first read-back
    np.testing.assert_array_equal(result.panoptic.a, expected.panoptic)
    assert result.segments == expected.segments
    assert emulation.pending_failures() == 0
    assert emulation.live_host_allocations() == 1  # taken at the second read-back
    emulation.cuda_release_memory()


def test_nms_windows_above_41_take_the_separable_filter(emulated_cuda):
    # Up to COCO's 41 x 41 the CUDA path tests each pixel against its window; above, where that
    # would read k^2 values per local maximum, it computes peak flags with the separable filter
    # first (4 more kernels: row blocks, row maxima, column blocks, flags). Both give the CPU's
    # peaks (tests/test_merge.py); this pins which one runs.
    from devices import HostCudaArray

    s = synthetic.make_scene(48, 64, 6, seed=3)
    launches = {}
    for kernel in (7, 41, 43, 301):
        forget_capacities()
        emulation.take_counters()
        pdl_post.merge(*(HostCudaArray(a) for a in (s.sem, s.ctr, s.off)), nms_kernel=kernel)
        launches[kernel] = emulation.take_counters()["launches"]
    assert launches[7] == launches[41]
    assert launches[43] == launches[301] == launches[41] + 4


@pytest.mark.parametrize(
    ("label_divisor", "top_k", "synchronisations"),
    [
        (1000, 200, 1),
        (1000, None, 1),  # the bound is then the image's 10 peaks
        (10, None, 2),
        (11, None, 1),
        (5, 4, 1),
        (5, 5, 2),
        (2, 1, 1),
        (2, None, 2),  # the error: class 13 has 2 instances
    ],
)
def test_merge_reads_errors_back_only_when_an_image_keeps_label_divisor_centres(
    emulated_cuda, label_divisor, top_k, synchronisations
):
    # A class can number label_divisor instances (the error found on the device) only in an
    # image keeping that many centres; below that bound merge returns without the final
    # synchronisation. The bound is the smaller of top_k and the image's peaks (10 here).
    from devices import HostCudaArray

    s = synthetic.make_scene(48, 64, 12, seed=4)
    kw = {"label_divisor": label_divisor, "top_k": top_k, "stuff_area": 8}
    emulation.take_counters()
    try:
        out = pdl_post.merge(*(HostCudaArray(a) for a in (s.sem, s.ctr, s.off)), **kw).a
    except ValueError as error:
        out = error
    assert emulation.take_counters()["synchronisations"] == synchronisations
    try:
        expected = pdl_post.merge(s.sem, s.ctr, s.off, **kw)
    except ValueError as error:
        assert isinstance(out, ValueError) and str(out) == str(error)
        assert "label_divisor=2" in str(error)
    else:
        np.testing.assert_array_equal(out, expected)


def test_merge_waits_unless_one_array_library_owns_every_input(emulated_cuda):
    # Returning with the work queued relies on one library's stream order: the inputs' memory
    # is reused, and the output read, only by work queued after the call's. Inputs known only by
    # their __cuda_array_interface__ (their owner may free them on another stream), alone or beside
    # a library's arrays, make merge wait for the device.
    from devices import HostCudaArray, InterfaceOnlyArray

    s = synthetic.make_scene(48, 64, 12, seed=4)
    expected = pdl_post.merge(s.sem, s.ctr, s.off)
    for kinds, synchronisations in [
        ((HostCudaArray,) * 3, 1),
        ((InterfaceOnlyArray,) * 3, 2),
        ((HostCudaArray, InterfaceOnlyArray, HostCudaArray), 2),
    ]:
        emulation.take_counters()
        out = pdl_post.merge(*(kind(a) for kind, a in zip(kinds, (s.sem, s.ctr, s.off))))
        assert emulation.take_counters()["synchronisations"] == synchronisations, kinds
        np.testing.assert_array_equal(out.a, expected)


def _stand_in_cupy(monkeypatch, current: list):
    """A CuPy module with what the dispatch asks of it: Device (current[0] is the current
    device) and the current stream (handle 0). Returns its Device class."""
    import sys
    import types

    class Device:
        def __init__(self, device=None):
            self.id = current[0] if device is None else device

        def __enter__(self):
            self.previous, current[0] = current[0], self.id

        def __exit__(self, *exc):
            current[0] = self.previous

    stream = types.SimpleNamespace(ptr=0)
    cuda = types.SimpleNamespace(Device=Device, get_current_stream=lambda: stream)
    monkeypatch.setitem(sys.modules, "cupy", types.SimpleNamespace(cuda=cuda))
    return Device


def _record_stream_waits(monkeypatch) -> list:
    """(device, stream, producer) of every cuda_stream_wait, which still runs on the emulator."""
    from pdl_post import _core

    waits, wait = [], _core.cuda_stream_wait
    monkeypatch.setattr(_core, "cuda_stream_wait", lambda *a: (waits.append(a), wait(*a))[1])
    return waits


def test_conversions_on_another_librarys_stream_are_waited_for(emulated_cuda, monkeypatch):
    # CuPy arrays beside torch tensors (merge, then group_pixels): the call runs on torch's
    # stream, but CuPy made its
    # arrays, and widens them, on its own. The kernels must wait for CuPy's stream (an event, no
    # host synchronisation), and after a conversion the call must not return before the kernels
    # are done (CuPy may reuse the memory at once). Stand-ins: the test arrays play CuPy's part,
    # the streams are said to be torch's (5) and CuPy's (7).
    from devices import HostCudaArray
    from pdl_post import _cuda

    recorded = []
    waits = _record_stream_waits(monkeypatch)
    _stand_in_cupy(monkeypatch, [0])
    monkeypatch.setattr(_cuda, "_library", lambda x: "cupy" if type(x) is HostCudaArray else None)
    monkeypatch.setattr(_cuda, "_stream_library", lambda arrays: "torch")
    monkeypatch.setattr(_cuda, "_output_library", lambda arrays: "torch")
    monkeypatch.setattr(
        _cuda, "_library_stream", lambda library, device: {"torch": 5, "cupy": 7}[library]
    )
    monkeypatch.setattr(_cuda, "_record_stream", lambda arrays, device: recorded.append(arrays))
    s = synthetic.make_scene(48, 64, 12, seed=4, ctr_dtype=np.float64)
    ctr16 = s.ctr.astype(np.float16)  # widened to float32 by the "CuPy" arrays
    for ctr, expected_waits, synchronisations in [(s.ctr, [(0, 5, 7)], 1), (ctr16, [(0, 5, 7)], 2)]:
        waits.clear()
        recorded.clear()
        emulation.take_counters()
        out = pdl_post.merge(*(HostCudaArray(a) for a in (s.sem, ctr, s.off)))
        assert waits == expected_waits
        counters = emulation.take_counters()
        assert counters["synchronisations"] == synchronisations
        assert counters.get("stream_waits", 0) == len(expected_waits)
        # Inputs are marked as read by the stream only when the call returns before the device.
        assert len(recorded) == (1 if synchronisations == 1 else 0)
        np.testing.assert_array_equal(out.a, pdl_post.merge(s.sem, ctr, s.off))
    # group_pixels likewise (uint8 labels: no minimum to read back), with half-precision offsets.
    centers = pdl_post.find_centers(s.ctr)[0]
    labels = s.sem.astype(np.uint8)
    for off, synchronisations in [(s.off, 0), (s.off.astype(np.float16), 1)]:
        waits.clear()
        recorded.clear()
        emulation.take_counters()
        out = pdl_post.group_pixels(HostCudaArray(labels), centers, HostCudaArray(off))
        assert waits == [(0, 5, 7)]
        assert emulation.take_counters().get("synchronisations", 0) == synchronisations
        assert len(recorded) == (1 if synchronisations == 0 else 0)
        np.testing.assert_array_equal(out.a, pdl_post.group_pixels(labels, centers, off))


def _on_stream(a: np.ndarray, stream):
    """An interface-only array whose producer names `stream` (version 3)."""
    from devices import InterfaceOnlyArray

    x = InterfaceOnlyArray(a)
    x.__cuda_array_interface__["stream"] = stream
    return x


def test_the_streams_inputs_name_are_waited_for(emulated_cuda, monkeypatch):
    # __cuda_array_interface__ v3: the consumer must order its work after each array's stream.
    # The call runs on the first stream named (11); the kernels wait for every other one (an
    # event each), once per stream, before the first kernel.
    waits = _record_stream_waits(monkeypatch)
    s = synthetic.make_scene(48, 64, 12, seed=4)
    expected = pdl_post.merge(s.sem, s.ctr, s.off)
    for streams, expected_waits in [
        ((11, 11, None), []),
        ((11, 13, 13), [(0, 11, 13)]),
        ((None, 13, 2), [(0, 13, 2)]),
        ((11, 1, 2), [(0, 11, 1), (0, 11, 2)]),
    ]:
        waits.clear()
        emulation.take_counters()
        out = pdl_post.merge(*(_on_stream(a, st) for a, st in zip((s.sem, s.ctr, s.off), streams)))
        assert waits == expected_waits, streams
        assert emulation.take_counters().get("stream_waits", 0) == len(expected_waits)
        np.testing.assert_array_equal(out.a, expected)


def test_an_output_allocated_on_another_stream_is_waited_for(emulated_cuda, monkeypatch):
    # Interface-only inputs on stream 11 with the output allocated by an array library (torch
    # or CuPy) on its current stream (21): memory that library just freed may still be read
    # there, so the kernels wait for that stream before writing the output.
    from pdl_post import _cuda

    waits = _record_stream_waits(monkeypatch)
    monkeypatch.setattr(_cuda, "_output_library", lambda arrays: "cupy")
    monkeypatch.setattr(_cuda, "_library_stream", lambda library, device: 21)
    s = synthetic.make_scene(48, 64, 12, seed=4)
    out = pdl_post.merge(*(_on_stream(a, 11) for a in (s.sem, s.ctr, s.off)))
    assert waits == [(0, 11, 21)]
    np.testing.assert_array_equal(out.a, pdl_post.merge(s.sem, s.ctr, s.off))


def test_class_ids_from_65536_cost_one_more_synchronisation(emulated_cuda):
    # Compacted class tables (cuda_pipeline.h): the distinct ids are sorted on the device and
    # their count read back before the tables are sized; the ids go to the tables by one
    # device-to-device copy, and the sort's scratch is one more pool allocation.
    from devices import HostCudaArray

    s = synthetic.make_scene(48, 64, 6, seed=2)
    shift = 70_000
    big = HostCudaArray(s.sem.astype(np.int64) + shift)
    things = [t + shift for t in range(11, 19)]
    emulation.take_counters()
    out = pdl_post.merge(big, HostCudaArray(s.ctr), HostCudaArray(s.off), thing_ids=things)
    counts = emulation.take_counters()
    assert counts["synchronisations"] == 2
    assert counts["device_to_host_copies"] == 2
    assert counts["device_to_device_copies"] == 1
    assert counts["pool_allocations"] == 3
    small = pdl_post.merge(s.sem, s.ctr, s.off)
    np.testing.assert_array_equal(out.a, np.where(small >= 0, small + shift * 1000, small))


def test_devices_without_memory_pools_use_cuda_malloc():
    # The pool choice is made once per device and process, so a fresh process.
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = """
import numpy as np, pdl_post
from pdl_post import synthetic
from devices import HostCudaArray, use_emulation, EMULATION
class Patch:
    def setattr(self, obj, name, value, raising=True):
        setattr(obj, name, value)
check = use_emulation(Patch())
EMULATION.take_counters()
s = synthetic.make_scene(48, 64, 6, seed=2, logits=True)
out = pdl_post.postprocess(*(HostCudaArray(a) for a in (s.logits, s.ctr, s.off)), stuff_area=8)
assert (out.panoptic.a == pdl_post.merge(s.logits, s.ctr, s.off, stuff_area=8)).all()
check()
counts = EMULATION.take_counters()
print(counts.get("pool_allocations", 0), counts.get("allocations", 0))
"""
    env = {**os.environ, "PDL_EMU_NO_MEMORY_POOLS": "1"}
    tests = str(Path(__file__).parent)
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, cwd=tests, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    pooled, plain = (int(n) for n in done.stdout.split())
    assert pooled == 0 and plain == 2  # one block per phase


def test_cupy_conversions_run_on_the_arrays_device(emulated_cuda, monkeypatch):
    # CuPy widens an array (float16 -> float32 here) on its *current* device; for an array on
    # another device that would read memory of the wrong GPU. The conversion must run on the
    # array's device. Stand-ins: a CuPy module whose current device is 1, arrays on device 0.
    from devices import HostCudaArray

    current, converted_on = [1], []
    Device = _stand_in_cupy(monkeypatch, current)

    class CupyArray(HostCudaArray):
        __module__ = "cupy._core.core"
        device = Device(0)

        def __init__(self, a):
            super().__init__(a)
            # CuPy names its current stream, here the default one (its handle 0): 1 (legacy).
            self.__cuda_array_interface__["stream"] = 1

        def astype(self, dtype):
            converted_on.append(current[0])
            return CupyArray(self.a.astype(dtype))

    waits = _record_stream_waits(monkeypatch)
    s = synthetic.make_scene(48, 64, 12, seed=4)
    out = pdl_post.merge(CupyArray(s.sem), CupyArray(s.ctr.astype(np.float16)), CupyArray(s.off))
    assert converted_on == [0] and current == [1]
    assert waits == []  # CuPy's default stream is the call's stream
    np.testing.assert_array_equal(out.a, pdl_post.merge(s.sem, s.ctr, s.off))
    # An empty CuPy array has no pointer: its device comes from the array, not the current one.
    empty = [
        np.zeros((0, 5), np.int32),
        np.zeros((0, 5), np.float32),
        np.zeros((2, 0, 5), np.float32),
    ]
    devices = []
    monkeypatch.setattr(
        "pdl_post._cuda._allocate",
        lambda library, shape, dtype, device: (
            devices.append(device) or HostCudaArray(np.empty(shape, dtype))
        ),
    )
    pdl_post.merge(*(CupyArray(a) for a in empty))
    assert devices == [0]


@pytest.mark.parametrize(
    "call",
    [
        "cudaMallocFromPoolAsync",
        "cudaMemcpyAsync",
        "cudaMemsetAsync",
        "cudaStreamSynchronize",
        "cudaEventCreateWithFlags",
        "cudaEventRecord",
        "cudaStreamWaitEvent",
    ],
)
def test_a_failed_runtime_call_raises_and_leaves_nothing_behind(emulated_cuda, call):
    # Each call site of `call` in turn fails once (as a full GPU or a broken stream would make
    # it): merge / postprocess raise RuntimeError naming it, free what they took (the fixture
    # checks for leaks) and leave no error behind. CUDA keeps a failed call's error as the
    # thread's last error until it is read: left there, the next call, ours (at its first launch
    # check) or torch's, would report it. An input on another stream makes the event calls run.
    s = synthetic.make_batch(2, 40, 56, 6, seed=1, logits=True)
    kw = {"stuff_area": 8}
    for function, sem in ((pdl_post.merge, s.sem), (pdl_post.postprocess, s.logits)):
        ctr, off = s.ctr, s.off
        expected = function(sem, ctr, off, **kw)
        failed_sites = 0
        for after in range(100):
            emulation.inject_failure(call, after)
            inputs = (_on_stream(sem, 11), _on_stream(ctr, 13), _on_stream(off, 11))
            try:
                function(*inputs, **kw)
            except RuntimeError as error:
                message = str(error)
                assert message.startswith(("CUDA error in cuda", "CUDA path: cannot allocate"))
                assert f"{call}: injected failure" in message
                failed_sites += 1
            else:
                assert emulation.pending_failures() == 1  # every call site has failed once
                break
            got = function(*inputs, **kw)  # no error left over
            if function is pdl_post.merge:
                np.testing.assert_array_equal(got.a, expected)
            else:
                for g, e in zip(got, expected):
                    np.testing.assert_array_equal(g.panoptic.a, e.panoptic)
                    np.testing.assert_array_equal(g.centers, e.centers)
        else:
            pytest.fail(f"{call}: more than 100 call sites under {function.__name__}")
        assert failed_sites > 0, (function.__name__, call)
    assert emulation.pending_failures() == 0


def test_an_error_between_the_phases_frees_the_scratch_at_once(emulated_cuda):
    # Negative class ids are found by the first phase; the job is released while its stream is
    # surely alive, not when the traceback that keeps it goes (that stream may be gone by then).
    from devices import HostCudaArray

    s = synthetic.make_scene(40, 56, 6, seed=1)
    sem = s.sem.copy()
    sem[3, 4] = -2
    baseline = emulation.live_allocations()
    with pytest.raises(ValueError, match="class ids must be >= 0, got a minimum of -2") as error:
        pdl_post.merge(*(HostCudaArray(a) for a in (sem, s.ctr, s.off)))
    assert error.traceback  # the traceback (and the frame holding the job) is alive here
    assert emulation.live_allocations() == baseline


@pytest.fixture
def two_devices(emulated_cuda):
    """Two emulated devices (from here on: devices are never removed, as on a machine, and the
    CUDA path keeps state per device); emulated_cuda checks that nothing leaked on either."""
    emulation.set_device_count(2)


def test_another_devices_memory_and_streams_are_refused_as_on_a_gpu(two_devices):
    error, out = emulation.selftest("another_devices_memory")
    assert error.startswith("cudaErrorLaunchFailure")
    assert out[:32] == [0] * 32
    violations = emulation.take_violations()
    assert len(violations) == 1
    assert re.fullmatch(
        r"another_devices_memory block \(0,0,0\): thread \d+: access to device 1's memory "
        r"\(an allocation of 1792 bytes\) from a kernel on device 0",
        violations[0],
    )
    for case, refusal in [
        (
            "launch_into_another_devices_stream",
            "copy: launched on device 0 into a stream of device 1",
        ),
        (
            "event_on_another_devices_stream",
            "cudaEventRecord: an event of device 0 recorded on a stream of device 1",
        ),
    ]:
        error, _ = emulation.selftest(case)
        assert error == f"cudaErrorInvalidResourceHandle: emulated: {refusal}"
        assert emulation.take_violations() == [refusal]
    # cub's device algorithms (host code here) check their temp storage and stream likewise.
    emulation.selftest("cub_with_another_devices_memory_and_stream")
    assert emulation.take_violations() == [
        "cub::DeviceScan temp storage: device 1's memory used on device 0",
        "cub::DeviceScan temp storage: used on device 0 with a stream of device 1",
    ]
    assert emulation.current_device() == 0


def test_arrays_on_another_device_than_the_current_one_run_on_theirs(two_devices, monkeypatch):
    # The caller's current device is 0, the arrays live on device 1: every launch, allocation,
    # event and copy of the call must happen on device 1 (the emulator fails a kernel that
    # touches another device's memory), the output is allocated there, and device 0 is current
    # again afterwards. Calls on both devices alternate on one image size: each device learns its
    # own capacities (device 1's calls speculate from its second call on, failing on more centres
    # than learnt, then holding), has its own scratch pool, and the page-locked blocks serve both.
    from devices import HostCudaArray, on_emulated_device, speculation_seen

    allocated_on = []

    def allocate(library, shape, dtype, device):
        allocated_on.append(device)
        return on_emulated_device(np.empty(shape, dtype), device)

    monkeypatch.setattr("pdl_post._cuda._allocate", allocate)
    stream = emulation.create_stream(1)
    scenes = [synthetic.make_scene(40, 56, k, seed=k) for k in (5, 9, 5, 30)]
    seen = []
    emulation.take_timeline()
    for step, s in enumerate(scenes * 2):
        device = step % 2
        expected = pdl_post.merge(s.sem, s.ctr, s.off)
        if device == 0:
            arrays = [HostCudaArray(a.copy()) for a in (s.sem, s.ctr, s.off)]
        else:
            arrays = [on_emulated_device(a, 1) for a in (s.sem, s.ctr, s.off)]
            if step % 4 == 3:  # the arrays name a stream of their device
                for a in arrays:
                    a.__cuda_array_interface__["stream"] = stream
        out = pdl_post.merge(*arrays)
        np.testing.assert_array_equal(out.a, expected)
        assert allocated_on.pop() == device and emulation.current_device() == 0
        assert emulation.take_violations() == []
        seen.append(speculation_seen(emulation.take_timeline()))
    assert seen == ["none", "none", "holds", "fails", "holds", "holds", "holds", "holds"]
    # postprocess with logits (scores bit for bit) and a mask, and a batch, on device 1.
    s = synthetic.make_scene(40, 56, 7, seed=3, logits=True)
    for mask in (None, s.sem > 11):
        cpu = pdl_post.postprocess(s.logits, s.ctr, s.off, foreground_mask=mask, backend="cpu")
        gpu = pdl_post.postprocess(
            *(on_emulated_device(a, 1) for a in (s.logits, s.ctr, s.off)),
            foreground_mask=None if mask is None else on_emulated_device(mask, 1),
        )
        gpu.panoptic = gpu.panoptic.a
        assert_results_equal(gpu, cpu, score_rtol=0)
    # A batch, and with a top-k sort and class ids from 2**16 up (cub's sorts on device 1).
    batch = [synthetic.make_scene(32, 48, k, seed=k) for k in (3, 6, 4)]
    stacked = [np.stack([getattr(b, name) for b in batch]) for name in ("sem", "ctr", "off")]
    out = pdl_post.merge(*(on_emulated_device(a, 1) for a in stacked))
    np.testing.assert_array_equal(out.a, pdl_post.merge(*stacked))
    shifted = stacked[0] + 70000
    kw = dict(top_k=3, thing_ids=[t + 70000 for t in s.thing_ids], label_divisor=100000)
    out = pdl_post.merge(*(on_emulated_device(a, 1) for a in (shifted, *stacked[1:])), **kw)
    np.testing.assert_array_equal(out.a, pdl_post.merge(shifted, *stacked[1:], **kw))
    assert allocated_on[:3] == [1, 1, 1] and set(allocated_on) == {1}
    assert emulation.current_device() == 0
    # find_centers on device 1, with a top-k sort (cub's on device 1) and without.
    for top_k in (2, None):
        got = pdl_post.find_centers(on_emulated_device(stacked[1], 1), top_k=top_k)
        for (c, sc), (want, want_scores) in zip(
            got, pdl_post.find_centers(stacked[1], top_k=top_k)
        ):
            np.testing.assert_array_equal(c.a, want)
            np.testing.assert_array_equal(sc.a, want_scores)
        assert emulation.take_violations() == [] and emulation.current_device() == 0
