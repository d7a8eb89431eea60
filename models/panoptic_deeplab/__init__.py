"""Reference PyTorch Panoptic-DeepLab (Cheng et al., CVPR 2020) for ``pdl_post``.

Network (ResNet-50 / Xception-71 / tiny backbones, dual ASPP + light-weight decoders, heads),
training targets, losses, training loop (single process or DDP), data sets, a ``Predictor``
with flip / multi-scale TTA and export. Post-processing is done by ``pdl_post``.

Command line: ``python -m panoptic_deeplab summary|train|evaluate|predict|export|demo``.
Needs torch (CPU build is enough), PyYAML, tqdm, matplotlib, Pillow.
"""

from .config import load_config
from .losses import PanopticDeepLabLoss
from .network import PanopticDeepLab, build_model
from .predict import Predictor
from .targets import panoptic_targets, panoptic_targets_reference

__all__ = [
    "PanopticDeepLab",
    "PanopticDeepLabLoss",
    "Predictor",
    "build_model",
    "load_config",
    "panoptic_targets",
    "panoptic_targets_reference",
]
