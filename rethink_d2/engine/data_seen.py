"""Cumulative images, instances and pixels seen: the units of the paper's Figure 2.

Two pieces, so that counting stays exact and cheap:

* :class:`DataSeenCounter` wraps the train loader and counts every batch as it is handed to the
  model (per process, no communication);
* :class:`DataSeenHook` sums the counts over all processes every ``period`` iterations, at
  checkpoint iterations and at the last iteration, and writes ``data_seen/images``,
  ``data_seen/instances`` and ``data_seen/pixels`` to the event storage (``metrics.json``,
  TensorBoard).

Resume: register the *counter* as a checkpointable
(``checkpointer.add_checkpointable("data_seen", counter)``); its ``state_dict`` holds the totals
of the last summation, which is exact at a checkpoint when the hook runs *before*
``PeriodicCheckpointer`` and knows the checkpoint period (``DataSeenHook(counter,
checkpoint_period=cfg.SOLVER.CHECKPOINT_PERIOD)``, see :class:`DataSeenHook` for where to insert
it), and a checkpoint written at any other iteration sums them first: the preemption checkpoint
does (``PreemptionHook(..., before_save=[counter.synchronize])``). A resumed run warns if the
stored totals do not cover exactly the iterations it resumes from.
"""

import logging

from detectron2.engine import HookBase
from detectron2.utils import comm

from ..utils.errors import ConfigError, TrainingError

__all__ = ["DATA_SEEN_KEYS", "DataSeenCounter", "DataSeenHook"]

logger = logging.getLogger(__name__)

# what is counted, in the order of the per-process count lists
DATA_SEEN_KEYS = ("images", "instances", "pixels")
# number of batches the totals cover (= iterations trained); stored, not logged
_BATCHES = "batches"


class DataSeenCounter:
    """
    Iterable wrapper of a Detectron2 train loader that counts what it yields.

    Each batch must be a list of dataset dicts with an ``"image"`` CHW tensor (as fed to the
    model, i.e. after resizing) and, when annotated, ``"instances"``. Per batch it adds the
    number of images, the number of instances (``len(d["instances"])``) and ``H * W`` of every
    image tensor.

    Args:
        data_loader (iterable): the train loader; its batches are yielded unchanged.
    """

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
        """
        Add one batch to this process's counts.

        Args:
            batch (list[dict]): dataset dicts with an ``"image"`` tensor of shape (C, H, W).

        Raises:
            TrainingError: when the batch does not look like Detectron2's train batches.
        """
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
        """
        Returns:
            dict[str, int]: what this process counted since start (or since the last restore),
            keys :data:`DATA_SEEN_KEYS` and ``"batches"``.
        """
        return dict(self._local)

    def synchronize(self):
        """
        Sum the counts of all processes (a collective: every process must call it at the same
        iteration) and add the totals restored from a checkpoint.

        Returns:
            dict[str, int]: the cumulative totals, keys :data:`DATA_SEEN_KEYS` and ``"batches"``
            (iterations covered).
        """
        per_rank = comm.all_gather(self.local_counts())
        totals = {k: self._base[k] + sum(c[k] for c in per_rank) for k in DATA_SEEN_KEYS}
        # every process reads one batch per iteration; the batch count is not summed
        totals[_BATCHES] = self._base[_BATCHES] + self._local[_BATCHES]
        self._totals = totals
        return dict(totals)

    @property
    def totals(self):
        """dict[str, int]: the totals of the last :meth:`synchronize` (or of the restore)."""
        return dict(self._totals)

    def state_dict(self):
        """
        Returns:
            dict[str, int]: the totals of the last :meth:`synchronize`, for the checkpoint.
        """
        return dict(self._totals)

    def load_state_dict(self, state):
        """
        Continue counting from checkpointed totals; this process's own counts restart at zero.

        Args:
            state (dict[str, int]): a :meth:`state_dict`.
        """
        self._base = {k: int(state.get(k, 0)) for k in self._base}
        self._local = _zeros()
        self._totals = dict(self._base)


class DataSeenHook(HookBase):
    """
    Log the counter's cumulative totals as ``data_seen/{images,instances,pixels}``.

    Where to put it: before ``PeriodicCheckpointer`` (so checkpoints store the totals of their
    own iteration) and ``PeriodicWriter`` (so a record holds the counts of its iteration), and
    at the same place on every rank, because summing is a collective and ``EvalHook`` runs
    collectives too -- e.g. right after Detectron2's ``LRScheduler`` hook, which every rank has.

    Args:
        counter (DataSeenCounter): the counter that wraps the trainer's data loader.
        period (int): log every ``period`` iterations (and at the last iteration).
        checkpoint_period (int): ``SOLVER.CHECKPOINT_PERIOD``; the totals are also summed at
            those iterations so that checkpoints hold exact counts. 0: only ``period``.

    Raises:
        ConfigError: ``period`` < 1 or ``checkpoint_period`` < 0.
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
        covered = self.counter.totals[_BATCHES]
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


def _zeros():
    return {k: 0 for k in DATA_SEEN_KEYS + (_BATCHES,)}
