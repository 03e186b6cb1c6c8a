"""Detectron2's keypoint head with a norm after each conv (Detectron2's has no norm option)."""

from detectron2.config import configurable
from detectron2.layers import Conv2d, get_norm
from detectron2.modeling.roi_heads import ROI_KEYPOINT_HEAD_REGISTRY
from detectron2.modeling.roi_heads.keypoint_head import KRCNNConvDeconvUpsampleHead
from torch import nn


@ROI_KEYPOINT_HEAD_REGISTRY.register()
class NormKRCNNConvDeconvUpsampleHead(KRCNNConvDeconvUpsampleHead):
    """
    ``KRCNNConvDeconvUpsampleHead`` with a norm after each 3x3 conv (then bias-free): the
    RoI-head norm ``MODEL.ROI_BOX_HEAD.NORM``, as Detectron2 has no ``ROI_KEYPOINT_HEAD.NORM``.
    ``conv_norm=""`` is Detectron2's head unchanged. Convs keep Detectron2's He init.
    """

    @configurable
    def __init__(self, input_shape, *, num_keypoints, conv_dims, conv_norm="", **kwargs):
        super().__init__(input_shape, num_keypoints=num_keypoints, conv_dims=conv_dims, **kwargs)
        if not conv_norm:
            return
        in_channels = input_shape.channels
        for idx, channels in enumerate(conv_dims, 1):
            conv = Conv2d(
                in_channels, channels, 3, padding=1, bias=False, norm=get_norm(conv_norm, channels)
            )
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            # same name: nn.Sequential keeps the position, forward() stays Detectron2's
            setattr(self, f"conv_fcn{idx}", conv)
            in_channels = channels

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        ret["conv_norm"] = cfg.MODEL.ROI_BOX_HEAD.NORM
        return ret
