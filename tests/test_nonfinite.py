"""Non-finite losses stop every rank at the same iteration with one clear TrainingError."""

import collections
import contextlib
import hashlib
import json
import os
from unittest import mock

import pytest
import torch
import torch.distributed as dist
from detectron2.engine import HookBase, SimpleTrainer
from detectron2.utils import comm

from cluster_utils import errors_of, launch_gloo, start_train_net, tagged_checkpoint, wait
from rethink_d2.engine.nonfinite import FiniteLossTrainer
from rethink_d2.engine.preemption import PreemptionHook
from rethink_d2.engine.trainer import wrap_model_for_distributed
from rethink_d2.utils.errors import TrainingError


class ToyDetector(torch.nn.Module):
    """Returns Detectron2-style loss dicts; loss_box goes NaN at ``bad_iteration`` on ``bad_rank``
    (or the forward raises FloatingPointError, as Detectron2's RPN does on diverged boxes)."""

    def __init__(self, bad_iteration, bad_rank=0, in_forward=False):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(4))
        self.bad_iteration, self.bad_rank, self.in_forward = bad_iteration, bad_rank, in_forward

    def forward(self, iteration):
        bad = iteration == self.bad_iteration and comm.get_rank() == self.bad_rank
        if bad and self.in_forward:
            raise FloatingPointError(
                "Predicted boxes or scores contain Inf/NaN. Training has diverged."
            )
        loss_cls = (self.weight**2).sum()
        loss_box = self.weight.sum() * (float("nan") if bad else 0.1)
        return {"loss_cls": loss_cls, "loss_box": loss_box}


def train_toy(model, max_iter=10):
    """Train with FiniteLossTrainer; returns (TrainingError or None, weights after training)."""
    model = wrap_model_for_distributed(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    trainer = FiniteLossTrainer(model, iter(range(max_iter)), optimizer)
    error = None
    try:
        trainer.train(0, max_iter)
    except TrainingError as e:
        error = e
    return error, (model.module if hasattr(model, "module") else model).weight.detach().clone()


def expected_weight(steps):
    """Weights of ToyDetector after ``steps`` good SGD steps (same math, no trainer)."""
    model = ToyDetector(bad_iteration=-1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    for i in range(steps):
        optimizer.zero_grad()
        sum(model(i).values()).backward()
        optimizer.step()
    return model.weight.detach()


def test_nonfinite_loss_names_iteration_and_terms_and_skips_the_step():
    error, weight = train_toy(ToyDetector(bad_iteration=3))
    message = str(error)
    assert "non-finite loss at iteration 3" in message
    assert "loss_box=nan" in message and "loss_cls=" in message
    assert "SOLVER.BASE_LR" in message and "\n" not in message
    # Iterations 0-2 were applied, iteration 3's NaN gradient was not.
    assert torch.equal(weight, expected_weight(3))


def test_divergence_detected_in_the_forward_becomes_a_training_error():
    error, weight = train_toy(ToyDetector(bad_iteration=2, in_forward=True))
    message = str(error)
    assert "non-finite values at iteration 2" in message
    assert "Predicted boxes or scores contain Inf/NaN" in message
    assert "last logged losses (iteration 1): loss_box=" in message
    assert torch.equal(weight, expected_weight(2))


def _two_rank_worker(result_dir):
    torch.set_num_threads(1)
    # Only rank 1's loss goes NaN, at iteration 2: both ranks must stop there.
    error, weight = train_toy(ToyDetector(bad_iteration=2, bad_rank=1))
    with open(os.path.join(result_dir, f"rank{comm.get_rank()}.json"), "w") as f:
        json.dump({"error": str(error) if error else None, "weight": weight.tolist()}, f)


def test_every_rank_stops_at_the_same_iteration(tmp_path):
    # Detectron2 alone checks on the main process only: rank 0 would raise while rank 1 hangs
    # in its next collective (or the reverse). Two real processes over gloo.
    launch_gloo(_two_rank_worker, 2, args=(str(tmp_path),))
    results = [json.load(open(tmp_path / f"rank{r}.json")) for r in (0, 1)]
    for result in results:
        assert result["error"] and "non-finite loss at iteration 2" in result["error"]
        assert "rank 1: loss_box=nan" in result["error"] and "rank 0:" not in result["error"]
        assert result["weight"] == pytest.approx(expected_weight(2).tolist())


def sha1(path):
    with open(path, "rb") as f:
        return hashlib.sha1(f.read()).hexdigest()


def test_train_net_stops_with_one_line_and_keeps_the_last_checkpoint(tmp_path):
    out = str(tmp_path / "run")
    proc, log = start_train_net(out, ["SOLVER.MAX_ITER", "3", "SOLVER.CHECKPOINT_PERIOD", "2"])
    code, output = wait(proc, log)
    assert code == 0, output[-3000:]
    tagged = tagged_checkpoint(out)
    before = {
        name: sha1(os.path.join(out, name)) for name in os.listdir(out) if name.endswith(".pth")
    }

    # Continue the run (--resume: the config differs) to 6 iterations with an infinite RPN loss
    # weight: the loss is inf at the first new iteration (3).
    proc, log = start_train_net(
        out,
        ["SOLVER.MAX_ITER", "6", "SOLVER.CHECKPOINT_PERIOD", "1", "MODEL.RPN.LOSS_WEIGHT", "1e999"],
        flags=["--resume"],
        log_name="diverged.txt",
    )
    code, output = wait(proc, log)
    assert code == 2, output[-3000:]
    (error,) = errors_of(output)
    assert "non-finite loss at iteration 3" in error and "loss_rpn_cls=inf" in error
    # Detectron2's training loop logs exceptions with their traceback: not this one
    assert "Traceback" not in output and "Exception during training" not in output
    # Nothing was written after the failure: same files, same bytes, same tag.
    after = {
        name: sha1(os.path.join(out, name)) for name in os.listdir(out) if name.endswith(".pth")
    }
    assert after == before and tagged_checkpoint(out) == tagged
    state = torch.load(os.path.join(out, tagged), map_location="cpu", weights_only=False)
    assert state["iteration"] == 2
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


# ---------------------------------------------------------------------------------------------
# one collective per iteration
# ---------------------------------------------------------------------------------------------
# Every torch.distributed collective Detectron2 or rethink-d2 calls from Python (DDP's gradient
# all-reduce runs in C++ and is the same for both trainers).
COLLECTIVES = (
    "all_reduce", "all_gather", "all_gather_object", "gather", "gather_object", "broadcast",
    "broadcast_object_list", "barrier", "reduce", "reduce_scatter", "all_to_all",
    "scatter", "scatter_object_list",
)  # fmt: skip


class CollectivesPerStep(HookBase):
    """Records, after every iteration, how many collectives ran during it."""

    def __init__(self, counts):
        self.counts, self.per_step, self._last = counts, [], 0

    def after_step(self):
        total = sum(self.counts.values())
        self.per_step.append(total - self._last)
        self._last = total


def _count_collectives_worker(result_dir):
    torch.set_num_threads(1)
    counts = collections.Counter()
    per_step = {}
    with contextlib.ExitStack() as stack:
        for name in COLLECTIVES:
            original = getattr(dist, name)

            def counting(*args, _name=name, _original=original, **kwargs):
                counts[_name] += 1
                return _original(*args, **kwargs)

            stack.enter_context(mock.patch.object(dist, name, counting))
        for kind in ("detectron2", "rethink_d2"):
            model = wrap_model_for_distributed(ToyDetector(bad_iteration=-1))
            optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
            if kind == "detectron2":
                trainer, extra = SimpleTrainer(model, iter(range(8)), optimizer), []
            else:
                trainer = FiniteLossTrainer(model, iter(range(8)), optimizer)
                extra = [PreemptionHook(None, step_vote=trainer.step_vote)]
            before = counts["all_reduce"]
            clock = CollectivesPerStep(counts)
            trainer.register_hooks(extra + [clock])
            trainer.train(0, 8)
            per_step[kind] = clock.per_step[1:]  # the first one also creates D2's gloo group
            per_step[kind + " all_reduce"] = counts["all_reduce"] - before
    with open(os.path.join(result_dir, f"rank{comm.get_rank()}.json"), "w") as f:
        json.dump(per_step, f)


def test_nonfinite_and_preemption_checks_add_one_collective_per_iteration(tmp_path):
    launch_gloo(_count_collectives_worker, 2, args=(str(tmp_path),))
    for rank in (0, 1):
        per_step = json.load(open(tmp_path / f"rank{rank}.json"))
        theirs, ours = per_step["detectron2"], per_step["rethink_d2"]
        assert len(ours) == len(theirs) == 7
        assert ours == [n + 1 for n in theirs], per_step
        # ... and it is the vote's all-reduce, once per iteration (8 iterations)
        assert per_step["rethink_d2 all_reduce"] - per_step["detectron2 all_reduce"] == 8
