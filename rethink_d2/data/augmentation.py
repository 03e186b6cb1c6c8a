"""Train-time augmentations chosen by ``RETHINK.INPUT.AUGMENTATION``, including large-scale jitter.

Large-scale jitter (LSJ; Ghiasi et al., "Simple Copy-Paste", CVPR 2021) is the augmentation of
Detectron2's strongest from-scratch baselines (``configs/new_baselines/*_LSJ.py``), which exist
only as LazyConfig files. ``"LSJ"`` builds the same thing for YAML configs: ``ResizeScale``,
``FixedSizeCrop`` (padding with 128 / 255) and ``RandomFlip`` in a ``DatasetMapper`` with
``recompute_boxes=True``, as ``configs/common/data/coco.py`` + ``*_LSJ.py`` do (docs/lsj.md).
"""

import detectron2.data.transforms as T
from detectron2.data import DatasetMapper
from detectron2.utils.registry import Registry

from ..utils.errors import ConfigError

__all__ = ["TRAIN_AUGMENTATION_REGISTRY", "build_train_mapper"]

TRAIN_AUGMENTATION_REGISTRY = Registry("TRAIN_AUGMENTATION")
TRAIN_AUGMENTATION_REGISTRY.__doc__ = """
Train augmentation recipes, selected by ``RETHINK.INPUT.AUGMENTATION``: ``fn(cfg)`` returns the
list of Detectron2 ``Augmentation`` objects that ``DatasetMapper`` applies in order.
"""


@TRAIN_AUGMENTATION_REGISTRY.register()
def LSJ(cfg):  # noqa: N802 (registry keys are the names written in configs)
    """Large-scale jitter of ``RETHINK.INPUT.{IMAGE_SIZE, MIN_SCALE, MAX_SCALE}``."""
    node = cfg.RETHINK.INPUT
    size, min_scale, max_scale = node.IMAGE_SIZE, node.MIN_SCALE, node.MAX_SCALE
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ConfigError(
            f"RETHINK.INPUT.IMAGE_SIZE={size!r} must be a positive integer (Detectron2: 1024)"
        )
    if not 0 < min_scale <= max_scale:
        raise ConfigError(
            f"RETHINK.INPUT.MIN_SCALE={min_scale} and MAX_SCALE={max_scale} must satisfy "
            f"0 < MIN_SCALE <= MAX_SCALE (Detectron2: 0.1 and 2.0)"
        )
    if cfg.INPUT.CROP.ENABLED:
        raise ConfigError(
            "INPUT.CROP.ENABLED adds a second crop to RETHINK.INPUT.AUGMENTATION 'LSJ', which "
            "crops to RETHINK.INPUT.IMAGE_SIZE itself: set INPUT.CROP.ENABLED False"
        )
    return [
        T.ResizeScale(
            min_scale=min_scale, max_scale=max_scale, target_height=size, target_width=size
        ),
        T.FixedSizeCrop(crop_size=(size, size)),
        T.RandomFlip(horizontal=True),
    ]


def build_train_mapper(cfg):
    """
    Detectron2's training ``DatasetMapper`` with the augmentations of
    ``RETHINK.INPUT.AUGMENTATION``; pass it as ``mapper=`` to ``build_detection_train_loader``.

    ``""`` gives exactly ``DatasetMapper(cfg, is_train=True)``. With a recipe, every other mapper
    setting still comes from ``cfg``, and boxes are recomputed from the masks after cropping
    (when ``MODEL.MASK_ON``), as in Detectron2's LSJ LazyConfig files.
    """
    name = str(cfg.RETHINK.INPUT.AUGMENTATION)
    if name == "":
        return DatasetMapper(cfg, is_train=True)
    if name not in TRAIN_AUGMENTATION_REGISTRY:
        known = sorted(k for k, _ in TRAIN_AUGMENTATION_REGISTRY)
        raise ConfigError(
            f"RETHINK.INPUT.AUGMENTATION={name!r} is not a registered augmentation: use one of "
            f"{known}, or '' for Detectron2's INPUT.MIN_SIZE_TRAIN resize and flip"
        )
    augmentations = TRAIN_AUGMENTATION_REGISTRY.get(name)(cfg)
    # DatasetMapper logs the augmentations it uses.
    return DatasetMapper(
        cfg, is_train=True, augmentations=augmentations, recompute_boxes=bool(cfg.MODEL.MASK_ON)
    )
