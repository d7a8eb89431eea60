#!/usr/bin/env bash
# GPU check of the CUDA path (issue 5), in one go on a GPU machine (steps 1-4 sized for 5 minutes;
# step 5, three short sanitizer runs, comes last and SKIP_SANITIZERS=1 leaves it out):
#   1. builds the package with CUDA required (PDL_POST_CUDA=ON) into build/gpu;
#   2. runs the device tests on the GPU (tests/test_merge.py, tests/test_cuda.py, the random
#      inputs of tests/test_fuzz.py, the torch / detectron2 drop-in cases of
#      tests/test_torch_interop.py and the reference model's merge of GPU outputs in
#      tests/test_model_predict.py, and tests/test_float_modes.py's cases with the caller in
#      flush-to-zero or another rounding: GPU output == CPU output on every case; the CPU-only and
#      host-emulated cases are left to make test);
#   3. times our GPU path, dense PyTorch on the same GPU and the device copy floor
#      (benchmarks/gpu_bench.py: CUDA events, warm-up, median) and prints a table with the targets;
#   4. runs compute-sanitizer memcheck on a small batch (merge and postprocess, logits included);
#   5. runs compute-sanitizer racecheck, synccheck and initcheck on the same small batch;
#   then, with the candidates on (changes off by default until these timings decide: every
#   variable of pdl_post._cuda.CANDIDATES set to 1, e.g. PDL_POST_VOTE_CHUNKS=1 for the vote's
#   pixels in chunks per warp, turning them on in the tests and the small batch), the device
#   tests, memcheck (after step 4) and racecheck (at the end) once more.
#
# Needs: nvcc (CUDA 12+), a driver and a Python whose torch is a CUDA build (PYTHON=..., default
# python3) holding the build and test requirements (scikit-build-core, pybind11, cython, ninja,
# cmake, pytest, hypothesis, numpy; numba optional). That Python is used as it is and the package
# installed into it (editable): the GPU image's python3 is itself a venv with torch, and a venv
# made from it would not see its packages; nothing can be fetched there.
# Options: PDL_POST_CUDA_ARCHITECTURES (default here 90-real;90-virtual: Hopper only, to save
# device time; the package default adds Turing and Ampere code), SKIP_MEMCHECK=1,
# SKIP_SANITIZERS=1 (step 5), GPU_BENCH_ARGS (extra options of gpu_bench.py, e.g.
# "--trace $OUT/trace"), GPU_CHECK_SECONDS (default 540): the time the whole script may
# take; each step after the build runs under `timeout` with what is left (a hang costs that step,
# not the run), and a step that would start with too little left is skipped and named.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
budget=${GPU_CHECK_SECONDS:-540}
step() { echo; echo "== $* ($(( $(date +%s) - start )) s)"; }
left() { echo $(( budget - ($(date +%s) - start) )); }
# Device time is scarce: a failing step is recorded and the later steps still run.
failed=()
skipped=()
# within SECONDS NAME COMMAND...: runs COMMAND under a timeout of what is left (at most SECONDS),
# or skips it when under 30 s are left.
within() {
  local most=$1 name=$2 limit
  shift 2
  limit=$(left)
  if [ "$limit" -lt 30 ]; then
    echo "skipped: $name ($(left) s left of $budget)"
    skipped+=("$name")
    return 0
  fi
  [ "$limit" -gt "$most" ] && limit=$most
  timeout --kill-after=10 "$limit" "$@" || {
    local rc=$?
    [ $rc -eq 124 ] && echo "timed out after $limit s: $name"
    failed+=("$name")
  }
}

step "environment"
nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv,noheader
nvcc --version | tail -1
PY=${PYTHON:-python3}
"$PY" - <<'PYEOF'
import importlib.util, sys
need = ["torch", "numpy", "scikit_build_core", "pybind11", "Cython", "pytest", "hypothesis"]
missing = [m for m in need if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"{sys.executable} lacks {', '.join(missing)}: set PYTHON to a Python that has them")
import torch
assert torch.cuda.is_available(), "torch sees no CUDA device"
print(sys.executable, sys.version.split()[0], "| torch", torch.__version__, "CUDA", torch.version.cuda)
PYEOF

step "build (PDL_POST_CUDA=ON)"
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}
export PDL_POST_CUDA_ARCHITECTURES=${PDL_POST_CUDA_ARCHITECTURES:-90-real;90-virtual}
PDL_POST_CUDA=ON timeout 300 "$PY" -m pip install --quiet --no-index --disable-pip-version-check \
  --no-build-isolation --no-deps \
  -Cbuild-dir=build/gpu -e .
"$PY" - <<'PYEOF'
import pdl_post
info = pdl_post.build_info()
print(info["cuda"], "|", info.get("cuda_build"))
assert pdl_post.cuda_available(), "pdl_post.cuda_available() is False"
PYEOF

step "device tests on the GPU"
# Warnings are errors in the suite (pyproject); another numpy / torch here may deprecate or warn
# about something: reported, not fatal. A test that hangs fails after 120 s (pytest-timeout,
# where installed).
device_tests=(tests/test_merge.py tests/test_cuda.py tests/test_fuzz.py tests/test_torch_interop.py
  tests/test_model_predict.py tests/test_float_modes.py -q -p no:cacheprovider
  -k "cuda and not emulated" -W default --maxfail=10 --tb=short)
"$PY" -c "import pytest_timeout" 2>/dev/null && device_tests+=(--timeout=120)
within 300 "device tests" "$PY" -m pytest "${device_tests[@]}" --durations=8

# The small case the compute-sanitizer tools run: merge (top_k 200 twice / 3 / None: speculative
# second phases that hold and fail, 400 centres,
# compacted class tables, a flat heatmap: a centre per pixel, the grid search and its quadtree
# for votes outside the grid, instance x class pairs by sort; every pixel its own compacted class
# id: pairs by sort), compared with the CPU, postprocess with logits and a mask, and the stages
# (find_centers, group_pixels, fuse).
sanitizer_case=$(mktemp --suffix=.py)
trap 'rm -f "$sanitizer_case"' EXIT
cat >"$sanitizer_case" <<'PYEOF'
import os

import numpy as np
import torch

import pdl_post
from pdl_post import synthetic
from pdl_post._cuda import CANDIDATES

on = [variable for _, variable in CANDIDATES.values() if os.environ.get(variable) == "1"]
for hook, variable in CANDIDATES.values():
    getattr(pdl_post._core, hook)(variable in on)
kw = dict(stuff_area=16)
b = synthetic.make_batch(2, 64, 96, 12, seed=3, logits=True)
sem, ctr, off, logits = (torch.from_numpy(a).cuda() for a in (b.sem, b.ctr, b.off, b.logits))
for top_k in (200, 200, 3, None):  # speculative second phases: the second holds, 3 fails (a sort)
    out = pdl_post.merge(sem, ctr, off, top_k=top_k, **kw)
    np.testing.assert_array_equal(out.cpu().numpy(), pdl_post.merge(b.sem, b.ctr, b.off, top_k=top_k, **kw))
r = pdl_post.postprocess(logits, ctr, off, foreground_mask=sem > 10, **kw)
for top_k, nms_kernel in ((200, 7), (3, 7), (None, 43)):  # find_centers alone, on the device
    got = pdl_post.find_centers(ctr, top_k=top_k, nms_kernel=nms_kernel)
    want = pdl_post.find_centers(b.ctr, top_k=top_k, nms_kernel=nms_kernel)
    for (c, s), (wc, ws) in zip(got, want):
        np.testing.assert_array_equal(c.cpu().numpy(), wc)
        np.testing.assert_array_equal(s.cpu().numpy(), ws)
# group_pixels on the device: the centres just found (on the device), then 400 and 1000 per image
# (the vote grid, its quadtree).
on_host = [c.cpu().numpy() for c, _ in got]
crowds = [np.random.default_rng(k).integers(0, 64, (k, 2)) for k in (400, 1000)]
for given, host in (([c for c, _ in got], on_host), (crowds, crowds)):
    instance = pdl_post.group_pixels(sem, given, off)
    np.testing.assert_array_equal(instance.cpu().numpy(), pdl_post.group_pixels(b.sem, host, b.off))
# fuse on the device: that instance map (1000 per image: numbered by sort), its ids * 100003
# (renumbered by torch) and as int64 (converted).
grouped = instance.cpu().numpy()
for ids in (grouped, grouped.astype(np.int64) * 100_003, grouped.astype(np.int64)):
    fused = pdl_post.fuse(sem, torch.from_numpy(ids).cuda(), stuff_area=16)
    np.testing.assert_array_equal(fused.cpu().numpy(), pdl_post.fuse(b.sem, ids, stuff_area=16))
many = synthetic.make_scene(96, 128, 400, seed=1)
pdl_post.merge(*(torch.from_numpy(a).cuda() for a in (many.sem, many.ctr, many.off)), top_k=None)
big = (b.sem.astype(np.int64) + 70_000, [t + 70_000 for t in range(11, 19)])  # compacted tables
out = pdl_post.merge(torch.from_numpy(big[0]).cuda(), ctr, off, thing_ids=big[1], **kw)
np.testing.assert_array_equal(
    out.cpu().numpy(), pdl_post.merge(big[0], b.ctr, b.off, thing_ids=big[1], **kw))
flat = np.full((1, 24, 40), 0.5, np.float32)  # 960 centres: grid search, numbering by sort
far = b.off[0].copy()
far[0, :24:3, :40:5], far[1, 1:24:4, :40:3] = 3e4, -1e30  # outside the grid: its quadtree
out = pdl_post.merge(sem[0, :24, :40], torch.from_numpy(flat).cuda(),
                     torch.from_numpy(far).cuda()[:, :24, :40], top_k=None, label_divisor=10_000, **kw)
np.testing.assert_array_equal(out.cpu().numpy(), pdl_post.merge(
    b.sem[0, :24, :40], flat, far[:, :24, :40], top_k=None, label_divisor=10_000, **kw))
ids = (70_000 + np.random.default_rng(5).permutation(64 * 96)).reshape(64, 96)
args = (ids, b.ctr[0], b.off[0])
kw_ids = dict(thing_ids=ids[::2].ravel().tolist(), stuff_area=0, nms_kernel=3)
out = pdl_post.merge(*(torch.from_numpy(a).cuda() for a in args), **kw_ids)
np.testing.assert_array_equal(out.cpu().numpy(), pdl_post.merge(*args, **kw_ids))
torch.cuda.synchronize()
print("sanitizer case done:", len(r), "images;", "candidates on:", " ".join(on) or "none")
PYEOF

# sanitize TOOL SECONDS [WHAT]: compute-sanitizer TOOL on the small case (WHAT names a variant).
sanitize() {
  local tool=$1 seconds=$2 what=${3:+, $3} options=()
  [ "$tool" = memcheck ] && options=(--leak-check no)
  step "compute-sanitizer $tool (small batch$what)"
  within "$seconds" "compute-sanitizer $tool$what" compute-sanitizer --tool "$tool" \
    --error-exitcode 1 --report-api-errors no "${options[@]}" "$PY" "$sanitizer_case"
}

step "timings"
# shellcheck disable=SC2086  # GPU_BENCH_ARGS: extra options, split on spaces
within 240 "timings" "$PY" benchmarks/gpu_bench.py ${GPU_BENCH_ARGS:-}

if [ "${SKIP_MEMCHECK:-0}" != "1" ]; then
  sanitize memcheck 180
fi

# The candidates, so that a run whose timings favour them also shows them correct on the GPU:
# COMMAND with every variable of pdl_post._cuda.CANDIDATES set to 1 (exported around it, not in a
# subshell: `within` records failures in this shell).
if ! candidates=$("$PY" -c \
  'from pdl_post._cuda import CANDIDATES; print(" ".join(v for _, v in CANDIDATES.values()))'); then
  failed+=("reading pdl_post._cuda.CANDIDATES")
  candidates=""
fi
read -r -a candidate_variables <<< "$candidates"
candidates_on() {
  local variable
  for variable in "${candidate_variables[@]}"; do export "$variable=1"; done
  "$@"
  for variable in "${candidate_variables[@]}"; do unset "$variable"; done
}
echo "candidates: ${candidate_variables[*]}"

step "device tests on the GPU, candidates on"
candidates_on within 120 "device tests, candidates on" "$PY" -m pytest "${device_tests[@]}"
if [ "${SKIP_MEMCHECK:-0}" != "1" ]; then
  candidates_on sanitize memcheck 180 "candidates on"
fi

# After the timings, so that they cannot cost them: what the host emulator cannot show
# (shared-memory hazards between real warps, barrier misuse, reads of memory nothing wrote).
if [ "${SKIP_SANITIZERS:-0}" != "1" ]; then
  for tool in racecheck synccheck initcheck; do
    sanitize "$tool" 150
  done
  candidates_on sanitize racecheck 150 "candidates on"
fi
step "done"
[ ${#skipped[@]} -gt 0 ] && echo "SKIPPED (no time left): ${skipped[*]}"
if [ ${#failed[@]} -gt 0 ]; then
  echo "FAILED: ${failed[*]}"
  exit 1
fi
echo "all steps passed"
