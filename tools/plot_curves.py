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

from rethink_d2.utils.curves import best_ap, first_match_iteration, load_metrics, plot_comparison
from rethink_d2.utils.errors import ConfigError, RethinkError, report_user_error


def comparison_rows(runs, reference, tolerance, tasks):
    """
    One dict per (task, run) of ``runs`` (``reference`` among them): ``best_ap``, ``best_iter``
    and ``match_iter``, the first iteration within ``tolerance`` AP points of the reference's
    best (None where missing, and for the reference itself).
    """
    rows = []
    for task in tasks:
        ref_best = best_ap(reference.ap_curve(task))
        for run in runs:
            curve = run.ap_curve(task)
            best = best_ap(curve) or (None, None)
            match = None
            if run is not reference and ref_best is not None:
                match = first_match_iteration(curve, ref_best[0], tolerance)
            rows.append(
                {
                    "task": task,
                    "label": run.label,
                    "best_ap": best[0],
                    "best_iter": best[1],
                    "match_iter": match,
                }
            )
    return rows


def format_rows(rows, reference_label, tolerance):
    """:func:`comparison_rows` as a fixed-width text table (AP with 2 decimals, "-" if missing)."""
    header = ("task", "run", "best AP", "best at iter")
    lines = [header + (f"matches {reference_label} best-{tolerance:g} at iter",)]
    for r in rows:
        match = "-" if r["match_iter"] is None else str(r["match_iter"])
        lines.append(
            (
                r["task"],
                r["label"],
                "-" if r["best_ap"] is None else f"{r['best_ap']:.2f}",
                "-" if r["best_iter"] is None else str(r["best_iter"]),
                "(reference)" if r["label"] == reference_label else match,
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in lines
    )


def pick_reference(runs, label=None):
    """
    The run labelled ``label``; by default the first pre-trained run (``RETHINK.SCRATCH False``
    in its config.yaml), else the first run.
    """
    if label is not None:
        for run in runs:
            if run.label == label:
                return run
        raise ConfigError(
            f"--reference {label!r} is not one of the run labels {[r.label for r in runs]}"
        )
    return next((r for r in runs if r.scratch is False), runs[0])


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
