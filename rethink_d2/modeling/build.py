"""``build_model``: Detectron2's ``build_model`` plus rethink-d2's checks and GN groups."""

from detectron2.modeling import build_model as d2_build_model

from .checks import check_model_config
from .norms import regroup_group_norms

__all__ = ["build_model"]


def build_model(cfg):
    """
    Build the detector of ``cfg.MODEL.META_ARCHITECTURE`` with Detectron2's registries.

    On top of ``detectron2.modeling.build_model``: the config is checked first (norms that agree
    with ``RETHINK.NORM``, GN widths; the scratch guard is for training only and runs in the
    Trainer), and every GroupNorm layer of the model (box, mask and keypoint heads included; the
    backbone builder already did its own) gets ``RETHINK.GN_GROUPS`` groups.

    Initialization is left to Detectron2, whose initializers are those of Detectron, the paper's
    code. He (MSRA) init, std ``sqrt(2 / fan_out)``: every ResNet conv, the box-head convs, the
    mask-head convs and deconv, the keypoint-head convs and deconv. Xavier: FPN lateral/output
    convs and box-head fc layers. Normal(0.01 / 0.001): RPN head and predictors. Norm layers:
    gamma=1, beta=0, except with ``RETHINK.ZERO_INIT_RESIDUAL``.

    Args:
        cfg (CfgNode): a config resolved by ``rethink_d2.resolve_config``.

    Returns:
        nn.Module: the model, on ``cfg.MODEL.DEVICE``.

    Raises:
        ConfigError: see ``rethink_d2.modeling.checks.check_model_config``.
    """
    check_model_config(cfg)
    model = d2_build_model(cfg)
    regroup_group_norms(model, cfg.RETHINK.GN_GROUPS)
    return model
