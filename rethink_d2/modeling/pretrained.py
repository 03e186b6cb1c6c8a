"""Input statistics and layout that match the initial weights (or their absence).

Every scratch config has a fair pre-trained counterpart: the same builders with ImageNet weights.
The weights decide the pixel mean/std, the channel order and where the stride of a bottleneck
block sits, so ``RETHINK.PRETRAINED_FORMAT`` sets ``MODEL.PIXEL_MEAN``, ``MODEL.PIXEL_STD``,
``INPUT.FORMAT`` and ``MODEL.RESNETS.STRIDE_IN_1X1`` together:

- "scratch": ``MODEL.WEIGHTS ""`` with ``RETHINK.SCRATCH``; BGR, ImageNet std,
  STRIDE_IN_1X1 False (Detectron2's 9x scratch configs).
- "msra": ``detectron2://`` or ``catalog://ImageNetPretrained/MSRA/...``; BGR, std [1, 1, 1],
  STRIDE_IN_1X1 True.
- "fair_caffe2": ``catalog://ImageNetPretrained/FAIR/...`` (e.g. R-50-GN); BGR, std [1, 1, 1],
  STRIDE_IN_1X1 False.
- "fair": ``detectron2://ImageNetPretrained/FAIR/...`` (e.g. X-101-32x8d.pkl); BGR, ImageNet std,
  STRIDE_IN_1X1 False.
- "torchvision": "torchvision" anywhere in the path, or a file named like
  ``resnet50-0676ba61.pth``; RGB, ImageNet std, STRIDE_IN_1X1 False.

All use the ImageNet mean (in the channel order of FORMAT). "scratch" is the setting of
Detectron2's 9x scratch configs. ``"auto"`` picks the row from ``MODEL.WEIGHTS`` and leaves the
four keys as written for anything else (e.g. a detector checkpoint); ``""`` never touches them.

Torchvision checkpoints are renamed for Detectron2 by :func:`maybe_convert_torchvision_checkpoint`,
which a checkpointer calls from its ``_load_file``.
"""

import logging
import os
import re

from ..utils.errors import ConfigError

logger = logging.getLogger(__name__)

__all__ = [
    "PRETRAINED_FORMATS",
    "detect_pretrained_format",
    "apply_pretrained_format",
    "maybe_convert_torchvision_checkpoint",
]

_MEAN_BGR = [103.53, 116.28, 123.675]
_STD_BGR = [57.375, 57.12, 58.395]
_UNIT_STD = [1.0, 1.0, 1.0]

# format -> (INPUT.FORMAT, PIXEL_MEAN, PIXEL_STD, STRIDE_IN_1X1)
PRETRAINED_FORMATS = {
    "scratch": ("BGR", _MEAN_BGR, _STD_BGR, False),
    "msra": ("BGR", _MEAN_BGR, _UNIT_STD, True),
    "fair_caffe2": ("BGR", _MEAN_BGR, _UNIT_STD, False),
    "fair": ("BGR", _MEAN_BGR, _STD_BGR, False),
    "torchvision": ("RGB", _MEAN_BGR[::-1], _STD_BGR[::-1], False),
}

_TORCHVISION_FILE = re.compile(r"^(resnet|resnext|wide_resnet)\d+[\w]*-[0-9a-f]{8,}\.pth$")


def detect_pretrained_format(weights, scratch):
    """
    Args:
        weights (str): ``MODEL.WEIGHTS``.
        scratch (bool): ``RETHINK.SCRATCH``.

    Returns:
        str or None: a key of ``PRETRAINED_FORMATS``, or None if the weights are not recognized
        (their input settings are then left as written).
    """
    if not weights:
        return "scratch" if scratch else None
    if "ImageNetPretrained/MSRA/" in weights:
        return "msra"
    if weights.startswith("catalog://ImageNetPretrained/FAIR/"):
        return "fair_caffe2"
    if "ImageNetPretrained/FAIR/" in weights:
        return "fair"
    if "torchvision" in weights or _TORCHVISION_FILE.match(os.path.basename(weights)):
        return "torchvision"
    return None


def apply_pretrained_format(cfg):
    """
    Set ``INPUT.FORMAT``, ``MODEL.PIXEL_MEAN``, ``MODEL.PIXEL_STD`` and
    ``MODEL.RESNETS.STRIDE_IN_1X1`` from ``RETHINK.PRETRAINED_FORMAT`` (see the module docstring).

    Args:
        cfg (CfgNode): an unfrozen config with the ``RETHINK`` node; modified in place.

    Returns:
        CfgNode: the same ``cfg``.

    Raises:
        ConfigError: if ``RETHINK.PRETRAINED_FORMAT`` is not "auto", "" or a known format.
    """
    fmt = cfg.RETHINK.PRETRAINED_FORMAT
    if fmt == "":
        return cfg
    if fmt == "auto":
        fmt = detect_pretrained_format(cfg.MODEL.WEIGHTS, cfg.RETHINK.SCRATCH)
        if fmt is None:
            if cfg.MODEL.WEIGHTS:
                logger.info(
                    f"RETHINK.PRETRAINED_FORMAT 'auto' does not recognize MODEL.WEIGHTS="
                    f"{cfg.MODEL.WEIGHTS!r}; INPUT.FORMAT, MODEL.PIXEL_MEAN/STD and "
                    "MODEL.RESNETS.STRIDE_IN_1X1 stay as written"
                )
            return cfg
    elif fmt not in PRETRAINED_FORMATS:
        raise ConfigError(
            f"RETHINK.PRETRAINED_FORMAT={fmt!r} is not supported; use 'auto', '' (keep the input "
            f"settings as written) or one of {sorted(PRETRAINED_FORMATS)}"
        )
    input_format, mean, std, stride_in_1x1 = PRETRAINED_FORMATS[fmt]
    cfg.INPUT.FORMAT = input_format
    cfg.MODEL.PIXEL_MEAN = list(mean)
    cfg.MODEL.PIXEL_STD = list(std)
    cfg.MODEL.RESNETS.STRIDE_IN_1X1 = stride_in_1x1
    return cfg


def _is_torchvision_resnet(state_dict):
    keys = set(state_dict)
    return {"conv1.weight", "bn1.weight"} <= keys and any(k.startswith("layer1.") for k in keys)


_TV_STAGE = re.compile(r"^layer([1-4])\.")
_TV_BN = re.compile(r"(^|\.)bn([1-3])\.")


def _torchvision_to_detectron2_name(name):
    """``layer1.0.bn2.weight`` -> ``res2.0.conv2.norm.weight`` (Detectron2's ResNet names)."""
    if not _TV_STAGE.match(name):
        name = "stem." + name
    name = _TV_STAGE.sub(lambda m: f"res{int(m.group(1)) + 1}.", name)
    name = _TV_BN.sub(lambda m: f"{m.group(1)}conv{m.group(2)}.norm.", name)
    name = name.replace("downsample.0.", "shortcut.").replace("downsample.1.", "shortcut.norm.")
    return name


def maybe_convert_torchvision_checkpoint(checkpoint):
    """
    Rename a torchvision ResNet/ResNeXt state dict to Detectron2's ResNet names.

    Pure function. ``conv1``/``bn1`` become ``stem.conv1``/``stem.conv1.norm``, ``layerN`` becomes
    ``res{N+1}``, ``bnK`` becomes ``convK.norm``, ``downsample.0/1`` becomes
    ``shortcut``/``shortcut.norm``; the classifier (``fc.*``) is dropped. Names carry no
    ``backbone.bottom_up.`` prefix and ``matching_heuristics`` is set, as in Detectron2's own
    ``tools/convert-torchvision-to-d2.py``: Detectron2's loader then matches them by suffix, so
    the same file loads into a whole detector or into a bare backbone.

    Args:
        checkpoint (dict): what a checkpointer's ``_load_file`` returns, with the state dict
            under "model".

    Returns:
        dict: a new dict with the renamed state dict, ``"__author__": "torchvision"`` and
        ``"matching_heuristics": True`` if the state dict is in torchvision's ResNet layout;
        otherwise ``checkpoint`` itself, unchanged.
    """
    state_dict = checkpoint.get("model") if isinstance(checkpoint, dict) else None
    if not isinstance(state_dict, dict) or not _is_torchvision_resnet(state_dict):
        return checkpoint
    renamed = {
        _torchvision_to_detectron2_name(name): value
        for name, value in state_dict.items()
        if not name.startswith("fc.")
    }
    converted = dict(checkpoint)
    converted.update(model=renamed, __author__="torchvision", matching_heuristics=True)
    return converted
