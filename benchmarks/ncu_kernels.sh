#!/usr/bin/env bash
# Nsight Compute view of the CUDA path's heaviest kernels at batch 8 (1024x2048, 40 centres, the
# gpu_bench scene), on a GPU machine: builds like gpu_check.sh (PDL_POST_CUDA=ON, Hopper only),
# then profiles one merge call with the defaults and one with each candidate of
# pdl_post._cuda.CANDIDATES on (their kernels beside the default's): launch statistics
# (registers, occupancy), speed of light, warp states and scheduler and instruction statistics.
# Kernels: NCU_KERNELS (a regex, default the vote, count_peaks and the write); output to stdout.
# Needs: nvcc, ncu and the Python of gpu_check.sh (PYTHON=..., default python3).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}
export PDL_POST_CUDA_ARCHITECTURES=${PDL_POST_CUDA_ARCHITECTURES:-90-real;90-virtual}
PDL_POST_CUDA=ON timeout 300 "$PY" -m pip install --quiet --no-index --disable-pip-version-check \
  --no-build-isolation --no-deps -Cbuild-dir=build/gpu -e .

calls=$(mktemp --suffix=.py)
trap 'rm -f "$calls"' EXIT
cat >"$calls" <<'PYEOF'
import sys

import numpy as np
import torch

import pdl_post
from pdl_post import synthetic
from pdl_post._cuda import CANDIDATES

batch = synthetic.make_batch(8, 1024, 2048, 40, seed=0)
sem, ctr, off = (torch.from_numpy(np.ascontiguousarray(a)).cuda()
                 for a in (batch.sem.astype(np.int32), batch.ctr, batch.off))
runs = [("default", [])] + [(name, [hook]) for name, (hook, _) in CANDIDATES.items()]
for name, hooks in runs:
    previous = [getattr(pdl_post._core, h)(True) for h in hooks]
    pdl_post.merge(sem, ctr, off)
    torch.cuda.synchronize()
    for h, was in zip(hooks, previous):
        getattr(pdl_post._core, h)(was)
    print("profiled:", name, file=sys.stderr)
PYEOF

kernels=${NCU_KERNELS:-vote_kernel|count_peaks_kernel|write_packed_kernel}
ncu --kernel-name "regex:$kernels" \
  --section LaunchStats --section Occupancy --section SpeedOfLight --section WarpStateStats \
  --section SchedulerStats --section InstructionStats --section ComputeWorkloadAnalysis \
  "$PY" "$calls"
