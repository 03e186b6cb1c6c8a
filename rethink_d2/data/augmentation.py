"""Train-time augmentations chosen by ``RETHINK.INPUT.AUGMENTATION``, including large-scale jitter.

Large-scale jitter (LSJ; Ghiasi et al., "Simple Copy-Paste", CVPR 2021) is the augmentation of
Detectron2's strongest from-scratch baselines (``configs/new_baselines/*_LSJ.py``), which exist
only as LazyConfig files. This module builds the same thing for YAML configs::

    ResizeScale(min_scale, max_scale, target_height=size, target_width=size)
    FixedSizeCrop(crop_size=(size, size))   # pads with 128 (image) / 255 (segmentation)
    RandomFlip(horizontal=True)

in a ``DatasetMapper`` with ``recompute_boxes=True`` (boxes are re-derived from the cropped
masks), exactly as ``configs/common/data/coco.py`` + ``mask_rcnn_R_50_FPN_100ep_LSJ.py`` do.

Augmentation recipes live in :data:`TRAIN_AUGMENTATION_REGISTRY`; ``""`` (the default) is
Detectron2's own ``DatasetMapper(cfg, True)``, unchanged. A Detectron2 user who keeps their own
``DefaultTrainer`` calls :func:`build_train_mapper` from its ``build_train_loader``::

    class MyTrainer(DefaultTrainer):
        @classmethod
        def build_train_loader(cls, cfg):
            return build_detection_train_loader(cfg, mapper=build_train_mapper(cfg))
"""

import detectron2.data.transforms as T
from detectron2.data import DatasetMapper
from detectron2.utils.registry import Registry

from ..utils.errors import ConfigError

__all__ = [
    "TRAIN_AUGMENTATION_REGISTRY",
    "build_lsj_augmentations",
    "build_train_augmentations",
    "build_train_mapper",
]

TRAIN_AUGMENTATION_REGISTRY = Registry("TRAIN_AUGMENTATION")
TRAIN_AUGMENTATION_REGISTRY.__doc__ = """
Train augmentation recipes, selected by ``RETHINK.INPUT.AUGMENTATION``.

A registered object is called as ``fn(cfg)`` and returns a list of Detectron2
``Augmentation`` objects, applied in order by ``DatasetMapper``.
"""


def build_lsj_augmentations(cfg):
    """
    Large-scale jitter, as in Detectron2's ``new_baselines`` LazyConfig files.

    Args:
        cfg (CfgNode): a config with ``RETHINK.INPUT.{IMAGE_SIZE, MIN_SCALE, MAX_SCALE}``.

    Returns:
        list[Augmentation]: ``[ResizeScale, FixedSizeCrop, RandomFlip(horizontal=True)]``.

    Raises:
        ConfigError: a size or scale range that cannot work, or ``INPUT.CROP.ENABLED`` (a second
            crop on top of LSJ's own).
    """
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


@TRAIN_AUGMENTATION_REGISTRY.register()
def LSJ(cfg):  # noqa: N802 (registry keys are the names written in configs)
    """
    ``RETHINK.INPUT.AUGMENTATION "LSJ"``: see :func:`build_lsj_augmentations`.

    Args:
        cfg (CfgNode): the config.

    Returns:
        list[Augmentation]
    """
    return build_lsj_augmentations(cfg)


def build_train_augmentations(cfg):
    """
    The train augmentations named by ``RETHINK.INPUT.AUGMENTATION``.

    Args:
        cfg (CfgNode): a config that went through ``add_rethink_config``.

    Returns:
        list[Augmentation] or None: None for ``""`` (Detectron2's own, built by
        ``DatasetMapper.from_config``), else the registered recipe's list.

    Raises:
        ConfigError: an unknown recipe name, or invalid recipe settings.
    """
    name = str(cfg.RETHINK.INPUT.AUGMENTATION)
    if name == "":
        return None
    if name not in TRAIN_AUGMENTATION_REGISTRY:
        known = sorted(k for k, _ in TRAIN_AUGMENTATION_REGISTRY)
        raise ConfigError(
            f"RETHINK.INPUT.AUGMENTATION={name!r} is not a registered augmentation: use one of "
            f"{known}, or '' for Detectron2's INPUT.MIN_SIZE_TRAIN resize and flip"
        )
    return TRAIN_AUGMENTATION_REGISTRY.get(name)(cfg)


def build_train_mapper(cfg):
    """
    The training ``DatasetMapper`` of a config: Detectron2's, with the augmentations of
    ``RETHINK.INPUT.AUGMENTATION``.

    For ``""`` this is exactly ``DatasetMapper(cfg, is_train=True)``. For ``"LSJ"`` every other
    mapper setting (image format, masks, keypoints, proposals) still comes from ``cfg``; the
    augmentations are replaced and boxes are recomputed from the masks after cropping
    (``recompute_boxes``, when ``MODEL.MASK_ON``), as in Detectron2's LSJ LazyConfig files.

    Args:
        cfg (CfgNode): a config that went through ``add_rethink_config``.

    Returns:
        DatasetMapper: pass it as ``mapper=`` to ``build_detection_train_loader``.

    Raises:
        ConfigError: an unknown recipe name, or invalid recipe settings.
    """
    augmentations = build_train_augmentations(cfg)
    if augmentations is None:
        return DatasetMapper(cfg, is_train=True)
    # DatasetMapper logs the augmentations it uses.
    return DatasetMapper(
        cfg,
        is_train=True,
        augmentations=augmentations,
        recompute_boxes=bool(cfg.MODEL.MASK_ON),
    )
