#!/usr/bin/env python
"""tools/train_net.py for tests: same set-up and launch, and every rank also saves its final
weights before and after training to ``OUTPUT_DIR/rank<R>_{init,final}.pth`` (only rank 0
writes checkpoints otherwise).

Two test hooks, through environment variables:

* ``RETHINK_TEST_DICTS=<file.json>`` registers the dataset dicts stored in that file (a list,
  with ``thing_classes`` next to it) as ``rethink_test_dicts``, in the launcher and in every
  training process;
* ``RETHINK_TEST_RESUME=<file.json>`` (``{"scenarios": [{"name": ..., "opts": [...],
  "stop_at": k}], "agree_dirs": [dir of rank 0, dir of rank 1]}``) runs, in each training
  process and for every scenario, under ``OUTPUT_DIR/<name>/``: ``ref``, the batches of an
  uninterrupted run; ``run``, a training stopped by a real SIGTERM (sent by the last rank to
  itself during iteration ``stop_at``, handled by PreemptionHook), then resumed from its
  checkpoint by a new Trainer. Then, with ``agree_dirs``, every rank resumes from a directory of
  its own. One launch pays the imports once for all of it.
"""

import json
import os
import signal
import sys

import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.engine import HookBase
from detectron2.utils import comm

sys.path.insert(
    0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools")
)
import train_net  # noqa: E402  (tools/train_net.py)
from rethink_d2.engine import Trainer, rethink_argument_parser  # noqa: E402
from rethink_d2.engine.defaults import launch_cli  # noqa: E402
from rethink_d2.engine.preemption import Preempted  # noqa: E402

TEST_DATASET = "rethink_test_dicts"


def _register_test_dataset():
    path = os.environ.get("RETHINK_TEST_DICTS")
    if not path or TEST_DATASET in DatasetCatalog.list():
        return
    with open(path) as f:
        stored = json.load(f)
    DatasetCatalog.register(TEST_DATASET, lambda: [dict(d) for d in stored["dicts"]])
    MetadataCatalog.get(TEST_DATASET).set(thing_classes=stored["thing_classes"])


_register_test_dataset()  # at import: the launcher and spawned training processes


class SignalAt(HookBase):
    """Send SIGTERM to this process as iteration ``iteration`` starts (last rank only): the
    ranks agree to stop during that iteration and checkpoint after it."""

    def __init__(self, iteration):
        self.iteration = iteration

    def before_step(self):
        if self.trainer.iter == self.iteration and comm.get_rank() == comm.get_world_size() - 1:
            os.kill(os.getpid(), signal.SIGTERM)


class StoppingTrainer(Trainer):
    stop_at = None

    def build_hooks(self):
        hooks = super().build_hooks()
        if self.stop_at is not None:
            hooks.insert(0, SignalAt(self.stop_at))
        return hooks


def _setup(args, opts):
    args.opts = list(opts)
    return train_net.setup(args)


def _train(args, opts, resume=False, stop_at=None):
    cfg = _setup(args, opts)
    StoppingTrainer.stop_at = stop_at
    trainer = StoppingTrainer(cfg)
    trainer.resume_or_load(resume=resume)
    position = trainer.checkpointer.checkpointables.get("data_position")
    if resume and position is not None:  # what the grouping buckets held at the stop
        with open(os.path.join(cfg.OUTPUT_DIR, f"carry_rank{comm.get_rank()}.json"), "w") as f:
            json.dump(list(position.sampler.carry), f)
    try:
        trainer.train()
    except Preempted:
        return "preempted"
    return "done"


def _read_batches(args, opts):
    """The uninterrupted reference: the trainer's loader, read for SOLVER.MAX_ITER batches
    (what a run consumes does not depend on the model, so none is built)."""
    cfg = _setup(args, opts)
    batches = iter(Trainer.build_train_loader(cfg))
    for _ in range(cfg.SOLVER.MAX_ITER):
        next(batches)
    batches.close()  # stops the loader workers


def run_scenarios(args, path):
    # Loader workers of a process started by Detectron2's launch are spawned, and import
    # everything again: ~10 s each on a busy machine. Forked ones start at once (their sampler
    # is then copied rather than pickled; test_resume_order pickles one separately).
    torch.multiprocessing.set_start_method("fork", force=True)
    with open(path) as f:
        plan = json.load(f)
    base = list(args.opts)
    output = base[base.index("OUTPUT_DIR") + 1]
    for scenario in plan["scenarios"]:
        root = os.path.join(output, scenario["name"])
        opts = base + scenario["opts"]
        _read_batches(args, opts + ["OUTPUT_DIR", os.path.join(root, "ref")])
        run = opts + ["OUTPUT_DIR", os.path.join(root, "run")]
        assert _train(args, run, stop_at=scenario["stop_at"]) == "preempted"
        assert _train(args, run, resume=True) == "done"
        comm.synchronize()
    if plan.get("agree_dirs"):
        # Then each machine resumes from an OUTPUT_DIR of its own: expected to stop with one
        # line (a RethinkError, printed by launch_cli) when machine 1 lacks rank 0's checkpoint.
        _train(args, base + ["OUTPUT_DIR", plan["agree_dirs"][comm.get_rank()]], resume=True)


def main(args):
    scenarios = os.environ.get("RETHINK_TEST_RESUME")
    if scenarios:
        return run_scenarios(args, scenarios)
    cfg = train_net.setup(args)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    model = trainer.model.module if hasattr(trainer.model, "module") else trainer.model
    prefix = os.path.join(cfg.OUTPUT_DIR, f"rank{comm.get_rank()}")
    torch.save(model.state_dict(), prefix + "_init.pth")
    trainer.train()
    torch.save(model.state_dict(), prefix + "_final.pth")


if __name__ == "__main__":
    launch_cli(main, rethink_argument_parser().parse_args())
