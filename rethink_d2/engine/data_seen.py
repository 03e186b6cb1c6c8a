"""Cumulative images, instances and pixels seen (``data_seen/*``): the units of the paper's Fig. 2.

:class:`DataSeenCounter` wraps the train loader and counts what each process consumes;
:class:`DataSeenHook` sums the counts over processes and logs them. The counter is checkpointed
with the totals of the last summation, so a checkpoint is exact when it is written right after
one (the hook knows the checkpoint period; the preemption hook sums first).
"""

import logging

from detectron2.engine import HookBase
from detectron2.utils import comm

from ..utils.errors import ConfigError, TrainingError

logger = logging.getLogger(__name__)

DATA_SEEN_KEYS = ("images", "instances", "pixels")
# number of batches the totals cover (= iterations trained); stored, not logged
_BATCHES = "batches"


def _zeros():
    return {k: 0 for k in DATA_SEEN_KEYS + (_BATCHES,)}


class DataSeenCounter:
    """Wraps a Detectron2 train loader and counts the images, instances and pixels (``H * W`` of
    the image tensors fed to the model) of the batches it yields, in this process."""

    def __init__(self, data_loader):
        self.data_loader = data_loader
        self._base = _zeros()  # totals restored from a checkpoint
        self._local = _zeros()  # counted by this process since start (or since the restore)
        self._totals = _zeros()  # totals over all processes at the last synchronize()

    def __iter__(self):
        for batch in self.data_loader:
            self.count(batch)
            yield batch

    def count(self, batch):
        """Add one batch (list of dataset dicts with an ``"image"`` CHW tensor) to this process's
        counts."""
        if not isinstance(batch, (list, tuple)) or not all(
            isinstance(d, dict) and hasattr(d.get("image"), "shape") for d in batch
        ):
            raise TrainingError(
                f"DataSeenCounter expects batches as lists of dicts with an 'image' tensor "
                f"(Detectron2's train loader), got {type(batch).__name__}: set "
                f"RETHINK.LOG_DATA_SEEN False for a custom loader"
            )
        self._local["images"] += len(batch)
        self._local["instances"] += sum(len(d["instances"]) for d in batch if "instances" in d)
        self._local["pixels"] += sum(
            int(d["image"].shape[-2] * d["image"].shape[-1]) for d in batch
        )
        self._local[_BATCHES] += 1

    def local_counts(self):
        """dict[str, int]: what this process counted since start (or since the last restore)."""
        return dict(self._local)

    def synchronize(self):
        """Sum the counts of all processes plus the restored totals, and return them (with
        ``"batches"``, the iterations covered); a collective."""
        per_rank = comm.all_gather(self.local_counts())
        totals = {k: self._base[k] + sum(c[k] for c in per_rank) for k in DATA_SEEN_KEYS}
        # every process reads one batch per iteration; the batch count is not summed
        totals[_BATCHES] = self._base[_BATCHES] + self._local[_BATCHES]
        self._totals = totals
        return dict(totals)

    def state_dict(self):
        """The totals of the last :meth:`synchronize` (or of the restore)."""
        return dict(self._totals)

    def load_state_dict(self, state):
        """Continue from checkpointed totals; this process's own counts restart at zero."""
        self._base = {k: int(state.get(k, 0)) for k in self._base}
        self._local = _zeros()
        self._totals = dict(self._base)


class DataSeenHook(HookBase):
    """
    Log the counter's totals as ``data_seen/*`` every ``period`` iterations and at the last one;
    also sum them every ``checkpoint_period`` (``SOLVER.CHECKPOINT_PERIOD``) iterations, so
    that checkpoints hold exact counts.

    Place it before ``PeriodicCheckpointer`` and ``PeriodicWriter``, at the same place on every
    rank (summing is a collective, like ``EvalHook``'s work): e.g. after the ``LRScheduler`` hook.
    """

    def __init__(self, counter, period=20, checkpoint_period=0):
        if period < 1 or checkpoint_period < 0:
            raise ConfigError(
                f"DataSeenHook needs period >= 1 and checkpoint_period >= 0, got {period} and "
                f"{checkpoint_period}"
            )
        self.counter = counter
        self.period = int(period)
        self.checkpoint_period = int(checkpoint_period)

    def before_train(self):
        covered = self.counter.state_dict()[_BATCHES]
        if covered != self.trainer.start_iter:
            logger.warning(
                "data_seen: the restored counts cover %d iterations but training starts at "
                "iteration %d, so data_seen/* are off by the difference (is DataSeenHook placed "
                "before PeriodicCheckpointer, with checkpoint_period=SOLVER.CHECKPOINT_PERIOD?)",
                covered,
                self.trainer.start_iter,
            )

    def after_step(self):
        done = self.trainer.iter + 1
        log = done % self.period == 0 or done >= self.trainer.max_iter
        at_checkpoint = self.checkpoint_period > 0 and done % self.checkpoint_period == 0
        if not (log or at_checkpoint):
            return
        totals = self.counter.synchronize()
        if log:
            self.trainer.storage.put_scalars(
                smoothing_hint=False, **{f"data_seen/{k}": totals[k] for k in DATA_SEEN_KEYS}
            )
