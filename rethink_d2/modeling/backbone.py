"""The registered scratch backbone: Detectron2's ResNet/ResNeXt + FPN, normalized throughout."""

import logging

from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone.fpn import build_resnet_fpn_backbone

from .checks import check_model_config
from .initialization import apply_weight_standardization, zero_init_residual
from .norms import regroup_group_norms

logger = logging.getLogger(__name__)

__all__ = ["build_rethink_resnet_fpn_backbone"]


@BACKBONE_REGISTRY.register()
def build_rethink_resnet_fpn_backbone(cfg, input_shape: ShapeSpec):
    """
    ResNet-18/34/50/101/152 or ResNeXt + FPN (P2-P6) for training from random initialization.

    Composes Detectron2's ``build_resnet_fpn_backbone`` (``build_resnet_backbone`` + ``FPN`` +
    ``LastLevelMaxPool``), so the architecture is Detectron2's, parameter for parameter. Depth
    comes from ``MODEL.RESNETS.DEPTH``, ResNeXt from ``MODEL.RESNETS.NUM_GROUPS`` /
    ``WIDTH_PER_GROUP`` (32x4d, 32x8d), the norm of ResNet and FPN from the ``MODEL.*.NORM`` keys
    that ``rethink_d2.resolve_config`` wrote from ``RETHINK.NORM``. Then:

    - GroupNorm layers get ``RETHINK.GN_GROUPS`` groups (Detectron2 builds 32);
    - ``RETHINK.WEIGHT_STANDARDIZATION``: standardized weights in every ResNet conv;
    - ``RETHINK.ZERO_INIT_RESIDUAL``: gamma=0 in the last norm of every residual block.

    Initialization is Detectron2's (He init of every ResNet conv, Xavier of the FPN convs,
    gamma=1/beta=0); see ``rethink_d2.modeling.initialization``.

    Args:
        cfg (CfgNode): a config resolved by ``rethink_d2.resolve_config``.
        input_shape (ShapeSpec): the input image shape (channels).

    Returns:
        detectron2.modeling.FPN: the backbone; ``backbone.bottom_up`` is the ResNet.

    Raises:
        ConfigError: if the config was not resolved (a ``MODEL.*.NORM`` key disagrees with
            ``RETHINK.NORM``) or has widths that do not fit the norm.
    """
    check_model_config(cfg, parts=("backbone",))
    backbone = build_resnet_fpn_backbone(cfg, input_shape)
    regroup_group_norms(backbone, cfg.RETHINK.GN_GROUPS)
    if cfg.RETHINK.WEIGHT_STANDARDIZATION:
        count = apply_weight_standardization(backbone.bottom_up)
        logger.info(f"Weight Standardization on {count} ResNet convs")
    if cfg.RETHINK.ZERO_INIT_RESIDUAL:
        zero_init_residual(backbone.bottom_up)
    return backbone
