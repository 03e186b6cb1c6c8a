"""Switch a Mask R-CNN checkpoint to Cascade R-CNN heads, between the two phases of the paper's
enhanced scratch runs (``tools/convert_to_cascade.py``, see docs/configs.md)."""

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
    Map a Mask R-CNN (``StandardROIHeads``) state dict onto ``CascadeROIHeads``: every stage gets
    the box head and classifier, and the class-agnostic mean of the box regressor rescaled to
    its ``BBOX_REG_WEIGHTS``, so that it initially predicts the Mask R-CNN boxes.

    Args:
        model_state (dict[str, Tensor]): the ``"model"`` entry of a Detectron2 checkpoint.
        source_reg_weights (tuple[float]): ``MODEL.ROI_BOX_HEAD.BBOX_REG_WEIGHTS`` of phase 1.
        stage_reg_weights (tuple[tuple[float]]): ``MODEL.ROI_BOX_CASCADE_HEAD.BBOX_REG_WEIGHTS``
            of phase 2, one per stage.
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
    weight = model_state[_BOX_PREDICTOR + "bbox_pred.weight"]
    if weight.shape[0] % 4:
        raise ConfigError(
            f"box regressor of shape {tuple(weight.shape)} is not 4 outputs per class; "
            f"is this a Detectron2 Mask R-CNN checkpoint?"
        )
    # class-agnostic regressor: the mean over classes (a 4-row one is kept)
    num_classes = weight.shape[0] // 4
    agnostic_w = weight.reshape(num_classes, 4, -1).mean(dim=0)
    agnostic_b = model_state[_BOX_PREDICTOR + "bbox_pred.bias"].reshape(num_classes, 4).mean(dim=0)
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
    Write the cascade conversion of the Mask R-CNN checkpoint ``src_path`` to ``dst_path``,
    weights only (phase 2 starts a fresh optimizer and schedule).

    Returns:
        dict: ``{"iteration": of the source or None, "stages": int, "tensors": int}``.
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
