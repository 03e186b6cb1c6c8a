"""Input settings that match the initial weights (or their absence): ``RETHINK.PRETRAINED_FORMAT``
sets ``MODEL.PIXEL_MEAN``, ``MODEL.PIXEL_STD``, ``INPUT.FORMAT`` and ``MODEL.RESNETS.STRIDE_IN_1X1``
together (table ``PRETRAINED_FORMATS``; all use the ImageNet mean in FORMAT's channel order).

Formats: "scratch" (no weights, Detectron2's 9x scratch configs), "msra" (``detectron2://`` or
``catalog://ImageNetPretrained/MSRA/...``), "fair_caffe2" (``catalog://ImageNetPretrained/FAIR/``,
e.g. R-50-GN), "fair" (``detectron2://ImageNetPretrained/FAIR/...``), "torchvision" (in the path,
or a file named like ``resnet50-0676ba61.pth``). ``"auto"`` detects it from ``MODEL.WEIGHTS`` and
keeps the keys as written for anything else (e.g. a detector checkpoint); ``""`` never sets them.
"""

import logging
import os
import re

from ..utils.errors import ConfigError

logger = logging.getLogger(__name__)


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
    Returns:
        str or None: the key of ``PRETRAINED_FORMATS`` for ``MODEL.WEIGHTS`` ``weights`` and
        ``RETHINK.SCRATCH`` ``scratch``, or None if the weights are not recognized.
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
    Set the input keys from ``RETHINK.PRETRAINED_FORMAT`` (see the module docstring); modifies
    and returns ``cfg`` (unfrozen).
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
    Rename the state dict (under "model") of a torchvision ResNet/ResNeXt checkpoint to
    Detectron2's ResNet names; a checkpointer calls it from ``_load_file``. Anything else is
    returned unchanged.

    ``fc.*`` is dropped. As in Detectron2's ``tools/convert-torchvision-to-d2.py``, names have no
    ``backbone.bottom_up.`` prefix and ``matching_heuristics`` is set, so the file loads into a
    detector or a bare backbone; the new dict also has ``"__author__": "torchvision"``.
    """
    state_dict = checkpoint.get("model") if isinstance(checkpoint, dict) else None
    keys = set(state_dict) if isinstance(state_dict, dict) else set()
    if not {"conv1.weight", "bn1.weight"} <= keys or not any(k.startswith("layer1.") for k in keys):
        return checkpoint
    renamed = {
        _torchvision_to_detectron2_name(name): value
        for name, value in state_dict.items()
        if not name.startswith("fc.")
    }
    converted = dict(checkpoint)
    converted.update(model=renamed, __author__="torchvision", matching_heuristics=True)
    return converted
