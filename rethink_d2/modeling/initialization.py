"""Initialization options of the scratch backbone: zero-init residuals, Weight Standardization.

What the rest of the detector starts from is Detectron2's own initialization, which follows
Detectron (the paper's code) layer by layer:

- He (MSRA) init, ``kaiming_normal_(mode="fan_out", nonlinearity="relu")``, i.e. std
  ``sqrt(2 / (out_channels * k * k))``, bias 0: every ResNet conv (stem, blocks, shortcuts), the
  box-head convs, the mask-head convs and deconv, the keypoint-head convs and deconv.
- Xavier (``c2_xavier_fill``: ``kaiming_uniform_(a=1)``): the FPN lateral and output convs and
  the box-head fc layers.
- Normal(std=0.01 / 0.001): the RPN head and the box / mask predictors.
- Every norm layer: gamma=1, beta=0 (PyTorch's default), unless ``RETHINK.ZERO_INIT_RESIDUAL``.
"""

import torch
from detectron2.layers import Conv2d
from detectron2.modeling.backbone.resnet import BasicBlock
from torch import nn
from torch.nn.utils import parametrize

from ..utils.errors import ConfigError

__all__ = ["WeightStandardization", "apply_weight_standardization", "zero_init_residual"]


class WeightStandardization(nn.Module):
    """
    Parametrization ``w -> (w - mean(w)) / (std(w) + eps)`` per output channel
    (Qiao et al., "Micro-Batch Training with Batch-Channel Normalization and Weight
    Standardization"; the same formula as MMDetection's ``ConvWS``).
    """

    def __init__(self, eps=1e-5):
        """
        Args:
            eps (float): added to the standard deviation.
        """
        super().__init__()
        self.eps = eps

    def forward(self, weight):
        """
        Args:
            weight (Tensor): a conv weight of shape (out_channels, ...).

        Returns:
            Tensor: the standardized weight, same shape.
        """
        flat = weight.flatten(1)
        shape = (-1,) + (1,) * (weight.dim() - 1)
        mean = flat.mean(dim=1).view(shape)
        std = flat.std(dim=1).view(shape)
        return (weight - mean) / (std + self.eps)


def apply_weight_standardization(module):
    """
    Standardize the weights of every Detectron2 ``Conv2d`` in ``module`` with
    ``torch.nn.utils.parametrize``. The trainable tensor is then stored as
    ``<conv>.parametrizations.weight.original`` in state dicts.

    Args:
        module (nn.Module): e.g. the ResNet bottom-up of a backbone.

    Returns:
        int: the number of convs parametrized.
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
    Set gamma=0 in the last norm of every residual branch, so that each block starts as the
    identity (Goyal et al., "Accurate, Large Minibatch SGD", Sec. 5.1). Detectron2 leaves this
    out because it hurt GN models trained from scratch: ``RETHINK.ZERO_INIT_RESIDUAL`` is off by
    default.

    Args:
        resnet (detectron2.modeling.ResNet): the bottom-up network.

    Returns:
        int: the number of norms set to zero.

    Raises:
        ConfigError: if a block has no norm layer to zero.
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
