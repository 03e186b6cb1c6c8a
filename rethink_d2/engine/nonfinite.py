"""Stop training on every rank, at the same iteration, when a loss is NaN or infinite.

Detectron2's ``SimpleTrainer`` checks the losses only on the main process, after gathering them:
in a multi-process run the main process raises while the other ranks wait in their next
collective until it times out. Here every rank checks its own loss terms (on the device, with
torch ops: no host synchronization per term) and the verdict is agreed before the optimizer step
in the iteration's single :class:`~rethink_d2.engine.distributed.StepVote` all-reduce (which also
carries the preemption flag of :class:`~rethink_d2.engine.preemption.PreemptionHook`), so

* all ranks raise :class:`TrainingError` at the same iteration, naming it and the loss terms
  (``loss_cls=nan`` ...) of every rank that saw a non-finite value;
* the weights are never updated with the bad gradients, and no checkpoint is written after the
  error: ``last_checkpoint`` keeps naming the last good checkpoint (``model_final.pth`` is only
  written when the last iteration completes).

Detectron2 may notice the divergence earlier, inside the forward pass (the RPN raises
``FloatingPointError: Predicted boxes or scores contain Inf/NaN``): that error becomes the same
kind of :class:`TrainingError`, naming the iteration and the last logged losses. Only the rank
that saw it stops there; the others stop when they notice it is gone (see ``--dist-timeout``).
"""

import logging
import math

import torch
from detectron2.engine import AMPTrainer, SimpleTrainer
from detectron2.utils import comm
from detectron2.utils.events import get_event_storage

from ..utils.errors import RethinkError, TrainingError
from .distributed import StepVote

__all__ = [
    "FiniteLossAMPTrainer",
    "FiniteLossTrainer",
    "check_losses_finite",
    "install_one_line_error_filter",
    "losses_finite",
]

# The flag name of the non-finite check in a StepVote.
NONFINITE_FLAG = "nonfinite"


def losses_finite(loss_dict):
    """
    Args:
        loss_dict (dict[str, Tensor]): scalar loss terms.

    Returns:
        Tensor: a 0-dim bool tensor on the losses' device, True when every term is finite
        (computed without synchronizing with the host).
    """
    terms = [v.detach().float().sum() for v in loss_dict.values()]
    if not terms:
        return torch.ones((), dtype=torch.bool)
    return torch.isfinite(torch.stack(terms)).all()


def check_losses_finite(loss_dict, iteration, vote=None):
    """
    Raise on every rank if any rank's loss terms are not all finite.

    A collective: every rank must call it at the same iteration.

    Args:
        loss_dict (dict[str, Tensor]): this rank's scalar loss terms.
        iteration (int): the current iteration, for the message.
        vote (StepVote or None): the iteration's vote, which also carries the flags of its
            other sources (a new one when None).

    Raises:
        TrainingError: naming the iteration and the loss terms of the ranks that went
            non-finite.
    """
    vote = vote if vote is not None else StepVote()
    nonfinite = ~losses_finite(loss_dict)
    if not vote.vote(iteration, **{NONFINITE_FLAG: nonfinite})[NONFINITE_FLAG]:
        return
    # Rare path: the values are read on the host only to name them.
    values = {name: float(v.detach().float().sum()) for name, v in loss_dict.items()}
    bad = not all(math.isfinite(v) for v in values.values())
    per_rank = comm.all_gather(values if bad else None)
    terms = "; ".join(
        (f"rank {rank}: " if len(per_rank) > 1 else "")
        + ", ".join(f"{name}={value:.4g}" for name, value in sorted(rank_values.items()))
        for rank, rank_values in enumerate(per_rank)
        if rank_values is not None
    )
    raise TrainingError(f"non-finite loss at iteration {iteration} ({terms}); {_ADVICE}")


class _OneLineErrorFilter(logging.Filter):
    """Drops Detectron2's "Exception during training" traceback of a RethinkError."""

    def filter(self, record):
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, RethinkError)


_TRAIN_LOOP_LOGGER = "detectron2.engine.train_loop"


def install_one_line_error_filter():
    """
    Keep the tracebacks of user-facing errors out of Detectron2's training-loop log.

    ``TrainerBase.train`` logs every exception with ``logger.exception`` before re-raising it;
    for a :class:`RethinkError` (e.g. a non-finite loss) the error's own line, printed by
    ``tools/train_net.py``, says everything. Other exceptions keep their traceback. Idempotent.
    """
    train_loop_logger = logging.getLogger(_TRAIN_LOOP_LOGGER)
    if not any(isinstance(f, _OneLineErrorFilter) for f in train_loop_logger.filters):
        train_loop_logger.addFilter(_OneLineErrorFilter())


_ADVICE = (
    "training stopped before the optimizer step, the last checkpoint is kept: lower "
    "SOLVER.BASE_LR, lengthen SOLVER.WARMUP_ITERS or enable SOLVER.CLIP_GRADIENTS, then resume"
)


def _last_losses():
    """``"loss_cls=0.51, ... at iteration N"`` from the event storage, or "" if none logged."""
    try:
        latest = get_event_storage().latest()
    except AssertionError:  # no storage: not inside TrainerBase.train
        return ""
    losses = {k: v for k, v in latest.items() if k.startswith("loss") or k == "total_loss"}
    if not losses:
        return ""
    iteration = max(it for _, it in losses.values())
    terms = ", ".join(f"{k}={v:.4g}" for k, (v, _) in sorted(losses.items()))
    return f"; last logged losses (iteration {iteration}): {terms}"


class _FiniteLossMixin:
    """Adds :func:`check_losses_finite` before Detectron2 writes the metrics of an iteration."""

    def __init__(self, *args, step_vote=None, **kwargs):
        """
        Args:
            args, kwargs: those of Detectron2's trainer.
            step_vote (StepVote or None): the per-iteration vote, shared with hooks that add
                their flags to it (e.g. PreemptionHook); a new one when None.
        """
        super().__init__(*args, **kwargs)
        # The check is a collective: it cannot run in Detectron2's metrics-writing thread.
        assert not self.async_write_metrics, "async_write_metrics is not supported"
        self.step_vote = step_vote if step_vote is not None else StepVote()
        install_one_line_error_filter()

    def run_step(self):
        """Detectron2's step; a divergence it detects in the forward pass becomes TrainingError."""
        try:
            super().run_step()
        except FloatingPointError as e:
            raise TrainingError(
                f"non-finite values at iteration {self.iter} ({' '.join(str(e).split())})"
                f"{_last_losses()}; {_ADVICE}"
            ) from e

    def _write_metrics(self, loss_dict, data_time, prefix="", iter=None):  # noqa: A002 (D2 name)
        # Runs after backward() and before optimizer.step() in SimpleTrainer.run_step: raising
        # here leaves the weights as they were after the last good iteration.
        check_losses_finite(loss_dict, self.iter if iter is None else iter, self.step_vote)
        super()._write_metrics(loss_dict, data_time, prefix=prefix, iter=iter)


class FiniteLossTrainer(_FiniteLossMixin, SimpleTrainer):
    """Detectron2's ``SimpleTrainer`` that stops all ranks on a non-finite loss (see module)."""


class FiniteLossAMPTrainer(_FiniteLossMixin, AMPTrainer):
    """Detectron2's ``AMPTrainer`` that stops all ranks on a non-finite loss (see module)."""
