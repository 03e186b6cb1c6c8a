"""One normalization for the whole detector, chosen by ``RETHINK.NORM``.

``apply_norm_config`` turns ``RETHINK.NORM`` into Detectron2's per-module ``NORM`` strings
(backbone, FPN, box head, mask head, and the keypoint head through
:class:`NormKRCNNConvDeconvUpsampleHead`). Which SyncBN implementation is written depends on the
run, because none works everywhere:

- ``"GN"``: "GN" everywhere, with ``RETHINK.GN_GROUPS`` groups.
- ``"BN"``: "BN" everywhere (per-process statistics; for comparisons).
- ``"SyncBN"`` with ``MODEL.DEVICE`` "cuda*": "SyncBN" (``torch.nn.SyncBatchNorm``) in the
  backbone and FPN, "naiveSyncBN_N" in the heads: what the shipped SyncBN configs state
  literally. Both behave as plain BN in a single process.
- ``"SyncBN"`` on any other device: "naiveSyncBN" (Detectron2's ``NaiveSyncBatchNorm``) in the
  backbone and FPN, because ``torch.nn.SyncBatchNorm`` refuses CPU tensors once a process group
  exists (gloo runs, CPU debugging of a GPU config).
- ``""``: every ``MODEL.*.NORM`` key stays as written in the config.

Heads use ``naiveSyncBN_N`` (Detectron2's ``NaiveSyncBatchNorm(stats_mode="N")``) because a
process may see no RoI: statistics are weighted by each process's number of samples and an empty
batch contributes nothing instead of crashing.
"""

import logging

from detectron2.layers import Conv2d
from torch import nn

from ..utils.errors import ConfigError

logger = logging.getLogger(__name__)

__all__ = [
    "NORM_CHOICES",
    "BACKBONE_NORM_KEYS",
    "HEAD_NORM_KEYS",
    "resolve_norm_names",
    "apply_norm_config",
    "check_norm_consistency",
    "check_group_norm_channels",
    "regroup_group_norms",
]

# Values accepted by RETHINK.NORM ("" leaves Detectron2's NORM keys as written).
NORM_CHOICES = ("GN", "SyncBN", "BN", "")
# Detectron2 keys that receive the backbone-side norm and the head-side norm.
BACKBONE_NORM_KEYS = ("MODEL.RESNETS.NORM", "MODEL.FPN.NORM")
HEAD_NORM_KEYS = ("MODEL.ROI_BOX_HEAD.NORM", "MODEL.ROI_MASK_HEAD.NORM")
# Keypoint heads that get the head norm: Detectron2's default is swapped for our subclass.
_D2_KEYPOINT_HEAD = "KRCNNConvDeconvUpsampleHead"
NORM_KEYPOINT_HEAD = "NormKRCNNConvDeconvUpsampleHead"
# Detectron2's get_norm("GN") always builds nn.GroupNorm(32, channels).
_D2_GN_GROUPS = 32


def _get_key(cfg, key):
    """
    Args:
        cfg (CfgNode): a config.
        key (str): a dotted key such as ``"MODEL.FPN.NORM"``.

    Returns:
        the value of ``key`` in ``cfg``.
    """
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node


def _set_key(cfg, key, value):
    *parents, leaf = key.split(".")
    node = cfg
    for part in parents:
        node = node[part]
    setattr(node, leaf, value)


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
    Map a ``RETHINK.NORM`` value to Detectron2 ``get_norm`` names (see the module docstring).

    Args:
        norm (str): "GN", "SyncBN" or "BN".
        device (str): ``MODEL.DEVICE``; ``torch.nn.SyncBatchNorm`` is used on "cuda*" only.

    Returns:
        tuple[str, str]: the norm name for the backbone and FPN, and the one for the RoI heads.
    """
    if norm == "SyncBN":
        backbone = "SyncBN" if str(device).startswith("cuda") else "naiveSyncBN"
        return backbone, "naiveSyncBN_N"
    return norm, norm


def apply_norm_config(cfg):
    """
    Write Detectron2's per-module ``NORM`` keys from ``RETHINK.NORM``.

    Sets ``MODEL.RESNETS.NORM``, ``MODEL.FPN.NORM``, ``MODEL.ROI_BOX_HEAD.NORM`` and
    ``MODEL.ROI_MASK_HEAD.NORM``; with ``MODEL.KEYPOINT_ON`` it also selects
    ``NormKRCNNConvDeconvUpsampleHead`` (Detectron2's keypoint head plus the head norm).
    ``RETHINK.NORM ""`` leaves every key as written.

    Args:
        cfg (CfgNode): an unfrozen config with the ``RETHINK`` node; modified in place.

    Returns:
        CfgNode: the same ``cfg``.

    Raises:
        ConfigError: if ``RETHINK.NORM`` or ``RETHINK.GN_GROUPS`` is invalid.
    """
    norm = _validate_rethink_norm(cfg)
    if norm == "":
        return cfg
    backbone_norm, head_norm = resolve_norm_names(norm, cfg.MODEL.DEVICE)
    for key in BACKBONE_NORM_KEYS:
        _set_key(cfg, key, backbone_norm)
    for key in HEAD_NORM_KEYS:
        _set_key(cfg, key, head_norm)
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


def check_norm_consistency(cfg, keys=BACKBONE_NORM_KEYS + HEAD_NORM_KEYS):
    """
    Refuse a config whose ``MODEL.*.NORM`` keys were not written from ``RETHINK.NORM``.

    A value is accepted if :func:`apply_norm_config` could have written it for some device.
    ``RETHINK.NORM ""`` accepts anything.

    Args:
        cfg (CfgNode): a config with the ``RETHINK`` node.
        keys (tuple[str]): the keys to check.

    Raises:
        ConfigError: naming the first disagreeing key and telling to call
            ``rethink_d2.resolve_config(cfg)``.
    """
    norm = _validate_rethink_norm(cfg)
    if norm == "":
        return
    devices = ("cpu", "cuda")
    allowed_backbone = {resolve_norm_names(norm, d)[0] for d in devices}
    allowed_head = {resolve_norm_names(norm, d)[1] for d in devices}
    for key in keys:
        allowed = allowed_backbone if key in BACKBONE_NORM_KEYS else allowed_head
        value = _get_key(cfg, key)
        if value not in allowed:
            raise ConfigError(
                f"{key}={value!r} disagrees with RETHINK.NORM={norm!r} (expected one of "
                f"{sorted(allowed)}): call rethink_d2.resolve_config(cfg) before building the "
                "model, or set RETHINK.NORM '' to write every MODEL.*.NORM key yourself"
            )


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


def check_group_norm_channels(cfg, parts=("backbone", "heads")):
    """
    Check, before building, that every GroupNorm layer can be built.

    Detectron2 builds "GN" layers with 32 groups, which rethink-d2 then regroups to
    ``RETHINK.GN_GROUPS``: the width of every GN layer must be divisible by both.

    Args:
        cfg (CfgNode): a resolved config.
        parts (tuple[str]): "backbone" (ResNet + FPN) and/or "heads" (RoI heads).

    Raises:
        ConfigError: naming the key that sets the offending width.
    """
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
    Replace the GroupNorm of every Detectron2 ``Conv2d`` in ``module`` by one with
    ``num_groups`` groups (fresh affine parameters: gamma=1, beta=0), on the device and with the
    dtype of the layer it replaces.

    Args:
        module (nn.Module): a freshly built module (its GN parameters are still at init).
        num_groups (int): the new number of groups.

    Returns:
        int: the number of layers replaced (0 when they already have ``num_groups`` groups).

    Raises:
        ConfigError: if a layer's channels are not divisible by ``num_groups``.
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
        # On the old layer's device: Detectron2's build_model has already moved the model.
        conv.norm = nn.GroupNorm(
            num_groups, norm.num_channels, eps=norm.eps, affine=norm.affine, **_factory_kwargs(norm)
        )
        replaced += 1
    return replaced


def _factory_kwargs(module):
    """``device`` and ``dtype`` of ``module``'s first parameter ({} when it has none)."""
    tensor = next(module.parameters(), None)
    return {} if tensor is None else {"device": tensor.device, "dtype": tensor.dtype}
