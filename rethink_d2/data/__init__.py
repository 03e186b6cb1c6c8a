"""Datasets (built-in shapes, lazy COCO subsets), training samplers and the train loader."""

# built-in demo dataset: registers rethink_shapes_train / rethink_shapes_val
from . import shapes  # noqa: F401

# your own COCO-format data: RETHINK.DATASETS.COCO_INSTANCES (tools/train_net.py --dataset)
from .coco_datasets import read_coco_categories, register_coco_datasets

# subsets: "<dataset>@<size>" names, manifests
from .subsets import (
    get_subset_record,
    parse_subset_name,
    register_subset,
    register_subset_datasets,
)

# samplers: a registry instead of Detectron2's if/elif
from .samplers import SAMPLER_REGISTRY, SubsetTrainingSampler, build_train_sampler

# the train loader used by rethink_d2.engine.Trainer
from .build import build_train_loader

__all__ = [
    "read_coco_categories",
    "register_coco_datasets",
    "parse_subset_name",
    "get_subset_record",
    "register_subset",
    "register_subset_datasets",
    "SAMPLER_REGISTRY",
    "SubsetTrainingSampler",
    "build_train_sampler",
    "build_train_loader",
]
