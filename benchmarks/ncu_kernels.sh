#!/usr/bin/env bash
# Nsight Compute view of the CUDA path's heaviest kernels on a GPU machine: builds like
# gpu_check.sh (PDL_POST_CUDA=ON, Hopper only), then profiles benchmarks/ncu_case.py --candidates
# (batch 1, batch 8, and batch 8 with each candidate on; the warm-up call skipped): launch
# statistics (registers, occupancy), speed of light, warp states, scheduler and instruction
# statistics. NCU_KERNELS: a regex of kernel names (default the vote, count_peaks, the peaks' write
# in either form and the ids' write); NCU_SKIP: launches it matches in the warm-up call (default 4,
# one per kernel). To stdout.
# Needs: nvcc, ncu and the Python of gpu_check.sh (PYTHON=..., default python3).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}
export PDL_POST_CUDA_ARCHITECTURES=${PDL_POST_CUDA_ARCHITECTURES:-90-real;90-virtual}
PDL_POST_CUDA=ON timeout 300 "$PY" -m pip install --quiet --no-index --disable-pip-version-check \
  --no-build-isolation --no-deps -Cbuild-dir=build/gpu -e .
ncu --kernel-name \
  "regex:${NCU_KERNELS:-vote_kernel|count_peaks_kernel|write_peaks|write_packed_kernel}" \
  --launch-skip "${NCU_SKIP:-4}" \
  --section LaunchStats --section Occupancy --section SpeedOfLight --section WarpStateStats \
  --section SchedulerStats --section InstructionStats --section ComputeWorkloadAnalysis \
  "$PY" benchmarks/ncu_case.py --candidates
