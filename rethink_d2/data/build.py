"""The train loader: Detectron2's, with a registry sampler, a subset manifest, and a position.

A run stopped and resumed consumes, on every rank, the same images in the same order as a run
that never stopped: the sampler streams are deterministic in their seed, so a position in them is
a number of indices to skip plus, with aspect-ratio grouping, the indices that sat in the
grouping buckets (:class:`ResumableSampler`, :func:`grouped_stream_position`); the loader counts
the batches the trainer consumed and checkpoints that count (:class:`TrainLoaderPosition`).
"""

import contextlib
import itertools
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
from torch.utils.data import Sampler

from .augmentation import build_train_mapper
from .samplers import build_train_sampler, order_seed
from .subsets import register_subset_datasets, write_run_manifest

logger = logging.getLogger(__name__)


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
        dataset=(
            ToIterableDataset(DatasetFromList(dataset, copy=False), sampler)
            if grouping
            else dataset
        ),
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
    The train loader, made resumable: it yields the loader's batches unchanged, counts them where
    the trainer consumes them (not where loader workers prefetch), and checkpoints that count
    with the order seed. On resume, without aspect-ratio grouping, batch ``N`` holds stream
    items ``N*B ... N*B+B-1`` (B: images per batch of this rank), so the sampler skips ``N*B``
    indices; with grouping, the images waiting in the buckets are computed from the stream
    (:func:`grouped_stream_position`) and yielded first, which refills the buckets exactly.
    Augmentations are not part of the position: loader workers draw them afresh.

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


class ResumableSampler(Sampler):
    """
    A rank's training stream that can continue where an earlier run of it stopped: it yields
    ``carry``, then ``stream[skip:]`` of ``factory(seed)``.

    Args:
        factory (callable): ``factory(seed) -> Sampler``, the stream of an order seed.
        seed (int): the order seed of this run.
        sampler (Sampler or None): the stream; default ``factory(seed)``.
    """

    def __init__(self, factory, seed, sampler=None):
        self._factory = factory
        self.seed = seed
        self.sampler = factory(seed) if sampler is None else sampler
        self.skip = 0
        self.carry = []

    @property
    def record(self):
        """dict or None: the manifest entry of a subset sampler."""
        return getattr(self.sampler, "record", None)

    def reseed(self, seed):
        """Rebuild the stream for the order seed of the run to continue; False if it cannot."""
        if seed == self.seed:
            return True
        if self._factory is None or seed is None:
            return False
        self.sampler, self.seed = self._factory(seed), seed
        return True

    def __getstate__(self):
        # Loader workers (spawned: pickled) only iterate; the factory may be a closure.
        return {**self.__dict__, "_factory": None}

    def __iter__(self):
        # Runs in every loader worker (each shards the stream): skipping is cheap index work.
        yield from self.carry
        yield from itertools.islice(iter(self.sampler), self.skip, None)


def build_resumable_sampler(cfg, dataset):
    """
    :func:`build_train_sampler` as a :class:`ResumableSampler` with a concrete order seed.

    With ``SEED < 0`` the seed is drawn once and shared by all ranks (a collective: every rank
    must call this), so that a checkpoint can store it.

    Returns:
        ResumableSampler or None: None for the samplers Detectron2's loader builds from cfg.
    """
    seed = order_seed(cfg)
    if seed is None:
        seed = int(comm.shared_random_seed())

    def sampler_of_seed(seed):
        seeded = cfg.clone()
        seeded.defrost()
        seeded.SEED = seed
        return build_train_sampler(seeded, dataset)

    sampler = sampler_of_seed(seed)
    if sampler is None:
        return None
    logger.info(f"Using training sampler {cfg.DATALOADER.SAMPLER_TRAIN} (order seed {seed})")
    return ResumableSampler(sampler_of_seed, seed, sampler)


def grouped_stream_position(stream, is_wide, batch_size, num_batches):
    """
    Where a stream stands after Detectron2's ``AspectRatioGroupedDataset`` made ``num_batches``
    batches of it (pure; mirrors its two buckets, width > height and the rest). The grouping
    pulls indices in stream order and emits a bucket as soon as it holds ``batch_size`` items.

    Returns:
        tuple[int, list[int]]: how many indices were pulled from ``stream``, and the indices
        still in the buckets, in the order they were pulled.
    """
    buckets = ([], [])
    pulled = made = 0
    if num_batches <= 0:
        return 0, []
    for index in stream:
        bucket = buckets[0 if is_wide[index] else 1]
        bucket.append((pulled, index))
        pulled += 1
        if len(bucket) == batch_size:
            del bucket[:]
            made += 1
            if made == num_batches:
                break
    return pulled, [index for _, index in sorted(buckets[0] + buckets[1])]
