"""One normalization for the whole detector, chosen by ``RETHINK.NORM``, and the checks run
before a model is built.

``apply_norm_config`` writes Detectron2's per-module ``NORM`` keys (and selects
:class:`NormKRCNNConvDeconvUpsampleHead` for keypoints). ``"SyncBN"`` is ``torch.nn.SyncBatchNorm``
in backbone and FPN on "cuda*" devices, Detectron2's ``NaiveSyncBatchNorm`` on others (torch's
refuses CPU tensors once a process group exists), and ``naiveSyncBN_N`` in the heads on any
device: a process may see no RoI, and with ``stats_mode="N"`` an empty batch weighs nothing
instead of crashing.
"""

import logging

from detectron2.layers import Conv2d
from torch import nn

from ..utils.errors import ConfigError

logger = logging.getLogger(__name__)


# Values accepted by RETHINK.NORM ("" leaves Detectron2's NORM keys as written).
NORM_CHOICES = ("GN", "SyncBN", "BN", "")
# Detectron2 keys that receive the backbone-side norm and the head-side norm.
BACKBONE_NORM_KEYS = ("MODEL.RESNETS.NORM", "MODEL.FPN.NORM")
HEAD_NORM_KEYS = ("MODEL.ROI_BOX_HEAD.NORM", "MODEL.ROI_MASK_HEAD.NORM")
# Detectron2's default keypoint head is swapped for our subclass, which has the head norm.
_D2_KEYPOINT_HEAD = "KRCNNConvDeconvUpsampleHead"
NORM_KEYPOINT_HEAD = "NormKRCNNConvDeconvUpsampleHead"
# Detectron2's get_norm("GN") always builds nn.GroupNorm(32, channels).
_D2_GN_GROUPS = 32
_RESNET_DEPTHS = (18, 34, 50, 101, 152)


def _node(cfg, key):
    """The config node that holds a ``MODEL.<X>.NORM`` key."""
    return cfg.MODEL[key.split(".")[1]]


def _validate_rethink_norm(cfg):
    norm = cfg.RETHINK.NORM
    if norm not in NORM_CHOICES:
        raise ConfigError(
            f"RETHINK.NORM={norm!r} is not supported; use one of {list(NORM_CHOICES)} "
            "('' leaves MODEL.*.NORM as written)"
        )
    groups = cfg.RETHINK.GN_GROUPS
    if not isinstance(groups, int) or isinstance(groups, bool) or groups < 1:
        raise ConfigError(f"RETHINK.GN_GROUPS={groups!r} must be a positive integer (e.g. 32)")
    return norm


def resolve_norm_names(norm, device):
    """
    Returns:
        tuple[str, str]: the Detectron2 ``get_norm`` names of ``RETHINK.NORM`` value ``norm``
        ("GN", "SyncBN" or "BN") on ``device``: one for backbone and FPN, one for the RoI heads.
    """
    if norm == "SyncBN":
        backbone = "SyncBN" if str(device).startswith("cuda") else "naiveSyncBN"
        return backbone, "naiveSyncBN_N"
    return norm, norm


def apply_norm_config(cfg):
    """
    Write ``MODEL.RESNETS/FPN/ROI_BOX_HEAD/ROI_MASK_HEAD.NORM`` from ``RETHINK.NORM`` (``""``:
    leave them as written) and, with ``MODEL.KEYPOINT_ON``, select
    ``NormKRCNNConvDeconvUpsampleHead``. Modifies and returns ``cfg`` (unfrozen).
    """
    norm = _validate_rethink_norm(cfg)
    if norm == "":
        return cfg
    backbone_norm, head_norm = resolve_norm_names(norm, cfg.MODEL.DEVICE)
    for key in BACKBONE_NORM_KEYS + HEAD_NORM_KEYS:
        _node(cfg, key).NORM = backbone_norm if key in BACKBONE_NORM_KEYS else head_norm
    if cfg.MODEL.KEYPOINT_ON:
        head_name = cfg.MODEL.ROI_KEYPOINT_HEAD.NAME
        if head_name == _D2_KEYPOINT_HEAD:
            cfg.MODEL.ROI_KEYPOINT_HEAD.NAME = NORM_KEYPOINT_HEAD
        elif head_name != NORM_KEYPOINT_HEAD:
            logger.warning(
                f"MODEL.ROI_KEYPOINT_HEAD.NAME={head_name!r} is not normalized by RETHINK.NORM; "
                f"use {NORM_KEYPOINT_HEAD!r} for a keypoint head with the {norm} norm"
            )
    return cfg


def _group_norm_layers(cfg, parts):
    """Yield (config key that sets the width, channels) for every GN layer of ``parts``."""
    m = cfg.MODEL
    if "backbone" in parts and m.RESNETS.NORM == "GN":
        yield "MODEL.RESNETS.STEM_OUT_CHANNELS", m.RESNETS.STEM_OUT_CHANNELS
        for stage in range(4):
            yield "MODEL.RESNETS.RES2_OUT_CHANNELS", m.RESNETS.RES2_OUT_CHANNELS * 2**stage
            if m.RESNETS.DEPTH >= 50:
                width = m.RESNETS.NUM_GROUPS * m.RESNETS.WIDTH_PER_GROUP * 2**stage
                yield "MODEL.RESNETS.NUM_GROUPS x WIDTH_PER_GROUP", width
    if "backbone" in parts and m.FPN.NORM == "GN":
        yield "MODEL.FPN.OUT_CHANNELS", m.FPN.OUT_CHANNELS
    if "heads" in parts:
        if m.ROI_BOX_HEAD.NORM == "GN" and m.ROI_BOX_HEAD.NUM_CONV > 0:
            yield "MODEL.ROI_BOX_HEAD.CONV_DIM", m.ROI_BOX_HEAD.CONV_DIM
        if m.MASK_ON and m.ROI_MASK_HEAD.NORM == "GN" and m.ROI_MASK_HEAD.NUM_CONV > 0:
            yield "MODEL.ROI_MASK_HEAD.CONV_DIM", m.ROI_MASK_HEAD.CONV_DIM
        keypoint_gn = m.ROI_KEYPOINT_HEAD.NAME == NORM_KEYPOINT_HEAD and m.ROI_BOX_HEAD.NORM == "GN"
        if m.KEYPOINT_ON and keypoint_gn:
            for dim in m.ROI_KEYPOINT_HEAD.CONV_DIMS:
                yield "MODEL.ROI_KEYPOINT_HEAD.CONV_DIMS", dim


def check_model_config(cfg, parts=("backbone", "heads")):
    """
    Raise a ConfigError, before building, for a config without ``RETHINK`` node, with
    ``MODEL.*.NORM`` keys that ``RETHINK.NORM`` could not have written (on any device), or whose
    ResNet depth/width or GN widths of ``parts`` ("backbone": ResNet + FPN, "heads": RoI heads)
    do not fit. Norm keys are checked for the whole detector.
    """
    if "RETHINK" not in cfg:
        raise ConfigError(
            "the config has no RETHINK node: call rethink_d2.add_rethink_config(cfg) before "
            "merging the config file, then rethink_d2.resolve_config(cfg)"
        )
    norm = _validate_rethink_norm(cfg)
    # every key, whatever the part: a backbone must not be built for a detector whose heads
    # would end up with another norm ("" accepts anything)
    keys = BACKBONE_NORM_KEYS + HEAD_NORM_KEYS if norm else ()
    for key in keys:
        side = 0 if key in BACKBONE_NORM_KEYS else 1
        allowed = {resolve_norm_names(norm, device)[side] for device in ("cpu", "cuda")}
        value = _node(cfg, key).NORM
        if value not in allowed:
            raise ConfigError(
                f"{key}={value!r} disagrees with RETHINK.NORM={norm!r} (expected one of "
                f"{sorted(allowed)}): call rethink_d2.resolve_config(cfg) before building the "
                "model, or set RETHINK.NORM '' to write every MODEL.*.NORM key yourself"
            )
    r = cfg.MODEL.RESNETS
    if "backbone" in parts and r.DEPTH not in _RESNET_DEPTHS:
        raise ConfigError(f"MODEL.RESNETS.DEPTH={r.DEPTH!r} is not one of {list(_RESNET_DEPTHS)}")
    if "backbone" in parts and r.DEPTH in (18, 34):
        for key, needed in (("RES2_OUT_CHANNELS", 64), ("NUM_GROUPS", 1)):
            if r[key] != needed:
                raise ConfigError(
                    f"MODEL.RESNETS.DEPTH={r.DEPTH} (basic blocks) needs "
                    f"MODEL.RESNETS.{key} {needed}, not {r[key]}"
                )
    # Detectron2 builds GN with 32 groups, then regroup_group_norms makes them GN_GROUPS
    groups = cfg.RETHINK.GN_GROUPS
    for key, channels in _group_norm_layers(cfg, parts):
        for divisor, name in ((groups, "RETHINK.GN_GROUPS"), (_D2_GN_GROUPS, "Detectron2's GN")):
            if channels % divisor:
                raise ConfigError(
                    f"a GroupNorm layer has {channels} channels (set by {key}), which is not "
                    f"divisible by {divisor} groups ({name}); change {key} or RETHINK.GN_GROUPS "
                    f"so that every GN width is a multiple of both {groups} and {_D2_GN_GROUPS}"
                )


def regroup_group_norms(module, num_groups):
    """
    Give the GroupNorm of every Detectron2 ``Conv2d`` in a freshly built ``module``
    ``num_groups`` groups (a new layer: gamma=1, beta=0); return the number replaced.
    """
    replaced = 0
    for name, conv in module.named_modules():
        norm = getattr(conv, "norm", None)
        if not isinstance(conv, Conv2d) or not isinstance(norm, nn.GroupNorm):
            continue
        if norm.num_groups == num_groups:
            continue
        if norm.num_channels % num_groups:
            raise ConfigError(
                f"RETHINK.GN_GROUPS={num_groups} does not divide the {norm.num_channels} "
                f"channels of {name}.norm; choose a divisor of every GN width"
            )
        # on the old layer's device: Detectron2's build_model has already moved the model
        tensor = next(norm.parameters(), None)
        factory = {} if tensor is None else {"device": tensor.device, "dtype": tensor.dtype}
        conv.norm = nn.GroupNorm(
            num_groups, norm.num_channels, eps=norm.eps, affine=norm.affine, **factory
        )
        replaced += 1
    return replaced
