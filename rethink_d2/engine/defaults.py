"""Command-line set-up of ``tools/train_net.py``: parser, config, launch, one-line errors."""

import argparse
import contextlib
import logging
import os
import sys
from datetime import timedelta

import torch.distributed as dist
import torch.multiprocessing as mp
import yaml
from detectron2.config import get_cfg
from detectron2.engine import default_argument_parser, launch

from ..config import add_rethink_config
from ..model_zoo import get_config_dir
from ..modeling.scratch import check_scratch_config
from ..resolve import resolve_config
from ..solver.schedule import compute_schedule, schedule_owned_values
from ..utils.errors import ConfigError, RethinkError, report_user_error
from .distributed import DIST_TIMEOUT_ENV_VAR, check_dist_port_free, explain_worker_failure
from .distributed import check_launch, check_output_dir, choose_device
from .preemption import PREEMPTED_EXIT_CODE, forward_signals_to_children
from .run_dir import check_same_run, default_output_dir, has_checkpoint

logger = logging.getLogger(__name__)

# Exit code of a multi-process run whose processes could not meet (timeout, lost peer).
EXIT_DIST_FAILURE = 1


def rethink_argument_parser(epilog=None):
    """Detectron2's ``default_argument_parser`` plus ``--config`` (alias of ``--config-file``),
    ``--dataset``, ``--print-config`` and ``--dist-timeout``."""
    parser = default_argument_parser(epilog=epilog)
    parser.add_argument(
        "--config",
        dest="config_file",
        metavar="FILE",
        default=argparse.SUPPRESS,
        help="path to a config file, e.g. configs/scratch_R101_GN_6x.yaml (same as --config-file)",
    )
    add_dataset_argument(parser)
    parser.add_argument(
        "--print-config",
        action="store_true",
        help="print the fully resolved config (schedule, batch scaling, norms, overrides) as "
        "YAML and exit without building the model or reading data; MODEL.DEVICE stays as "
        "configured (no CPU fallback, no GPU check), so a GPU run can be checked on a laptop",
    )
    parser.add_argument(
        "--dist-timeout",
        type=float,
        metavar="SECONDS",
        default=os.environ.get(DIST_TIMEOUT_ENV_VAR, "1800"),
        help="how long a training process waits for the others, at start-up and in every "
        f"collective operation, before failing (default: ${DIST_TIMEOUT_ENV_VAR} or 1800)",
    )
    return parser


def add_dataset_argument(parser):
    """Add the repeatable ``--dataset NAME JSON IMAGE_ROOT`` option (``args.datasets``)."""
    parser.add_argument(
        "--dataset",
        dest="datasets",
        nargs=3,
        action="append",
        default=[],
        metavar=("NAME", "JSON", "IMAGE_ROOT"),
        help="register your own COCO-format dataset (instances json + image folder) as NAME, "
        "to use in DATASETS.TRAIN / DATASETS.TEST (also NAME@0.5, NAME@200); repeatable; kept "
        "in the run's config.yaml (RETHINK.DATASETS.COCO_INSTANCES)",
    )


def build_config(
    config_file, opts=(), world_size=None, for_training=True, datasets=(), on_this_machine=True
):
    """
    Build the frozen, resolved config of a run (ConfigError: one line naming what to change).

    Args:
        for_training (bool): apply the scratch guard (not for evaluation or prediction).
        datasets (list[list[str]]): ``[NAME, JSON, IMAGE_ROOT]`` of ``--dataset``.
        on_this_machine (bool): fall back to the CPU or refuse a GPU request this machine cannot
            serve; False (``--print-config``) keeps ``MODEL.DEVICE`` as configured.
    """
    if not config_file:
        raise ConfigError(
            "no config given: pass --config FILE, e.g. --config configs/scratch_R50_GN_3x.yaml"
        )
    if not os.path.isfile(config_file):
        raise ConfigError(f"config file {config_file!r} does not exist (check the path)")
    cfg = get_cfg()
    add_rethink_config(cfg)
    opts = list(opts)
    _merge(cfg, config_file, opts)
    cli_keys = set(opts[0::2])
    _check_schedule_overrides(cfg, cli_keys)
    if datasets:  # same NAME as a config entry: replaced
        given = {name: [name, json_file, root] for name, json_file, root in datasets}
        kept = [e for e in cfg.RETHINK.DATASETS.COCO_INSTANCES if e[0] not in given]
        cfg.RETHINK.DATASETS.COCO_INSTANCES = kept + list(given.values())
    if os.path.normpath(cfg.OUTPUT_DIR) == "output":  # Detectron2's default: none given
        cfg.OUTPUT_DIR = default_output_dir(config_file, get_config_dir())
    if on_this_machine:
        # CPU fallback only for a plain single-process run; one that asked for GPUs stops.
        cfg.MODEL.DEVICE = choose_device(cfg.MODEL.DEVICE, world_size, "MODEL.DEVICE" in cli_keys)
    if cfg.SOLVER.AMP.ENABLED and not cfg.MODEL.DEVICE.startswith("cuda"):
        # Detectron2's AMPTrainer is CUDA-only; a GPU config debugged on a CPU runs in fp32.
        logger.warning("SOLVER.AMP.ENABLED needs a GPU: training in fp32 on %s", cfg.MODEL.DEVICE)
        cfg.SOLVER.AMP.ENABLED = False
    cli_classes = cfg.MODEL.ROI_HEADS.NUM_CLASSES
    cfg = resolve_config(cfg)
    if "MODEL.ROI_HEADS.NUM_CLASSES" in cli_keys and cfg.MODEL.ROI_HEADS.NUM_CLASSES != cli_classes:
        raise ConfigError(
            f"MODEL.ROI_HEADS.NUM_CLASSES {cli_classes} on the command line disagrees with the "
            f"{cfg.MODEL.ROI_HEADS.NUM_CLASSES} categories of the training data's json: drop it "
            f"(it is read from the json)"
        )
    if for_training:
        check_scratch_config(cfg)
    cfg.freeze()
    return cfg


# SOLVER / TEST key owned by a schedule spec -> the RETHINK key to set instead
_SPEC_OWNED_KEYS = {
    "SOLVER.MAX_ITER": "RETHINK.SCHEDULE.SPEC (e.g. '220kit')",
    "SOLVER.STEPS": "RETHINK.SCHEDULE.TAILS or FRACTIONS",
    "SOLVER.GAMMA": "RETHINK.SCHEDULE.GAMMA",
    "SOLVER.BASE_LR": "RETHINK.SCHEDULE.BASE_LR (at RETHINK.SCHEDULE.REFERENCE_BATCH images)",
    "SOLVER.WARMUP_ITERS": "RETHINK.SCHEDULE.WARMUP_ITERS",
    "TEST.EVAL_PERIOD": "RETHINK.SCHEDULE.EVAL_PERIOD",
    "SOLVER.CHECKPOINT_PERIOD": "RETHINK.SCHEDULE.CHECKPOINT_PERIOD",
}


def _check_schedule_overrides(cfg, cli_keys):
    """Refuse a command-line value for a key that RETHINK.SCHEDULE.SPEC would overwrite."""
    spec = str(cfg.RETHINK.SCHEDULE.SPEC).strip()
    if not spec:
        return
    clashing = sorted(cli_keys & set(schedule_owned_values(compute_schedule(cfg))))
    if clashing:
        key = clashing[0]
        raise ConfigError(
            f"{key} on the command line would be overwritten by RETHINK.SCHEDULE.SPEC={spec!r}, "
            f"which owns it: set {_SPEC_OWNED_KEYS[key]} instead, or add "
            f'RETHINK.SCHEDULE.SPEC "" to write SOLVER yourself'
        )


def _merge(cfg, config_file, opts):
    """Merge a file and overrides into ``cfg``, turning yacs' errors into one-line ConfigErrors."""
    try:
        cfg.merge_from_file(config_file)
    except KeyError as e:
        raise ConfigError(
            f"{config_file}: {e.args[0]} (check its spelling; rethink-d2's own keys are under "
            f"RETHINK, see rethink_d2/config.py)"
        ) from None
    except (ValueError, AssertionError, TypeError, yaml.YAMLError) as e:
        raise ConfigError(f"{config_file}: {' '.join(str(e).split())}") from None
    flags = [opt for opt in opts if opt.startswith("--")]
    if flags:
        raise ConfigError(
            f"{flags[0]} came after the KEY VALUE overrides: put every --flag before the KEY VALUE "
            f"pairs"
        )
    if len(opts) % 2:
        raise ConfigError(f"overrides must be KEY VALUE pairs; got an odd number: {opts}")
    try:
        cfg.merge_from_list(opts)
    except KeyError as e:
        raise ConfigError(f"command-line override: {e.args[0]} (check its spelling)") from None
    except (ValueError, AssertionError, TypeError) as e:
        raise ConfigError(f"command-line override: {' '.join(str(e).split())}") from None


def run_worker(main, args):
    """Run ``main(args)`` in one training process; user errors exit with one line."""
    try:
        result = main(args)
    except RethinkError as e:
        sys.exit(report_user_error(e))
    if dist.is_initialized():
        # A process that exits with gloo/NCCL threads alive can abort after a successful run.
        dist.destroy_process_group()
    return result


def launch_cli(main, args):
    """
    Validate the config once (or print it for ``--print-config``), then start ``main(args)`` on
    every process with Detectron2's ``launch``. A worker's exit code (user error, preemption)
    becomes this process's, without a multiprocessing traceback; a process group that cannot
    form ends with one line.
    """
    world_size = args.num_gpus * args.num_machines
    try:
        cfg = build_config(
            args.config_file,
            args.opts,
            world_size=world_size,
            for_training=not args.eval_only,
            datasets=args.datasets,
            on_this_machine=not args.print_config,
        )
        if args.print_config:
            print(cfg.dump(), end="")
            return
        check_launch(args.num_gpus, args.num_machines, args.dist_url)
        check_output_dir(cfg.OUTPUT_DIR)
        if not args.eval_only and not args.resume and cfg.RETHINK.AUTO_RESUME:
            check_same_run(cfg, has_checkpoint(cfg.OUTPUT_DIR))
        if world_size > 1 and args.machine_rank == 0:
            check_dist_port_free(args.dist_url)
    except RethinkError as e:
        sys.exit(report_user_error(e))
    # In one process, training runs here and PreemptionHook handles the signals itself.
    forwarding = forward_signals_to_children() if world_size > 1 else contextlib.nullcontext([])
    with forwarding as received_signals:
        try:
            launch(
                run_worker,
                args.num_gpus,
                num_machines=args.num_machines,
                machine_rank=args.machine_rank,
                dist_url=args.dist_url,
                args=(main, args),
                timeout=timedelta(seconds=args.dist_timeout),
            )
        except mp.ProcessExitedException as e:
            code = e.exit_code
            if code < 0:  # killed by a signal: forwarded preemption before training started?
                code = PREEMPTED_EXIT_CODE if received_signals else 128 - code
            sys.exit(code)
        except mp.ProcessRaisedException as e:
            message = explain_worker_failure(str(e), args.dist_url, args.dist_timeout)
            if message is None:
                raise
            report_user_error(f"process {e.error_index} of machine {args.machine_rank}: {message}")
            sys.exit(EXIT_DIST_FAILURE)
