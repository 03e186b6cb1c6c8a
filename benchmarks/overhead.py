#!/usr/bin/env python
"""
Per-iteration overhead of rethink_d2.engine.Trainer over Detectron2's DefaultTrainer.

Same config (the quickstart model on the built-in shapes dataset), same data, same seed. The
parent process runs the two trainers alternately in child processes (ours, Detectron2's, ours,
...), so that slow phases of a shared machine hit both alike, and prints

    per-iteration time ratio (ours / Detectron2's): 1.0xx   target <= 1.02

Usage:
    python benchmarks/overhead.py [--rounds 3] [--iters 40] [--warmup 5]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs", "quickstart", "scratch_R18_GN_shapes.yaml")


def run_child(kind, iters, output_dir):
    """Train ``iters`` iterations with one trainer kind and print per-iteration seconds as JSON."""
    import torch
    from detectron2.engine import DefaultTrainer, HookBase

    from rethink_d2.engine import Trainer, build_config

    torch.set_num_threads(1)
    cfg = build_config(
        CONFIG,
        [
            "SOLVER.MAX_ITER", str(iters),
            "TEST.EVAL_PERIOD", "0",
            "SOLVER.CHECKPOINT_PERIOD", str(10 * iters),
            "RETHINK.PLOT_LEARNING_CURVE", "False",
            "RETHINK.AUTO_RESUME", "False",
            "OUTPUT_DIR", output_dir,
            "SEED", "7",
        ],
        world_size=1,
    )

    class StepClock(HookBase):
        def __init__(self):
            self.stamps = []

        def after_step(self):
            self.stamps.append(time.perf_counter())

    trainer_class = Trainer if kind == "ours" else DefaultTrainer
    trainer = trainer_class(cfg)
    clock = StepClock()
    trainer.register_hooks([clock])
    trainer.train()
    durations = [b - a for a, b in zip(clock.stamps, clock.stamps[1:])]
    print(json.dumps(durations))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="pairs of runs (ours, Detectron2's)")
    parser.add_argument("--iters", type=int, default=40, help="iterations per run")
    parser.add_argument("--warmup", type=int, default=5, help="first iterations of a run ignored")
    parser.add_argument("--child", choices=["ours", "detectron2"], help=argparse.SUPPRESS)
    parser.add_argument("--output-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run_child(args.child, args.iters, args.output_dir)
        return

    import tempfile

    times = {"ours": [], "detectron2": []}
    with tempfile.TemporaryDirectory() as tmp:
        for round_index in range(args.rounds):
            for kind in ("ours", "detectron2") if round_index % 2 == 0 else ("detectron2", "ours"):
                out = os.path.join(tmp, f"{kind}_{round_index}")
                proc = subprocess.run(
                    [sys.executable, __file__, "--child", kind, "--iters", str(args.iters),
                     "--output-dir", out],
                    capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"),
                )
                if proc.returncode != 0:
                    sys.exit(f"{kind} run failed:\n{proc.stderr[-3000:]}")
                durations = json.loads(proc.stdout.strip().splitlines()[-1])[args.warmup:]
                times[kind].extend(durations)
                print(f"round {round_index} {kind:>10}: {statistics.median(durations):.4f} s/iter "
                      f"(median of {len(durations)})", flush=True)
    ours = statistics.median(times["ours"])
    theirs = statistics.median(times["detectron2"])
    print(f"median s/iter: ours {ours:.4f}, Detectron2's {theirs:.4f}")
    print(f"per-iteration time ratio (ours / Detectron2's): {ours / theirs:.3f}   target <= 1.02")


if __name__ == "__main__":
    main()
