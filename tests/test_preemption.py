"""SIGTERM mid-run -> checkpoint of that iteration, exit 75 -> resume -> MAX_ITER, LR continuous."""

import os
import signal

import pytest
import torch

from detectron2.checkpoint import Checkpointer

from cluster_utils import CLUSTER_OPTS, start_train_net, tagged_checkpoint, wait, wait_until
from conftest import QUICKSTART, read_metrics
from rethink_d2.engine import Trainer, build_config
from rethink_d2.engine.data_seen import DataSeenCounter, DataSeenHook
from rethink_d2.engine.nonfinite import FiniteLossTrainer
from rethink_d2.engine.preemption import PREEMPTED_EXIT_CODE, PreemptionHook
from test_data_seen import batches_from, expected_counts

MAX_ITER = 14
# Warm-up over the whole run: the LR changes at every iteration, so a scheduler that restarted
# (or skipped) on resume could not match the uninterrupted schedule.
SCHEDULE = [
    "SOLVER.MAX_ITER", str(MAX_ITER),
    "SOLVER.WARMUP_ITERS", str(MAX_ITER),
    "SOLVER.WARMUP_FACTOR", "0.1",
    "SOLVER.CHECKPOINT_PERIOD", "4",
    # Data loader workers: they receive the signal too, and must survive it.
    "DATALOADER.NUM_WORKERS", "2",
]  # fmt: skip


def expected_lrs(opts):
    """LR used at each iteration of an uninterrupted run, from the run's own scheduler."""
    cfg = build_config(QUICKSTART, CLUSTER_OPTS + opts)
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=cfg.SOLVER.BASE_LR)
    scheduler = Trainer.build_lr_scheduler(cfg, optimizer)
    lrs = []
    for _ in range(cfg.SOLVER.MAX_ITER):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def test_sigterm_checkpoints_exits_75_and_resume_continues(tmp_path):
    out = str(tmp_path / "run")
    proc, log = start_train_net(out, SCHEDULE)
    # Preempt once the run is past iteration 3 (its periodic checkpoint is tagged).
    wait_until(lambda: tagged_checkpoint(out) == "model_0000003.pth", 300, [proc], "iteration 3")
    # Like Slurm: every process of the job is signalled, data loader workers included.
    os.killpg(proc.pid, signal.SIGTERM)
    code, output = wait(proc, log)

    assert code == PREEMPTED_EXIT_CODE, output[-3000:]
    preempted = tagged_checkpoint(out)
    state = torch.load(os.path.join(out, preempted), map_location="cpu", weights_only=False)
    k = state["iteration"]
    assert preempted == f"model_{k:07d}.pth"
    assert 3 <= k < MAX_ITER - 1
    assert f"Preempted (SIGTERM) after iteration {k}" in output
    assert not os.path.exists(os.path.join(out, "model_final.pth"))
    assert "Traceback" not in output

    proc, log = start_train_net(out, SCHEDULE, flags=["--resume"], log_name="resume.txt")
    code, output = wait(proc, log)
    assert code == 0, output[-3000:]
    assert f"Starting training from iteration {k + 1}" in output
    final = torch.load(os.path.join(out, "model_final.pth"), map_location="cpu", weights_only=False)
    assert final["iteration"] == MAX_ITER - 1

    # metrics.json: the preempted run flushed iteration k, the resumed one ends at MAX_ITER - 1,
    # and both LRs are those of the uninterrupted schedule.
    lrs = expected_lrs(SCHEDULE)
    records = {r["iteration"]: r for r in read_metrics(out) if "lr" in r}
    assert sorted(records) == [k, MAX_ITER - 1]
    for iteration, record in records.items():
        assert record["lr"] == pytest.approx(lrs[iteration], rel=1e-6), iteration
    assert lrs[k] != pytest.approx(lrs[MAX_ITER - 1 - (k + 1)])  # a restarted LR would differ


# ---------------------------------------------------------------------------------------------
# the preemption checkpoint holds the data-seen counts of its own iteration
# ---------------------------------------------------------------------------------------------
class SignalAt(torch.nn.Module):
    """A model of batches that signals its own process while running iteration ``at``."""

    def __init__(self, at):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(2))
        self.at, self.calls = at, 0

    def forward(self, batch):
        if self.calls == self.at:
            os.kill(os.getpid(), signal.SIGUSR1)  # blocked during the iteration: stays pending
        self.calls += 1
        return {"loss": (self.weight**2).sum() * len(batch)}


def test_preemption_checkpoint_holds_the_counts_of_its_iteration(tmp_path):
    k = 6  # not a multiple of any period: DataSeenHook last summed nothing (period 20)
    counter = DataSeenCounter(batches_from(0))
    model = SignalAt(k)
    trainer = FiniteLossTrainer(model, counter, torch.optim.SGD(model.parameters(), lr=0.01))
    checkpointer = Checkpointer(model, str(tmp_path), data_seen=counter)
    trainer.register_hooks(
        [
            DataSeenHook(counter, period=20),
            PreemptionHook(
                checkpointer, step_vote=trainer.step_vote, before_save=[counter.synchronize]
            ),
        ]
    )
    with pytest.raises(SystemExit) as stopped:
        trainer.train(0, 20)
    assert stopped.value.code == PREEMPTED_EXIT_CODE
    # preempted after the very iteration the signal arrived in (it was pending at the vote)
    state = torch.load(tmp_path / f"model_{k:07d}.pth", map_location="cpu", weights_only=False)
    assert state["iteration"] == k
    images, instances, pixels = expected_counts(range(k + 1))
    assert state["data_seen"] == {
        "images": images, "instances": instances, "pixels": pixels, "batches": k + 1,
    }  # fmt: skip
