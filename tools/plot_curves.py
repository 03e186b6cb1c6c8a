#!/usr/bin/env python
"""
Compare the learning curves of two or more runs (the paper's Figure 1: scratch vs pre-trained).

    python tools/plot_curves.py output/scratch_R50_GN_6x output/pretrain_R50_GN_2x \\
        --labels scratch pretrained --out curves.png --tolerance 0.5 --reference pretrained

Reads RUN_DIR/metrics.json (and RUN_DIR/config.yaml for SOLVER.STEPS and IMS_PER_BATCH) of each
run, draws AP (box, mask, keypoint: whichever were evaluated) against iterations and against
images seen, with the LR drops as dotted lines, and prints per run and task the best AP, the
iteration where it was reached, and the first iteration at which the run came within
--tolerance AP of the reference run's best. The reference defaults to the first run whose
config says RETHINK.SCRATCH False.
"""

import argparse
import sys

from rethink_d2.utils.curves import (
    comparison_rows,
    format_rows,
    load_metrics,
    pick_reference,
    plot_comparison,
)
from rethink_d2.utils.errors import ConfigError, RethinkError, report_user_error


def build_parser():
    """The command line of this tool."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="OUTPUT_DIR of a run")
    parser.add_argument("--labels", nargs="+", help="one label per RUN_DIR (default: dir names)")
    parser.add_argument("--out", default="curves.png", help="PNG to write (default: %(default)s)")
    parser.add_argument(
        "--tolerance", type=float, default=0.5, help="AP points (default: %(default)s)"
    )
    parser.add_argument("--reference", help="label of the run to match (default: pre-trained)")
    return parser


def main(argv=None):
    """Run the command line ``argv`` (None: ``sys.argv[1:]``); return the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if len(args.run_dirs) < 2:
        parser.error("give at least two RUN_DIRs to compare")
    if args.labels is not None and len(args.labels) != len(args.run_dirs):
        parser.error(f"--labels needs {len(args.run_dirs)} labels, one per RUN_DIR")
    if args.tolerance < 0:
        parser.error(f"--tolerance must be >= 0 AP points, got {args.tolerance}")
    labels = args.labels or [None] * len(args.run_dirs)
    try:
        runs = [load_metrics(d, label) for d, label in zip(args.run_dirs, labels)]
        if len({r.label for r in runs}) != len(runs):
            raise ConfigError(f"run labels {[r.label for r in runs]} are not unique: pass --labels")
        reference = pick_reference(runs, args.reference)
        tasks = plot_comparison(runs, args.out)
    except RethinkError as e:
        return report_user_error(e)
    rows = comparison_rows(runs, reference, args.tolerance, tasks)
    print(format_rows(rows, reference.label, args.tolerance))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
