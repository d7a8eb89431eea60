"""One merge call at batch 1, then one at batch 8 (1024x2048, 40 centres), after a warm-up call,
and with ``--candidates`` one more at batch 8 per candidate of ``pdl_post._cuda.CANDIDATES`` (each
alone on): the case ``ncu`` profiles kernel by kernel on a GPU machine (``ncu_kernels.sh``), e.g.

    ncu -k regex:"vote_kernel|write_kernel" --launch-skip 2 --launch-count 4 \\
        --section SpeedOfLight --section WarpStateStats python3 benchmarks/ncu_case.py

(the warm-up call launches each kernel once: skip as many launches as the filter matches there).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

import pdl_post
from pdl_post import synthetic


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", action="store_true", help="a batch-8 call per candidate")
    args = parser.parse_args(argv)
    kw = pdl_post.presets.CITYSCAPES.kwargs()

    def upload(scene):
        return [
            torch.from_numpy(np.ascontiguousarray(a)).cuda()
            for a in (scene.sem.astype(np.int32), scene.ctr, scene.off)
        ]

    one = upload(synthetic.make_scene(1024, 2048, 40, seed=0))
    eight = upload(synthetic.make_batch(8, 1024, 2048, 40, seed=0))
    pdl_post.merge(*one, **kw)  # warm-up
    pdl_post.merge(*one, **kw)
    pdl_post.merge(*eight, **kw)
    if args.candidates:
        from pdl_post._cuda import CANDIDATES

        for hook, _ in CANDIDATES.values():
            previous = getattr(pdl_post._core, hook)(True)
            pdl_post.merge(*eight, **kw)
            getattr(pdl_post._core, hook)(previous)
    torch.cuda.synchronize()


if __name__ == "__main__":
    main()
