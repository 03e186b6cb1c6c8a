"""Scratch backbones, whole-detector normalization, init options and the scratch guard.

Importing this package registers ``build_rethink_resnet_fpn_backbone`` (``BACKBONE_REGISTRY``) and
``NormKRCNNConvDeconvUpsampleHead`` (``ROI_KEYPOINT_HEAD_REGISTRY``).
"""

from .backbone import (
    WeightStandardization,
    apply_weight_standardization,
    build_model,
    build_rethink_resnet_fpn_backbone,
    zero_init_residual,
)
from .keypoint_head import NormKRCNNConvDeconvUpsampleHead
from .norms import (
    NORM_CHOICES,
    apply_norm_config,
    check_model_config,
    regroup_group_norms,
    resolve_norm_names,
)
from .pretrained import (
    PRETRAINED_FORMATS,
    apply_pretrained_format,
    detect_pretrained_format,
    maybe_convert_torchvision_checkpoint,
)
from .scratch import check_scratch_config

__all__ = [
    "NORM_CHOICES",
    "PRETRAINED_FORMATS",
    "NormKRCNNConvDeconvUpsampleHead",
    "WeightStandardization",
    "apply_norm_config",
    "apply_pretrained_format",
    "apply_weight_standardization",
    "build_model",
    "build_rethink_resnet_fpn_backbone",
    "check_model_config",
    "check_scratch_config",
    "detect_pretrained_format",
    "maybe_convert_torchvision_checkpoint",
    "regroup_group_norms",
    "resolve_norm_names",
    "zero_init_residual",
]
