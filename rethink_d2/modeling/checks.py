"""Checks shared by the backbone builder and ``build_model``: run before anything is built."""

from ..utils.errors import ConfigError
from .norms import (
    BACKBONE_NORM_KEYS,
    HEAD_NORM_KEYS,
    check_group_norm_channels,
    check_norm_consistency,
)

__all__ = ["check_model_config"]

_RESNET_DEPTHS = (18, 34, 50, 101, 152)


def _check_resnet(cfg):
    r = cfg.MODEL.RESNETS
    if r.DEPTH not in _RESNET_DEPTHS:
        raise ConfigError(f"MODEL.RESNETS.DEPTH={r.DEPTH!r} is not one of {list(_RESNET_DEPTHS)}")
    if r.DEPTH in (18, 34):
        for key, needed in (("RES2_OUT_CHANNELS", 64), ("NUM_GROUPS", 1)):
            value = r[key]
            if value != needed:
                raise ConfigError(
                    f"MODEL.RESNETS.DEPTH={r.DEPTH} (basic blocks) needs "
                    f"MODEL.RESNETS.{key} {needed}, not {value}"
                )


def check_model_config(cfg, parts=("backbone", "heads")):
    """
    Validate a config before building the parts of a detector that rethink-d2 controls.

    Args:
        cfg (CfgNode): a config resolved by ``rethink_d2.resolve_config``.
        parts (tuple[str]): "backbone" (ResNet + FPN) and/or "heads" (RoI heads): the parts
            whose widths are checked. Norm keys are checked for the whole detector.

    Raises:
        ConfigError: if the config has no ``RETHINK`` node, its ``MODEL.*.NORM`` keys disagree
            with ``RETHINK.NORM``, a GroupNorm width is not divisible by the number of groups,
            or the ResNet depth/width keys do not fit together.
    """
    if "RETHINK" not in cfg:
        raise ConfigError(
            "the config has no RETHINK node: call rethink_d2.add_rethink_config(cfg) before "
            "merging the config file, then rethink_d2.resolve_config(cfg)"
        )
    # all keys, whatever the part: a backbone must not be built for a detector whose heads
    # would end up with another norm
    check_norm_consistency(cfg, BACKBONE_NORM_KEYS + HEAD_NORM_KEYS)
    if "backbone" in parts:
        _check_resnet(cfg)
    check_group_norm_channels(cfg, parts)
