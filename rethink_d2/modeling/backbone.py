"""The registered scratch backbone and ``build_model``: Detectron2's builders, checked first,
with ``RETHINK.GN_GROUPS`` groups in every GroupNorm; the backbone's init options (zero-init
residuals, Weight Standardization).

Initialization is Detectron2's, i.e. Detectron's (the paper's code): He (fan-out) for every ResNet
conv and the box/mask/keypoint head convs, Xavier for FPN convs and box-head fc layers,
Normal(0.01 / 0.001) for RPN and predictors, gamma=1 / beta=0 for every norm (except with
``RETHINK.ZERO_INIT_RESIDUAL``).
"""

import logging

import torch
from detectron2.layers import Conv2d, ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling import build_model as d2_build_model
from detectron2.modeling.backbone.fpn import build_resnet_fpn_backbone
from detectron2.modeling.backbone.resnet import BasicBlock
from torch import nn
from torch.nn.utils import parametrize

from ..utils.errors import ConfigError
from .norms import check_model_config, regroup_group_norms

logger = logging.getLogger(__name__)


@BACKBONE_REGISTRY.register()
def build_rethink_resnet_fpn_backbone(cfg, input_shape: ShapeSpec):
    """
    ResNet-18/34/50/101/152 or ResNeXt + FPN (P2-P6) for training from random initialization.

    Detectron2's ``build_resnet_fpn_backbone``, parameter for parameter, with the norm of the
    ``MODEL.*.NORM`` keys that ``resolve_config`` wrote from ``RETHINK.NORM``; then
    ``RETHINK.GN_GROUPS``, ``RETHINK.WEIGHT_STANDARDIZATION`` (every ResNet conv) and
    ``RETHINK.ZERO_INIT_RESIDUAL`` are applied. ``backbone.bottom_up`` is the ResNet.
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


def build_model(cfg):
    """
    ``detectron2.modeling.build_model`` after :func:`check_model_config`, with
    ``RETHINK.GN_GROUPS`` groups in every GroupNorm of the model (heads included). The scratch
    guard is for training only: it runs in the Trainer.

    Returns:
        nn.Module: the model, on ``cfg.MODEL.DEVICE``.
    """
    check_model_config(cfg)
    model = d2_build_model(cfg)
    regroup_group_norms(model, cfg.RETHINK.GN_GROUPS)
    return model


class WeightStandardization(nn.Module):
    """
    Parametrization ``w -> (w - mean(w)) / (std(w) + eps)`` per output channel (Qiao et al.,
    "Micro-Batch Training with Batch-Channel Normalization and Weight Standardization"; the
    formula of MMDetection's ``ConvWS``).
    """

    def __init__(self, eps=1e-5):
        super().__init__()
        self.eps = eps

    def forward(self, weight):
        flat = weight.flatten(1)
        shape = (-1,) + (1,) * (weight.dim() - 1)
        mean = flat.mean(dim=1).view(shape)
        std = flat.std(dim=1).view(shape)
        return (weight - mean) / (std + self.eps)


def apply_weight_standardization(module):
    """
    Standardize the weights of every Detectron2 ``Conv2d`` in ``module`` (stored as
    ``<conv>.parametrizations.weight.original``); return the number of convs parametrized.
    """
    count = 0
    for conv in module.modules():
        if isinstance(conv, Conv2d) and not parametrize.is_parametrized(conv, "weight"):
            parametrize.register_parametrization(conv, "weight", WeightStandardization())
            count += 1
    return count


@torch.no_grad()
def zero_init_residual(resnet):
    """
    Set gamma=0 in the last norm of every residual branch of ``resnet`` (each block starts as
    the identity, Goyal et al. Sec. 5.1; it hurts GN from scratch, per Detectron2). Returns the
    number of norms zeroed.
    """
    count = 0
    for stage in resnet.stages:
        for block in stage:
            last_conv = block.conv2 if isinstance(block, BasicBlock) else block.conv3
            norm = getattr(last_conv, "norm", None)
            # FrozenBN keeps gamma in a buffer: zeroing it would disable the block for good
            if not isinstance(getattr(norm, "weight", None), nn.Parameter):
                raise ConfigError(
                    "RETHINK.ZERO_INIT_RESIDUAL needs an affine norm after the last conv of each "
                    "residual block (not FrozenBN); set RETHINK.NORM "
                    "(or MODEL.RESNETS.NORM) to GN, SyncBN or BN"
                )
            norm.weight.zero_()
            count += 1
    return count
