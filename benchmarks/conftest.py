"""pytest configuration of the benchmark suite (``benchmarks/test_bench_merge.py``).

Options (each also settable by an environment variable; the option wins):

``--bench-quick`` (``PDL_BENCH_QUICK=1``)
    Tiny scenes, for smoke runs: ``pytest benchmarks -q --benchmark-disable --bench-quick``.
``--bench-scale {tiny,small,full}`` (``PDL_BENCH_SCALE``)
    The scene grid (default ``full``: 512x1024 and 1024x2048 with 10, 40, 200 and ~2100 centres,
    plus 2048x4096 with ~3000 centres); ``small`` is 512x1024 only; ``--bench-quick`` = ``tiny``.
    With ``--benchmark-disable`` (nothing is timed) the default is ``tiny``.
``--bench-threads N`` (``PDL_BENCH_THREADS``)
    Threads for our backend, the dense PyTorch baseline and the copy floor (default: all cores).
``--bench-dense-max-gb G`` (``PDL_BENCH_DENSE_MAX_GB``)
    Skip the dense baseline where its K x H*W tensors would need more than G GiB (default 8).
``--bench-backends a,b`` / ``--bench-stages a,b``
    Subsets of ``ours,reference,dense_torch,floor`` and ``merge,find_centers,group_pixels,fuse``.
``--bench-memory``
    Also measure the peak extra memory of our merge per scene (a fresh process per scene).

Skip reasons, the number of centres each scene really has, and memory figures go into the
``--benchmark-json`` file under the key ``"pdl_post"``, which ``benchmarks/run.py`` reads.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_common as bc


def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("pdl_post benchmarks")
    g.addoption("--bench-quick", action="store_true", default=None, help="tiny scenes (smoke run)")
    g.addoption("--bench-scale", choices=bc.SCALES, default=None, help="scene grid (default full)")
    g.addoption("--bench-threads", type=int, default=None, help="threads (default: all cores)")
    g.addoption("--bench-dense-max-gb", type=float, default=None, help="dense baseline limit, GiB")
    g.addoption("--bench-backends", default=None, help="comma-separated subset of backends")
    g.addoption("--bench-stages", default=None, help="comma-separated subset of stages")
    g.addoption("--bench-memory", action="store_true", default=None, help="measure peak memory")


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


def _subset(value: str | None, allowed: tuple[str, ...], what: str) -> tuple[str, ...]:
    if not value:
        return allowed
    chosen = tuple(v.strip() for v in value.split(",") if v.strip())
    bad = [v for v in chosen if v not in allowed]
    if bad:
        raise pytest.UsageError(f"--bench-{what} must be a subset of {allowed}, got {bad}")
    return chosen


class BenchSettings:
    """The suite's settings and the notes it writes into the benchmark JSON."""

    def __init__(self, config: pytest.Config) -> None:
        opt = config.getoption
        quick = bool(opt("--bench-quick")) or _env_flag("PDL_BENCH_QUICK")
        scale = opt("--bench-scale") or os.environ.get("PDL_BENCH_SCALE")
        if scale is None:
            # A run that times nothing (--benchmark-disable) is a smoke run: tiny scenes.
            scale = "tiny" if opt("benchmark_disable") else "full"
        self.scale = "tiny" if quick else scale
        if self.scale not in bc.SCALES:
            raise pytest.UsageError(f"PDL_BENCH_SCALE must be one of {bc.SCALES}, got {scale!r}")
        threads = opt("--bench-threads") or os.environ.get("PDL_BENCH_THREADS")
        self.threads = int(threads) if threads else bc.default_threads()
        if self.threads < 1:
            raise pytest.UsageError(f"--bench-threads must be >= 1, got {self.threads}")
        max_gb = opt("--bench-dense-max-gb") or os.environ.get("PDL_BENCH_DENSE_MAX_GB")
        self.dense_max_gb = float(max_gb) if max_gb else bc.DEFAULT_DENSE_MAX_GB
        self.backends = _subset(opt("--bench-backends"), bc.BACKENDS, "backends")
        self.stages = _subset(opt("--bench-stages"), bc.STAGES, "stages")
        self.memory = bool(opt("--bench-memory")) or _env_flag("PDL_BENCH_MEMORY")
        self.specs = bc.scene_specs(self.scale)
        self._prepared: dict[bc.SceneSpec, bc.Prepared] = {}
        self.notes: dict[str, Any] = {
            "scale": self.scale,
            "threads": self.threads,
            "dense_max_gb": self.dense_max_gb,
            "cpu_model": bc.cpu_model(),
            "scenes": {},
            "skipped": [],
            "memory": {},
        }

    def prepared(self, spec: bc.SceneSpec) -> bc.Prepared:
        """The scene of ``spec`` with its stage inputs, generated once per session."""
        if spec not in self._prepared:
            # Keep at most the scenes of one size: the 2048x4096 ones are large.
            for old in [s for s in self._prepared if s.size != spec.size]:
                del self._prepared[old]
            prep = bc.make_prepared(spec, threads=self.threads)
            self._prepared[spec] = prep
            self.notes["scenes"][spec.ident] = {
                "height": spec.height,
                "width": spec.width,
                "centers_drawn": spec.centers,
                "centers": prep.num_centers,
                "top_k": spec.top_k,
                "thing_pixels": int(prep.thing_mask.sum()),
            }
        return self._prepared[spec]

    def dense_has(self, stage: str) -> bool:
        """Whether the dense baseline has this stage (it is one function for the whole merge;
        per-stage functions are used where the module defines them). Stages it lacks are not
        collected. Without torch, the merge cases are collected and skipped with the reason."""
        if stage == "merge":
            return True
        mod = bc.dense_module()
        return mod is not None and hasattr(mod, stage)

    def skip(self, group: str, backend: str, reason: str) -> None:
        self.notes["skipped"].append({"group": group, "backend": backend, "reason": reason})
        pytest.skip(reason)


_SETTINGS_KEY = pytest.StashKey[BenchSettings]()


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_SETTINGS_KEY] = BenchSettings(config)


def pytest_report_header(config: pytest.Config) -> str:
    s = config.stash[_SETTINGS_KEY]
    return (
        f"pdl_post benchmarks: scale={s.scale} threads={s.threads} cpu={s.notes['cpu_model']!r} "
        f"dense_max_gb={s.dense_max_gb}"
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    s = metafunc.config.stash[_SETTINGS_KEY]
    if "case" in metafunc.fixturenames:
        # One scene at a time (all its stages and backends), so each scene is generated once.
        cases = [
            (spec, stage, backend)
            for spec in s.specs
            for stage in s.stages
            for backend in s.backends
            if backend != "dense_torch" or s.dense_has(stage)
        ]
        metafunc.parametrize(
            "case", cases, ids=[f"{st}-{sp.ident}-{b}" for sp, st, b in cases], scope="function"
        )
    if "mem_spec" in metafunc.fixturenames:
        metafunc.parametrize("mem_spec", s.specs, ids=[sp.ident for sp in s.specs])


@pytest.fixture(scope="session")
def bench(request: pytest.FixtureRequest) -> BenchSettings:
    """The suite's settings, scene cache and notes."""
    return request.config.stash[_SETTINGS_KEY]


@pytest.fixture(scope="session", autouse=True)
def _torch_threads(bench: BenchSettings) -> None:
    """Dense PyTorch runs on the same number of threads as our backend."""
    if "dense_torch" in bench.backends:
        try:
            import torch
        except ImportError:
            return
        torch.set_num_threads(bench.threads)


def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict) -> None:
    s = config.stash[_SETTINGS_KEY]
    machine_info["pdl_post_threads"] = s.threads
    machine_info["pdl_post_scale"] = s.scale
    machine_info["cpu_model"] = s.notes["cpu_model"]
    try:
        import torch

        machine_info["torch"] = torch.__version__
        machine_info["torch_threads"] = torch.get_num_threads()
    except ImportError:
        machine_info["torch"] = None
    api = bc.public_api()
    if api is not None and hasattr(api, "build_info"):
        try:
            machine_info["pdl_post_build"] = api.build_info()
        except Exception as exc:  # pragma: no cover - informational only
            machine_info["pdl_post_build"] = f"build_info() failed: {exc}"


def pytest_benchmark_update_json(
    config: pytest.Config, benchmarks: list, output_json: dict
) -> None:
    output_json["pdl_post"] = config.stash[_SETTINGS_KEY].notes
