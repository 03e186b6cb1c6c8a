"""Stop training on every rank, at the same iteration, when a loss is NaN or infinite.

Detectron2's ``SimpleTrainer`` checks the losses on the main process only, and the other ranks
then wait in their next collective until it times out. Here every rank checks its loss terms on
the device and the verdict is agreed before the optimizer step, in the iteration's
:class:`StepVote`. A ``FloatingPointError`` raised in the forward pass (the RPN's) becomes the same
:class:`TrainingError` on that rank; the others stop when they notice it is gone.
"""

import logging
import math

import torch
from detectron2.engine import AMPTrainer, SimpleTrainer
from detectron2.utils import comm
from detectron2.utils.events import get_event_storage

from ..utils.errors import RethinkError, TrainingError
from .distributed import StepVote

_VOTE_FLAG = "nonfinite"
_ADVICE = (
    "training stopped before the optimizer step, the last checkpoint is kept: lower "
    "SOLVER.BASE_LR, lengthen SOLVER.WARMUP_ITERS or enable SOLVER.CLIP_GRADIENTS, then resume"
)


class _OneLineErrorFilter(logging.Filter):
    """Drops Detectron2's "Exception during training" traceback of a RethinkError."""

    def filter(self, record):
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, RethinkError)


def install_one_line_error_filter():
    """
    Keep the tracebacks of user-facing errors (:class:`RethinkError`) out of Detectron2's
    training-loop log, which logs every exception before re-raising it: the error's own line,
    printed by ``tools/train_net.py``, says everything. Idempotent.
    """
    train_loop_logger = logging.getLogger("detectron2.engine.train_loop")
    if not any(isinstance(f, _OneLineErrorFilter) for f in train_loop_logger.filters):
        train_loop_logger.addFilter(_OneLineErrorFilter())


def _last_losses():
    """``"; last logged losses (iteration N): loss_cls=0.51, ..."``, or "" if none logged."""
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
    """Agrees on the losses being finite before Detectron2 writes the metrics of an iteration."""

    def __init__(self, *args, step_vote=None, **kwargs):
        super().__init__(*args, **kwargs)
        # The check is a collective: it cannot run in Detectron2's metrics-writing thread.
        assert not self.async_write_metrics, "async_write_metrics is not supported"
        # Shared with hooks that add their flags to it (PreemptionHook).
        self.step_vote = step_vote if step_vote is not None else StepVote()
        install_one_line_error_filter()

    def run_step(self):
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
        iteration = self.iter if iter is None else iter
        terms = [v.detach().float().sum() for v in loss_dict.values()]
        nonfinite = bool(terms) and ~torch.isfinite(torch.stack(terms)).all()  # no host sync
        if self.step_vote.vote(iteration, **{_VOTE_FLAG: nonfinite})[_VOTE_FLAG]:
            # Rare path: the values are read on the host only to name them, for every rank.
            values = {name: float(v.detach().float().sum()) for name, v in loss_dict.items()}
            bad = not all(math.isfinite(v) for v in values.values())
            per_rank = comm.all_gather(values if bad else None)
            shown = "; ".join(
                (f"rank {rank}: " if len(per_rank) > 1 else "")
                + ", ".join(f"{name}={value:.4g}" for name, value in sorted(rank_values.items()))
                for rank, rank_values in enumerate(per_rank)
                if rank_values is not None
            )
            raise TrainingError(f"non-finite loss at iteration {iteration} ({shown}); {_ADVICE}")
        super()._write_metrics(loss_dict, data_time, prefix=prefix, iter=iter)


class FiniteLossTrainer(_FiniteLossMixin, SimpleTrainer):
    """Detectron2's ``SimpleTrainer`` that stops all ranks on a non-finite loss (see module)."""


class FiniteLossAMPTrainer(_FiniteLossMixin, AMPTrainer):
    """Detectron2's ``AMPTrainer`` that stops all ranks on a non-finite loss (see module)."""
