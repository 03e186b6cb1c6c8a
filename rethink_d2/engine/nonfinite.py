"""Stop training on every rank, at the same iteration, when a loss is NaN or infinite.

Detectron2's ``SimpleTrainer`` checks the losses only on the main process, after gathering them:
in a multi-process run the main process raises while the other ranks wait in their next
collective until it times out. Here every rank checks its own loss terms and the verdict is
agreed with one 1-element ``all_reduce`` per iteration, before the optimizer step, so

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

import math

from detectron2.engine import AMPTrainer, SimpleTrainer
from detectron2.utils import comm
from detectron2.utils.events import get_event_storage

from ..utils.errors import TrainingError
from .distributed import any_rank

__all__ = ["FiniteLossAMPTrainer", "FiniteLossTrainer", "check_losses_finite"]


def check_losses_finite(loss_dict, iteration):
    """
    Raise on every rank if any rank's loss terms are not all finite.

    A collective: every rank must call it at the same iteration.

    Args:
        loss_dict (dict[str, Tensor]): this rank's scalar loss terms.
        iteration (int): the current iteration, for the message.

    Raises:
        TrainingError: naming the iteration and the loss terms of the ranks that went
            non-finite.
    """
    values = {name: float(v.detach().float().sum()) for name, v in loss_dict.items()}
    bad = not all(math.isfinite(v) for v in values.values())
    if not any_rank(bad):
        return
    per_rank = comm.all_gather(values if bad else None)
    terms = "; ".join(
        (f"rank {rank}: " if len(per_rank) > 1 else "")
        + ", ".join(f"{name}={value:.4g}" for name, value in sorted(rank_values.items()))
        for rank, rank_values in enumerate(per_rank)
        if rank_values is not None
    )
    raise TrainingError(f"non-finite loss at iteration {iteration} ({terms}); {_ADVICE}")


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

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # The check is a collective: it cannot run in Detectron2's metrics-writing thread.
        assert not self.async_write_metrics, "async_write_metrics is not supported"

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
        check_losses_finite(loss_dict, self.iter if iter is None else iter)
        super()._write_metrics(loss_dict, data_time, prefix=prefix, iter=iter)


class FiniteLossTrainer(_FiniteLossMixin, SimpleTrainer):
    """Detectron2's ``SimpleTrainer`` that stops all ranks on a non-finite loss (see module)."""


class FiniteLossAMPTrainer(_FiniteLossMixin, AMPTrainer):
    """Detectron2's ``AMPTrainer`` that stops all ranks on a non-finite loss (see module)."""
