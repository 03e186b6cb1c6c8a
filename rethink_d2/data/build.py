"""The train loader of rethink-d2: Detectron2's, with registry samplers and a subset manifest."""

import contextlib
import json
import logging
import os

import numpy as np
from detectron2.data import (
    DatasetFromList,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from detectron2.data.common import ToIterableDataset
from detectron2.utils import comm

from .augmentation import build_train_mapper
from .manifest import MANIFEST_NAME, write_manifest
from .samplers import SUBSET_SAMPLER, build_resumable_sampler, grouped_stream_position
from .subsets import get_subset_record, register_subset_datasets

logger = logging.getLogger(__name__)


def subset_manifest_entries(cfg, sampler=None):
    """
    The manifest entries of a training run: one per ``<dataset>@<size>`` name of
    ``DATASETS.TRAIN`` (once loaded) and one for a ``SubsetTrainingSampler``.

    Args:
        cfg (CfgNode): the config.
        sampler (Sampler or None): the training sampler.

    Returns:
        dict[str, dict]: name -> entry (empty when the run uses no subset).
    """
    entries = {}
    for name in cfg.DATASETS.TRAIN:
        record = get_subset_record(name)
        if record is not None:
            entries[name] = record
    record = getattr(sampler, "record", None)
    if record is not None:
        entries[SUBSET_SAMPLER] = record
    return entries


def write_run_manifest(cfg, sampler=None):
    """
    Write ``OUTPUT_DIR/subset_manifest.json`` (main process only) when the run uses a subset.

    Args:
        cfg (CfgNode): the config.
        sampler (Sampler or None): the training sampler.

    Returns:
        str or None: the manifest path, or None when there is no subset or not the main process.

    Raises:
        DatasetError: ``OUTPUT_DIR`` already holds a manifest of other images.
    """
    entries = subset_manifest_entries(cfg, sampler)
    if not entries or not comm.is_main_process():
        return None
    path = os.path.join(cfg.OUTPUT_DIR, MANIFEST_NAME)
    written = write_manifest(path, entries)
    for name, entry in entries.items():
        logger.info(
            f"Training on subset {name}: {entry['stats']['images']} images, "
            f"{entry['stats']['instances']} instances; image ids in {path}"
            + ("" if written else " (unchanged)")
        )
    return path


def build_train_loader(cfg, mapper=None):
    """
    Detectron2's train loader with the sampler from ``SAMPLER_REGISTRY`` and a subset manifest.

    ``<dataset>@<size>`` names of ``DATASETS.TRAIN`` are registered here too (a no-op when
    ``resolve_config`` did it), so an unresolved config works as well.

    Args:
        cfg (CfgNode): the (resolved) config.
        mapper (callable or None): dataset mapper; None: :func:`build_train_mapper`
            (``DatasetMapper(cfg, True)`` with ``RETHINK.INPUT.AUGMENTATION``'s augmentations).

    Returns:
        TrainLoaderPosition or iterable[list[dict]]: batches, as
        ``detectron2.data.build_detection_train_loader``; a :class:`TrainLoaderPosition`
        (checkpointable) except for the samplers Detectron2 builds from cfg.

    Raises:
        ConfigError / DatasetError: bad sampler or subset settings.
    """
    register_subset_datasets(cfg)
    dataset = get_detection_dataset_dicts(
        cfg.DATASETS.TRAIN,
        filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS,
        min_keypoints=(
            cfg.MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE if cfg.MODEL.KEYPOINT_ON else 0
        ),
        proposal_files=cfg.DATASETS.PROPOSAL_FILES_TRAIN if cfg.MODEL.LOAD_PROPOSALS else None,
    )
    if mapper is None:
        mapper = build_train_mapper(cfg)
    sampler = build_resumable_sampler(cfg, dataset)
    write_run_manifest(cfg, sampler)
    if sampler is None:  # a sampler that Detectron2's loader builds from cfg itself
        return build_detection_train_loader(cfg, mapper=mapper, dataset=dataset)
    grouping = cfg.DATALOADER.ASPECT_RATIO_GROUPING
    is_wide = None
    if grouping and all("width" in d and "height" in d for d in dataset):
        is_wide = np.array([d["width"] > d["height"] for d in dataset], dtype=bool)
    loader = build_detection_train_loader(
        # With grouping, the workers take turns index by index (Detectron2 shards the stream in
        # chunks of a batch): then the grouping receives the images in stream order, which
        # makes its state after N batches a function of the stream (grouped_stream_position).
        dataset=ToIterableDataset(DatasetFromList(dataset, copy=False), sampler)
        if grouping
        else dataset,
        mapper=mapper,
        sampler=None if grouping else sampler,
        total_batch_size=cfg.SOLVER.IMS_PER_BATCH,
        aspect_ratio_grouping=grouping,
        num_workers=cfg.DATALOADER.NUM_WORKERS,
    )
    return TrainLoaderPosition(
        loader,
        sampler,
        batch_size=cfg.SOLVER.IMS_PER_BATCH // comm.get_world_size(),
        is_wide=is_wide if grouping else None,
        grouping=grouping,
        name=cfg.DATALOADER.SAMPLER_TRAIN,
        record_dir=cfg.OUTPUT_DIR if cfg.RETHINK.DATA.RECORD_IDS else None,
    )


class TrainLoaderPosition:
    """
    The train loader, made resumable: a checkpointable that knows how far the stream went.

    It yields the loader's batches unchanged and counts them where the trainer consumes them
    (not where loader workers prefetch). A checkpoint stores the number of batches this rank
    consumed and the order seed; on resume every rank restarts its sampler right after the
    last image it consumed, so a run stopped and resumed consumes, on every rank, the same
    sequence of images as a run that was never stopped:

    * without aspect-ratio grouping, batch ``N`` holds stream items ``N*B ... N*B+B-1`` (B:
      images per batch of this rank), so the sampler skips ``N*B`` indices;
    * with grouping, the grouping buckets hold images drawn from the stream but not batched
      yet; they are computed from the stream and the images' width > height
      (:func:`grouped_stream_position`) and the resumed sampler yields them first, which fills
      the buckets exactly as they were: again the same batches as an uninterrupted run.

    Augmentations (flips, sizes) are not part of this: loader workers draw them afresh.

    Args:
        loader (iterable): Detectron2's train loader over ``sampler``.
        sampler (ResumableSampler): the stream of this rank.
        batch_size (int): images per batch of this rank.
        is_wide (np.ndarray or None): per dataset index, width > height (for grouping).
        grouping (bool): ``DATALOADER.ASPECT_RATIO_GROUPING``.
        name (str): the sampler's name (stored, compared on resume).
        record_dir (str or None): write the image ids of every consumed batch to
            ``<record_dir>/ids_rank<R>.jsonl`` (``RETHINK.DATA.RECORD_IDS``).
    """

    def __init__(
        self, loader, sampler, *, batch_size, is_wide=None, grouping=False, name="", record_dir=None
    ):
        self.loader = loader
        self.sampler = sampler
        self.batch_size = int(batch_size)
        self.is_wide = is_wide
        self.grouping = bool(grouping)
        self.name = name
        self.record_dir = record_dir
        self._base = 0  # batches consumed before this process (from the checkpoint)
        self._consumed = 0  # batches consumed by this process
        self._resumed = False
        self._record_open = False

    @property
    def batches(self):
        """int: batches consumed on this rank since the run started (resumes included)."""
        return self._base + self._consumed

    def record_path(self, rank=None):
        """str or None: the id file of ``rank`` (default: this process's)."""
        if self.record_dir is None:
            return None
        rank = comm.get_rank() if rank is None else rank
        return os.path.join(self.record_dir, f"ids_rank{rank}.jsonl")

    def __iter__(self):
        record = self._open_record()
        try:
            for batch in self.loader:
                if record is not None:
                    ids = [d.get("image_id", d.get("file_name")) for d in batch]
                    # one line per batch, flushed: a checkpoint never covers unwritten lines
                    record.write(json.dumps({"iter": self.batches, "ids": ids}) + "\n")
                    record.flush()
                self._consumed += 1
                yield batch
        finally:
            if record is not None:
                record.close()

    def _open_record(self):
        path = self.record_path()
        if path is None:
            return None
        os.makedirs(self.record_dir, exist_ok=True)
        if self._record_open:  # iterated again in this process: continue the file
            return open(path, "a")
        self._record_open = True
        if not self._resumed:
            return open(path, "w")
        # Keep the lines of the batches the checkpoint covers; drop those of iterations that
        # ran after it (a run killed without a preemption checkpoint).
        kept = []
        with contextlib.suppress(FileNotFoundError), open(path) as f:
            for line in f:
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    if json.loads(line)["iter"] < self._base:
                        kept.append(line if line.endswith("\n") else line + "\n")
        with open(path, "w") as f:
            f.writelines(kept)
        return open(path, "a")

    def state_dict(self):
        """
        Returns:
            dict: the position of the stream (every rank's, from this rank's count: all ranks
            consume one batch per iteration).
        """
        return {
            "batches": self.batches,
            "seed": self.sampler.seed,
            "sampler": self.name,
            "world_size": comm.get_world_size(),
            "batch_size": self.batch_size,
            "grouping": self.grouping,
        }

    def load_state_dict(self, state):
        """
        Continue the stream of a checkpoint: same seed, after its last consumed image.

        Must be called before the first batch is read (the loader workers copy the sampler
        when they start).

        Args:
            state (dict): a :meth:`state_dict`.
        """
        batches = int(state["batches"])
        self._base, self._consumed, self._resumed = batches, 0, True
        self._record_open = False
        sampler = self.sampler
        sampler.skip, sampler.carry = 0, []
        if not sampler.reseed(state["seed"]):
            logger.warning(
                "The training sampler cannot be rebuilt for the checkpoint's order seed %s: the "
                "image order restarts (set SEED >= 0 for a reproducible order)",
                state["seed"],
            )
            return
        layout = (state["sampler"], state["world_size"], state["batch_size"], state["grouping"])
        here = (self.name, comm.get_world_size(), self.batch_size, self.grouping)
        if layout != here:
            # Not the same streams: keep the share of images seen, not the exact order.
            images = batches * state["batch_size"] * state["world_size"]
            sampler.skip = images // comm.get_world_size()
            logger.warning(
                "The checkpoint's data stream was (sampler, processes, images per process, "
                "aspect-ratio grouping) = %s, this run's is %s: each process skips %d images "
                "of its new stream; the exact image order of the run is not kept",
                layout,
                here,
                sampler.skip,
            )
            return
        if not self.grouping:
            sampler.skip = batches * self.batch_size
        elif self.is_wide is not None:
            sampler.skip, sampler.carry = grouped_stream_position(
                iter(sampler.sampler), self.is_wide, self.batch_size, batches
            )
        else:
            sampler.skip = batches * self.batch_size
            logger.warning(
                "Some dataset dicts have no width/height: with aspect-ratio grouping, the "
                "images that were waiting in the grouping buckets are skipped on resume"
            )
        logger.info(
            "Data order: continuing after %d batches of %d images on this rank (%d stream "
            "indices skipped, %d re-queued from the aspect-ratio buckets)",
            batches,
            self.batch_size,
            sampler.skip,
            len(sampler.carry),
        )
