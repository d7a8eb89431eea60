#!/usr/bin/env bash
# Builds pdl_post with other CUDA releases than the installed one and prints what each build
# reports: the .cu sources must build with every release the build accepts (CUDA 12.0 and later,
# whose cub / libcu++ versions differ), and an older nvcc must give a CPU-only build that says
# why. The toolkits come from Debian and Ubuntu packages, unpacked under WORK (nothing installed,
# no root needed); each build is a wheel, imported from where it was unpacked.
#
#   benchmarks/cuda_toolkits.sh [WORK]        (default /tmp/pdl_post_toolkits)
#
# Needs apt-get and dpkg (a Debian or Ubuntu host), access to deb.debian.org and
# archive.ubuntu.com (about 1.9 GB of packages), and the project's .venv (make develop) for the
# build requirements. About 15 minutes on 2 cores, most of it the two four-architecture builds.
# Results: benchmarks/RESULTS.md ("CUDA releases").
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
work=${1:-/tmp/pdl_post_toolkits}
py=$root/.venv/bin/python
mkdir -p "$work"

debian="http://deb.debian.org/debian"
ubuntu="http://archive.ubuntu.com/ubuntu"
debian_key=/usr/share/keyrings/debian-archive-keyring.gpg
ubuntu_key=$work/ubuntu-keyring/root/usr/share/keyrings/ubuntu-archive-keyring.gpg

# fetch NAME "APT SOURCE LINE" PACKAGE...: downloads the packages with a private apt state and
# unpacks them into WORK/NAME/root.
fetch() {
  local name=$1 source=$2
  shift 2
  local state=$work/$name/apt
  rm -rf "$work/$name"
  mkdir -p "$state/lists/partial" "$state/cache" "$work/$name/debs" "$work/$name/root"
  echo "$source" >"$state/sources.list"
  local options=(-qq -oDir::Etc::SourceList="$state/sources.list" -oDir::Etc::SourceParts=/dev/null
    -oDir::State::Lists="$state/lists" -oDir::Cache="$state/cache" -oAPT::Architecture=amd64
    -oAPT::Sandbox::User=root)
  apt-get "${options[@]}" update
  (cd "$work/$name/debs" && apt-get "${options[@]}" download "$@")
  for deb in "$work/$name/debs"/*.deb; do dpkg -x "$deb" "$work/$name/root"; done
}

# toolkit NAME: NVIDIA's layout (bin, nvvm, include, lib64) from the Debian packaging's, so that
# nvcc and CMake's FindCUDAToolkit find everything relative to WORK/NAME/cuda/bin/nvcc.
toolkit() {
  local r=$work/$1/root t=$work/$1/cuda
  mkdir -p "$t/bin" "$t/nvvm/bin" "$t/nvvm/lib64" "$t/nvvm/libdevice" "$t/lib64"
  cp -a "$r/usr/lib/nvidia-cuda-toolkit/bin/nvcc" "$r/usr/lib/nvidia-cuda-toolkit/bin/crt" "$t/bin/"
  cp -a "$r/usr/lib/nvidia-cuda-toolkit/bin/cicc" "$t/nvvm/bin/"
  for tool in ptxas fatbinary nvlink cudafe++ bin2c nvprune cuobjdump cu++filt; do
    cp -a "$r/usr/bin/$tool" "$t/bin/"
  done
  cp -a "$r/usr/lib/nvidia-cuda-toolkit/libdevice/." "$t/nvvm/libdevice/"
  cp -a "$r"/usr/lib/x86_64-linux-gnu/libnvvm.so* "$t/nvvm/lib64/"
  cp -a "$r"/usr/lib/x86_64-linux-gnu/libcudart* "$r"/usr/lib/x86_64-linux-gnu/libcudadevrt.a \
    "$r"/usr/lib/x86_64-linux-gnu/libculibos.a "$t/lib64/"
  ln -sfn "$r/usr/include" "$t/include"
  cat >"$t/bin/nvcc.profile" <<'EOF'
TOP              = $(_HERE_)/..
NVVMIR_LIBRARY_DIR = $(TOP)/nvvm/libdevice
LD_LIBRARY_PATH += $(TOP)/lib64:$(TOP)/nvvm/lib64:
PATH            += $(TOP)/nvvm/bin:$(_HERE_):
INCLUDES        +=  "-I$(TOP)/include" $(_SPACE_)
LIBRARIES        =+ $(_SPACE_) "-L$(TOP)/lib64/stubs" "-L$(TOP)/lib64"
CUDAFE_FLAGS    +=
PTXAS_FLAGS     +=
EOF
}

# build NAME NVCC: a wheel built with CUDACXX=NVCC (PDL_POST_CUDA=AUTO), unpacked and imported.
build() {
  local name=$1 nvcc=$2 dir=$work/$1
  echo
  echo "== $name: $("$nvcc" --version | grep -o 'release [0-9.]*')"
  rm -rf "$dir/build" "$dir/wheel" "$dir/site"
  CUDACXX=$nvcc PDL_POST_CUDA=AUTO "$py" -m pip wheel --quiet --no-build-isolation --no-deps \
    -Cbuild-dir="$dir/build" -w "$dir/wheel" "$root" >"$dir/build.log" 2>&1 ||
    {
      tail -30 "$dir/build.log"
      echo "$name: BUILD FAILED ($dir/build.log)"
      return 1
    }
  grep -i "warning" "$dir/build.log" || echo "no compiler warnings"
  mkdir -p "$dir/site" && (cd "$dir/site" && "$py" -m zipfile -e "$dir"/wheel/*.whl .)
  # -S: without site, so that the editable install of the checkout does not shadow the wheel.
  "$py" -S - "$dir/site" "$("$py" -c 'import numpy, os; print(os.path.dirname(os.path.dirname(numpy.__file__)))')" <<'PYEOF'
import sys

sys.path[:0] = sys.argv[1:]
import numpy as np

import pdl_post
from pdl_post import synthetic

assert pdl_post.__file__.startswith(sys.argv[1]), pdl_post.__file__
info = pdl_post.build_info()
print("build_info()['cuda']:", info["cuda"])
print("cuda_build:", info.get("cuda_build"), "| cuda_available():", pdl_post.cuda_available())
s = synthetic.make_scene(64, 96, 8, seed=0)
print("CPU merge runs:", np.unique(pdl_post.merge(s.sem, s.ctr, s.off)).size, "ids")
PYEOF
  if [ -x "$dir/cuda/bin/cuobjdump" ]; then  # the GPU code in the extension, per architecture
    local so=("$dir"/site/pdl_post/_core*.so) kind
    for kind in elf ptx; do
      echo "$kind: $("$dir/cuda/bin/cuobjdump" --list-$kind "${so[0]}" | grep -o 'sm_[0-9]*' |
        sort | uniq -c | tr -s ' \n' ' ')"
    done
  fi
}

fetch ubuntu-keyring "deb [signed-by=$debian_key] $debian trixie main" ubuntu-keyring
status=0

# CUDA 11.8 (Debian 12): older than the build accepts; only its nvcc is needed, run from where
# it was unpacked (CMake's own compiler check fails there, so this is the fallback's path).
fetch cuda-11.8 "deb [signed-by=$debian_key] $debian bookworm non-free" nvidia-cuda-toolkit
build cuda-11.8 "$work/cuda-11.8/root/usr/lib/nvidia-cuda-toolkit/bin/nvcc" || status=1

# CUDA 12.0 (Ubuntu 24.04, with CUDA 12.0's cub 2.0.1 and libcu++ 1.9.0), the oldest accepted.
fetch cuda-12.0 "deb [signed-by=$ubuntu_key] $ubuntu noble main universe multiverse" \
  nvidia-cuda-toolkit nvidia-cuda-dev libnvvm4 libcudart12 libcub-dev libthrust-dev libcu++-dev
toolkit cuda-12.0
build cuda-12.0 "$work/cuda-12.0/cuda/bin/nvcc" || status=1

# CUDA 12.4 (Debian 13, with CCCL 2.3).
fetch cuda-12.4 "deb [signed-by=$debian_key] $debian trixie non-free main" \
  nvidia-cuda-toolkit nvidia-cuda-dev libnvvm4 libcudart12 libcub-dev libthrust-dev libcu++-dev
toolkit cuda-12.4
build cuda-12.4 "$work/cuda-12.4/cuda/bin/nvcc" || status=1

echo
[ $status -eq 0 ] && echo "all builds done" || echo "FAILED: see above"
exit $status
