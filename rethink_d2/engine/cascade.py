"""Switch a Mask R-CNN checkpoint to Cascade R-CNN heads (the paper's enhanced scratch runs).

The paper trains its enhanced scratch models as Mask R-CNN and switches to Cascade R-CNN for the
final 270k iterations. The switch is this checkpoint conversion between two runs:

1. phase 1 trains Mask R-CNN (``configs/enhanced/*_cascade_phase1.yaml``);
2. :func:`convert_checkpoint` (``tools/convert_to_cascade.py``) maps its ``model_final.pth``
   onto Detectron2's ``CascadeROIHeads``;
3. phase 2 (``configs/enhanced/*_cascade.yaml``) starts from the converted file
   (``MODEL.WEIGHTS``) and runs the last 270k iterations with the 9x schedule's LR drops.

Every stage starts from the trained Mask R-CNN box head and classifier. Cascade heads regress
class-agnostic boxes with their own ``BBOX_REG_WEIGHTS``: the agnostic regressor is the mean of
the class-specific ones, rescaled so that every stage initially predicts the same boxes as the
Mask R-CNN head. Backbone, RPN and mask head are copied unchanged.
"""

import collections
import os

import torch

from ..utils.errors import ConfigError

_BOX_HEAD = "roi_heads.box_head."
_BOX_PREDICTOR = "roi_heads.box_predictor."
_CLS_SCORE = _BOX_PREDICTOR + "cls_score.weight"

# Detectron2's defaults (MODEL.ROI_BOX_HEAD / MODEL.ROI_BOX_CASCADE_HEAD .BBOX_REG_WEIGHTS)
MASK_RCNN_REG_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
CASCADE_REG_WEIGHTS = ((10.0, 10.0, 5.0, 5.0), (20.0, 20.0, 10.0, 10.0), (30.0, 30.0, 15.0, 15.0))


def mask_rcnn_to_cascade(
    model_state, source_reg_weights=MASK_RCNN_REG_WEIGHTS, stage_reg_weights=CASCADE_REG_WEIGHTS
):
    """
    Map a Mask R-CNN (``StandardROIHeads``) state dict onto ``CascadeROIHeads``.

    Args:
        model_state (dict[str, Tensor]): the ``"model"`` entry of a Detectron2 checkpoint.
        source_reg_weights (tuple[float]): ``MODEL.ROI_BOX_HEAD.BBOX_REG_WEIGHTS`` of the
            Mask R-CNN run.
        stage_reg_weights (tuple[tuple[float]]): ``MODEL.ROI_BOX_CASCADE_HEAD.BBOX_REG_WEIGHTS``
            of the cascade run; its length is the number of stages.

    Returns:
        OrderedDict[str, Tensor]: the cascade state dict (``roi_heads.box_head.<stage>.*`` and
        ``roi_heads.box_predictor.<stage>.*``; every other entry unchanged).

    Raises:
        ConfigError: if ``model_state`` is not a Mask R-CNN with a single box head, or the
            regression weights are malformed.
    """
    if _CLS_SCORE not in model_state:
        stage_key = _BOX_PREDICTOR + "0.cls_score.weight"
        hint = " (it already has cascade heads)" if stage_key in model_state else ""
        raise ConfigError(
            f"not a Mask R-CNN checkpoint: no {_CLS_SCORE!r}{hint}; pass the model_final.pth "
            f"of the phase-1 run (configs/enhanced/*_cascade_phase1.yaml)"
        )
    if len(source_reg_weights) != 4 or not stage_reg_weights:
        raise ConfigError(
            f"BBOX_REG_WEIGHTS must be 4 numbers (source) and one 4-tuple per cascade stage; "
            f"got {source_reg_weights} and {stage_reg_weights}"
        )
    agnostic_w, agnostic_b = _class_agnostic_regressor(model_state)
    source = torch.tensor(source_reg_weights, dtype=agnostic_w.dtype)
    out = collections.OrderedDict()
    for key, value in model_state.items():
        if not key.startswith((_BOX_HEAD, _BOX_PREDICTOR)):
            out[key] = value
    for stage, weights in enumerate(stage_reg_weights):
        if len(weights) != 4:
            raise ConfigError(f"cascade stage {stage} BBOX_REG_WEIGHTS {weights} is not 4 numbers")
        scale = torch.tensor(weights, dtype=agnostic_w.dtype) / source
        for key, value in model_state.items():
            if key.startswith(_BOX_HEAD):
                out[f"{_BOX_HEAD}{stage}.{key[len(_BOX_HEAD):]}"] = value.clone()
            elif key.startswith(_BOX_PREDICTOR + "cls_score."):
                out[f"{_BOX_PREDICTOR}{stage}.{key[len(_BOX_PREDICTOR):]}"] = value.clone()
        # A stage decodes delta / weight: scaling the outputs by weight / source keeps the boxes.
        out[f"{_BOX_PREDICTOR}{stage}.bbox_pred.weight"] = agnostic_w * scale[:, None]
        out[f"{_BOX_PREDICTOR}{stage}.bbox_pred.bias"] = agnostic_b * scale
    return out


def convert_checkpoint(
    src_path,
    dst_path,
    source_reg_weights=MASK_RCNN_REG_WEIGHTS,
    stage_reg_weights=CASCADE_REG_WEIGHTS,
):
    """
    Read a Mask R-CNN checkpoint, write its cascade conversion as a weights-only checkpoint.

    The output holds only ``"model"``: the phase-2 run loads it through ``MODEL.WEIGHTS`` and
    starts a fresh optimizer and schedule (its config carries the remaining iterations).

    Args:
        src_path (str): a Detectron2 ``.pth`` checkpoint of a Mask R-CNN run.
        dst_path (str): where to write the converted checkpoint.
        source_reg_weights, stage_reg_weights: see :func:`mask_rcnn_to_cascade`.

    Returns:
        dict: ``{"iteration": iteration of the source or None, "stages": number of stages,
        "tensors": number of tensors written}``.

    Raises:
        ConfigError: if ``src_path`` is missing or not a Mask R-CNN checkpoint.
    """
    if not os.path.isfile(src_path):
        raise ConfigError(f"checkpoint {src_path!r} does not exist (check the path)")
    checkpoint = torch.load(src_path, map_location="cpu", weights_only=False)
    if not isinstance(checkpoint, dict) or "model" not in checkpoint:
        raise ConfigError(
            f"{src_path!r} is not a Detectron2 checkpoint (no 'model' entry); pass a "
            f"model_*.pth written by tools/train_net.py"
        )
    state = mask_rcnn_to_cascade(checkpoint["model"], source_reg_weights, stage_reg_weights)
    os.makedirs(os.path.dirname(os.path.abspath(dst_path)), exist_ok=True)
    torch.save({"model": state, "__author__": "rethink_d2.engine.cascade"}, dst_path)
    return {
        "iteration": checkpoint.get("iteration"),
        "stages": len(stage_reg_weights),
        "tensors": len(state),
    }


def _class_agnostic_regressor(model_state):
    """Mean over classes of the (4K, D) class-specific box regressor (a 4-row one is kept)."""
    weight = model_state[_BOX_PREDICTOR + "bbox_pred.weight"]
    bias = model_state[_BOX_PREDICTOR + "bbox_pred.bias"]
    if weight.shape[0] % 4:
        raise ConfigError(
            f"box regressor of shape {tuple(weight.shape)} is not 4 outputs per class; "
            f"is this a Detectron2 Mask R-CNN checkpoint?"
        )
    num_classes = weight.shape[0] // 4
    weight = weight.reshape(num_classes, 4, -1).mean(dim=0)
    bias = bias.reshape(num_classes, 4).mean(dim=0)
    return weight, bias
