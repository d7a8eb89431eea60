"""gpu_bench.py's own logic, run here on a CPU stand-in for the GPU.

Device time is scarce (one short run of benchmarks/gpu_check.sh per GPU session): a mistake in
the script's Python must show here, not there. The CPU plays the GPU (torch CPU tensors, so
``pdl_post.merge`` takes its CPU path), CUDA events are perf_counter stamps, synchronisations do
nothing; every step of the script runs on a small scene and its tables are printed. No number of
this run means anything.
"""

from __future__ import annotations

import time

import pytest

import pdl_post

torch = pytest.importorskip("torch")
import gpu_bench  # noqa: E402


class _Event:
    def __init__(self, enable_timing=False):
        self.stamp = None

    def record(self, stream=None):
        self.stamp = time.perf_counter()

    def synchronize(self):
        pass

    def elapsed_time(self, end) -> float:
        return (end.stamp - self.stamp) * 1e3


class _Stream:
    def synchronize(self):
        pass


class _Activities:  # the profiler's CUDA activity needs CUDA: the CPU's stands in
    CPU = CUDA = torch.profiler.ProfilerActivity.CPU


def _stand_in(monkeypatch):
    monkeypatch.setattr(gpu_bench, "DEVICE", "cpu")
    monkeypatch.setattr(pdl_post, "cuda_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "Event", _Event)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: _Stream())
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "CPU stand-in")
    monkeypatch.setattr(torch.profiler, "ProfilerActivity", _Activities)
    profile, empty = torch.profiler.profile, torch.empty
    monkeypatch.setattr(
        torch.profiler,
        "profile",
        lambda activities, **kw: profile(activities=list(dict.fromkeys(activities)), **kw),
    )
    # Pinned host memory needs CUDA: pageable memory stands in.
    monkeypatch.setattr(torch, "empty", lambda *a, pin_memory=False, **kw: empty(*a, **kw))


SMALL = ["--height", "48", "--width", "96", "--centers", "5", "--batch", "2"]
ROUNDS = [
    "--warmup",
    "1",
    "--repeat",
    "2",
    "--dense-repeat",
    "1",
    "--profile",
    "2",
    "--candidate-rounds",
    "1",
]


def test_gpu_bench_runs_on_a_cpu_stand_in(monkeypatch, capsys, tmp_path):
    _stand_in(monkeypatch)
    assert gpu_bench.main(SMALL + ROUNDS + ["--trace", str(tmp_path / "trace")]) == 0
    printed = capsys.readouterr().out
    assert (tmp_path / "trace-b2.json").exists()
    # The CPU's trace holds no device work: the gaps' line says so.
    assert "between the phases: no read-back followed by a vote kernel in the trace" in printed
    for row in (
        "| ours, batch 1 |",
        "| dense torch, batch 1 |",
        "| ours, batch 2 |",
        "| ours, batch 2, in a row |",
        "| copy floor, batch 2, in a row |",
        "| ours, vote in chunks (not the default), batch 2, in a row |",
        "| batch 2 throughput within 3x of the copy floor's (calls in a row: got",
        "| ours, vote in chunks (not the default), batch 1 |",
        "| ours, vote in chunks (not the default), batch 2 |",
        "| ours postprocess, logits, batch 1 |",
        "| ours, nms_kernel=43 (separable filter), batch 1 |",
        "| ours, detectron2 drop-in (int64 labels), batch 1 |",
        "| ours, top_k=None, flat heatmap (a centre per pixel), batch 1 |",
        "| ours postprocess, logits, top_k=None, flat heatmap, batch 1 |",
        "dense torch equals ours (topk_mode='detectron2', and the drop-in): True",
        "| >= 50x faster than dense torch",
        "host side (perf_counter, median",
        "profile of 2 calls, b1",
        "profile of 2 calls, b2",
        "profile of 2 calls, b2-candidates",
        # The CPU's profile holds no device time.
        "kernels per call at batch 2, each candidate alone (us, torch.profiler):\n"
        "no device work in the profiles",
        "candidates: time / the default's time in alternating rounds (below 1.00: faster",
        "| candidate | batch 1 | batch 2 | batch 2, in a row |",
        "| vote in chunks | ",
        "| second phase after the counts (speculation off) | ",
        "| ours, batch 1: the merge call on the host",
        # The CPU stand-in never makes a CudaMerge job: the phases' table says so.
        "host phases of a merge call",
        "unavailable here: RuntimeError: the call did not take the CUDA path",
    ):
        assert row in printed, row
    assert "profiler unavailable" not in printed
    assert "correctness: GPU == CPU on every check" in printed


def test_gpu_bench_reports_a_mismatch_and_still_times(monkeypatch, capsys):
    """A GPU answer that differs from the CPU's is named, the exit status is 1, and the timings
    are printed all the same (one device run should bring back both)."""
    _stand_in(monkeypatch)
    merge = pdl_post.merge

    def off_by_one_on_the_device(sem, *args, **kwargs):
        out = merge(sem, *args, **kwargs)
        return out + 1 if isinstance(sem, torch.Tensor) else out

    monkeypatch.setattr(pdl_post, "merge", off_by_one_on_the_device)
    assert gpu_bench.main(SMALL + ROUNDS) == 1
    printed = capsys.readouterr().out
    assert "merge, batch 1: GPU != CPU (4608 elements differ)" in printed
    assert "merge, batch 2: GPU != CPU" in printed
    assert "| ours, batch 1 |" in printed and "| >= 50x faster than dense torch" in printed


def test_phase_gaps_read_the_device_timeline():
    # Two calls: the device's time from the first phase's read-back to the vote, the work it ran
    # in between (clipped to that span where it began earlier, on another stream) and the rest.
    # Host events, a vote before any read-back and postprocess's closing copy are not counted.
    def device(cat, name, ts, dur):
        return {"ph": "X", "cat": cat, "name": name, "ts": ts, "dur": dur}

    events = [
        device("kernel", "void pdl_post::cuda::vote_kernel<int>(...)", 0, 50),
        device("gpu_memcpy", "Memcpy DtoH (Device -> Pinned)", 100, 5),
        {"ph": "X", "cat": "cuda_runtime", "name": "cudaLaunchKernel", "ts": 110, "dur": 3},
        device("gpu_memcpy", "Memcpy HtoD (Pageable -> Device)", 120, 2),
        device("kernel", "void pdl_post::cuda::write_peaks_kernel<float, true>(...)", 123, 10),
        device("gpu_memset", "Memset (Device)", 134, 1),
        device("kernel", "void pdl_post::cuda::vote_kernel<int>(...)", 140, 260),
        device("gpu_memcpy", "Memcpy DtoH (Device -> Pinned)", 420, 3),  # postprocess's end
        device("gpu_memcpy", "Memcpy DtoH (Device -> Pinned)", 500, 4),
        device("kernel", "another stream's kernel", 502, 6),
        device("kernel", "void pdl_post::cuda::vote_kernel<int>(...)", 510, 200),
    ]
    assert gpu_bench.phase_gaps(events) == [
        {"gap": 35, "busy": 13, "idle": 22},
        {"gap": 6, "busy": 4, "idle": 2},
    ]


def test_kernel_names_and_the_candidates_kernel_table():
    assert (
        gpu_bench.short_kernel_name(
            "void pdl_post::cuda::(anonymous namespace)::vote_kernel<int, float, false, true, 2>"
            "(pdl_post::cuda::(anonymous namespace)::VoteArgs<int, float>)"
        )
        == "vote_kernel"
    )
    assert gpu_bench.short_kernel_name("Memcpy DtoH (Device -> Pinned)") == "Memcpy DtoH"
    assert (
        gpu_bench.short_kernel_name("void cub::CUB_200200_900_NS::DeviceScanKernel<Policy>(int)")
        == "DeviceScanKernel"
    )
    columns = {
        "default": {"vote_kernel": 261.0, "write_kernel": 47.4, "Memset (Device)": 0.2},
        "vote by warp box": {"vote_kernel": 120.5, "write_kernel": 47.0, "Memset (Device)": 0.3},
    }
    assert gpu_bench.kernel_times_table(columns) == [
        "| kernel | default | vote by warp box |",
        "|---|---:|---:|",
        "| vote_kernel | 261.0 | 120.5 |",
        "| write_kernel | 47.4 | 47.0 |",
        "| all device work | 308.6 | 167.8 |",
    ]
