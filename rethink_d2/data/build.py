"""The train loader of rethink-d2: Detectron2's, with registry samplers and a subset manifest."""

import logging
import os

from detectron2.data import (
    DatasetMapper,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from detectron2.utils import comm

from .manifest import MANIFEST_NAME, write_manifest
from .samplers import SUBSET_SAMPLER, build_train_sampler
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
        mapper (callable or None): dataset mapper; None: ``DatasetMapper(cfg, True)``.

    Returns:
        iterable[list[dict]]: batches, as ``detectron2.data.build_detection_train_loader``.

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
        mapper = DatasetMapper(cfg, True)
    sampler = build_train_sampler(cfg, dataset)
    write_run_manifest(cfg, sampler)
    if sampler is None:  # a sampler that Detectron2's loader builds from cfg itself
        return build_detection_train_loader(cfg, mapper=mapper, dataset=dataset)
    return build_detection_train_loader(
        dataset=dataset,
        mapper=mapper,
        sampler=sampler,
        total_batch_size=cfg.SOLVER.IMS_PER_BATCH,
        aspect_ratio_grouping=cfg.DATALOADER.ASPECT_RATIO_GROUPING,
        num_workers=cfg.DATALOADER.NUM_WORKERS,
    )
