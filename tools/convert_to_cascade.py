#!/usr/bin/env python
"""
Switch a Mask R-CNN checkpoint to Cascade R-CNN heads (phase 1 -> phase 2 of the paper's
enhanced scratch runs; see rethink_d2/engine/cascade.py).

    python tools/convert_to_cascade.py \\
        output/enhanced/scratch_R101_GN_9x_ms_cascade_phase1/model_final.pth \\
        --config configs/enhanced/scratch_R101_GN_9x_ms_cascade.yaml
    python tools/train_net.py --config configs/enhanced/scratch_R101_GN_9x_ms_cascade.yaml

The output (default: model_cascade_init.pth next to the input) holds only the converted weights;
--config takes the box-regression weights of both phases from the phase-2 config (default:
Detectron2's).
"""

import argparse
import os
import sys

from detectron2.config import get_cfg

from rethink_d2 import add_rethink_config
from rethink_d2.engine.cascade import (
    CASCADE_REG_WEIGHTS,
    MASK_RCNN_REG_WEIGHTS,
    convert_checkpoint,
)
from rethink_d2.utils.errors import ConfigError, RethinkError, report_user_error

DEFAULT_NAME = "model_cascade_init.pth"


def regression_weights(config_file):
    """
    (Mask R-CNN BBOX_REG_WEIGHTS, per-stage cascade BBOX_REG_WEIGHTS) of a phase-2 (cascade)
    config file, or Detectron2's defaults for None.
    """
    if config_file is None:
        return MASK_RCNN_REG_WEIGHTS, CASCADE_REG_WEIGHTS
    if not os.path.isfile(config_file):
        raise ConfigError(f"config file {config_file!r} does not exist (check the path)")
    cfg = add_rethink_config(get_cfg())
    try:
        cfg.merge_from_file(config_file)
    except (KeyError, ValueError, AssertionError) as e:
        raise ConfigError(f"{config_file}: {' '.join(str(e).split())}") from None
    if cfg.MODEL.ROI_HEADS.NAME != "CascadeROIHeads":
        raise ConfigError(
            f"{config_file} has MODEL.ROI_HEADS.NAME {cfg.MODEL.ROI_HEADS.NAME!r}, not "
            f"'CascadeROIHeads': pass the "
            f"phase-2 (cascade) config, e.g. configs/enhanced/scratch_R101_GN_9x_ms_cascade.yaml"
        )
    stages = tuple(tuple(w) for w in cfg.MODEL.ROI_BOX_CASCADE_HEAD.BBOX_REG_WEIGHTS)
    return tuple(cfg.MODEL.ROI_BOX_HEAD.BBOX_REG_WEIGHTS), stages


def main(argv=None):
    """Run the command line ``argv`` (None: ``sys.argv[1:]``); return the exit code."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("checkpoint", help="Mask R-CNN checkpoint (phase 1's model_final.pth)")
    parser.add_argument("--out", help=f"output file (default: {DEFAULT_NAME} next to the input)")
    parser.add_argument("--config", help="phase-2 cascade config (regression weights)")
    args = parser.parse_args(argv)
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(args.checkpoint)), DEFAULT_NAME)
    try:
        source, stages = regression_weights(args.config)
        info = convert_checkpoint(args.checkpoint, out, source, stages)
    except RethinkError as e:
        return report_user_error(e)
    print(
        f"wrote {out}: {info['stages']} cascade stages from the Mask R-CNN heads of "
        f"{args.checkpoint} (iteration {info['iteration']}), {info['tensors']} tensors"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
