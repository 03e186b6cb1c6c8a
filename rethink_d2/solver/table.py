"""The schedule table of docs/schedules.md, and ``python -m rethink_d2.solver`` which prints it."""

import argparse

from detectron2.config import get_cfg

from ..config import add_rethink_config
from ..utils.errors import ConfigError, report_user_error
from .schedule import compute_schedule


def schedule_table(rows, cfg=None, dataset_images=118287):
    """
    A Markdown table of resolved schedules (the one in docs/schedules.md).

    Args:
        rows (list[tuple]): ``(spec, images per iteration[, mode])``; without a mode,
            ``RETHINK.SCHEDULE.MODE`` of ``cfg`` is used.
        cfg (CfgNode or None): config whose ``RETHINK.SCHEDULE`` keys to use (None: defaults).
        dataset_images (int): images per epoch for the epochs column (COCO train2017).
    """
    cfg = add_rethink_config(get_cfg()) if cfg is None else cfg.clone()
    cfg.defrost()
    cfg.SOLVER.WARMUP_ITERS = 0  # the table is about length; warm-up is kept as written anyway
    default_mode = cfg.RETHINK.SCHEDULE.MODE
    lines = [
        "| spec | mode | images/iter | MAX_ITER | STEPS | BASE_LR | images seen | COCO epochs |",
        "|---|---|---:|---:|---|---:|---:|---:|",
    ]
    for spec, batch, *mode in rows:
        cfg.RETHINK.SCHEDULE.MODE = mode[0] if mode else default_mode
        s = compute_schedule(cfg, spec=spec, batch=batch)
        steps = ", ".join(f"{x:,}" for x in s.steps)
        lines.append(
            f"| {spec} | {s.mode} | {batch} | {s.max_iter:,} | {steps} | {s.base_lr:g} | "
            f"{s.images_seen:,} | {s.images_seen / dataset_images:.1f} |"
        )
    return "\n".join(lines)


# the docs/schedules.md table: the paper's 2x..9x, Detectron2's scratch 9x at batch 64 and
# Detectron2's 1x
_DOC_ROWS = [(f"{m}x", 16, "tail") for m in range(2, 10)] + [
    ("9x", 64, "tail"),
    ("1x", 16, "proportional"),
]


def main(argv=None):
    """
    Print resolved schedules as a Markdown table; return the exit code (2 on a bad spec or
    override). Without specs: the docs/schedules.md table; else every spec at every ``--batch``.
    """
    parser = argparse.ArgumentParser(
        prog="python -m rethink_d2.solver", description="Print resolved schedules (Markdown)."
    )
    parser.add_argument("specs", nargs="*", help="schedule specs, e.g. 6x 4.5x 220kit")
    parser.add_argument("--batch", type=int, nargs="+", default=[16], help="images/iteration")
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="KEY VALUE pairs")
    args = parser.parse_args(argv)
    cfg = add_rethink_config(get_cfg())
    try:
        cfg.merge_from_list(args.opts)
        rows = [(s, b) for s in args.specs for b in args.batch] if args.specs else _DOC_ROWS
        print(schedule_table(rows, cfg))
    except (ConfigError, KeyError, ValueError, AssertionError) as e:
        return report_user_error(e)
    return 0
