#!/usr/bin/env python
"""
Train (or evaluate) a detector with rethink-d2.

    python tools/train_net.py --config configs/scratch_R101_GN_6x.yaml --num-gpus 8
    python tools/train_net.py --config configs/quickstart/scratch_R18_GN_shapes.yaml
    python tools/train_net.py --config FILE --print-config SOLVER.IMS_PER_BATCH 64
    python tools/train_net.py --config FILE --eval-only MODEL.WEIGHTS output/model_final.pth

Trailing KEY VALUE pairs override the config. Multi-machine: add --num-machines N
--machine-rank R --dist-url tcp://HOST:PORT (see docs/cluster.md for Slurm and Kubernetes).
"""

import warnings

# Detectron2 imports torch.jit.script and pkg_resources, both deprecated upstream; the warnings
# they print on every start (and in every worker) say nothing about the user's run.
warnings.filterwarnings(
    "ignore", message=".*torch.jit.script.*is deprecated", category=FutureWarning
)
warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)

from detectron2.engine import default_setup  # noqa: E402
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from rethink_d2.engine import Trainer, build_config, rethink_argument_parser
from rethink_d2.engine.checkpoint import Checkpointer
from rethink_d2.engine.defaults import launch_cli
from rethink_d2.engine.results import (
    log_results_summary,
    require_weights_for_eval,
    results_by_dataset,
)


def setup(args):
    """Build the resolved, frozen config and set up logging, seeds and OUTPUT_DIR."""
    cfg = build_config(
        args.config_file,
        args.opts,
        world_size=comm.get_world_size(),
        for_training=not args.eval_only,
        datasets=args.datasets,
    )
    default_setup(cfg, args)
    setup_logger(
        cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="rethink_d2", abbrev_name="rd2"
    )
    return cfg


def main(args):
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        checkpointer = Checkpointer(model, save_dir=cfg.OUTPUT_DIR)
        require_weights_for_eval(cfg, checkpointer)
        checkpointer.resume_or_load(cfg.MODEL.WEIGHTS, resume=not cfg.MODEL.WEIGHTS)
        results = results_by_dataset(Trainer.test(cfg, model), cfg.DATASETS.TEST)
        if cfg.TEST.AUG.ENABLED:
            results.update(Trainer.test_with_tta(cfg, model))
    else:
        trainer = Trainer(cfg)
        trainer.resume_or_load(resume=args.resume)
        trainer.train()
        results = results_by_dataset(trainer.last_eval_results, cfg.DATASETS.TEST)
    if comm.is_main_process():
        log_results_summary(results)
    return results


if __name__ == "__main__":
    args = rethink_argument_parser(epilog=__doc__).parse_args()
    launch_cli(main, args)
