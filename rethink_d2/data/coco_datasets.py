"""Your own COCO-format data, named in the config: ``RETHINK.DATASETS.COCO_INSTANCES``.

Each entry is ``[NAME, JSON, IMAGE_ROOT]`` (``tools/train_net.py --dataset NAME JSON IMAGE_ROOT``
writes it), so a run's dumped ``config.yaml`` re-registers its data for ``--eval-only``,
``--resume`` and ``tools/predict.py``. Subset names (``NAME@0.5``) work on these datasets too.
"""

import os
from collections import namedtuple

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances

from ..utils.errors import DatasetError
from .coco_fast import read_coco_json
from .subsets import is_subset_name, parse_subset_name

__all__ = ["CocoCategories", "read_coco_categories", "register_coco_datasets"]

# thing_classes: names sorted by category id (load_coco_json's order); keypoint_names: the first
# category's keypoints ([] without)
CocoCategories = namedtuple("CocoCategories", ["thing_classes", "keypoint_names"])

# (json path, mtime, size, image root) -> CocoCategories: each file is read and checked once.
_CHECKED = {}


def read_coco_categories(name, json_file, image_root):
    """
    Check a COCO instances dataset on disk and return its :class:`CocoCategories`.

    Raises:
        DatasetError: a missing json or image folder, a json that is not COCO instances, or
            images the json names but the folder lacks.
    """
    where = f"dataset {name!r}"
    if not os.path.isfile(json_file):
        raise DatasetError(
            f"{where}: annotation file {json_file!r} does not exist (check the path)"
        )
    if not os.path.isdir(image_root):
        raise DatasetError(f"{where}: image folder {image_root!r} does not exist (check the path)")
    stat = os.stat(json_file)
    key = (os.path.abspath(json_file), stat.st_mtime_ns, stat.st_size, os.path.abspath(image_root))
    if key in _CHECKED:
        return _CHECKED[key]
    data = read_coco_json(json_file, where)
    if not data["categories"] or any("id" not in c or "name" not in c for c in data["categories"]):
        raise DatasetError(
            f"{where}: {json_file!r} has no categories, or one without 'id' and 'name'"
        )
    names = [image.get("file_name") for image in data["images"]]
    if not names or None in names:
        raise DatasetError(
            f"{where}: {json_file!r} lists no images, or an image without 'file_name'"
        )
    missing = [n for n in names if not os.path.isfile(os.path.join(image_root, n))]
    if missing:
        raise DatasetError(
            f"{where}: {len(missing)} of the {len(names)} images named in {json_file!r} are "
            f"not in {image_root!r} (first: {', '.join(missing[:3])}): fix "
            f"IMAGE_ROOT or the json's file_name entries"
        )
    categories = sorted(data["categories"], key=lambda c: c["id"])
    _CHECKED[key] = CocoCategories(
        [c["name"] for c in categories], list(categories[0].get("keypoints") or [])
    )
    return _CHECKED[key]


def _register(name, json_file, image_root, categories):
    if name in DatasetCatalog.list():
        meta = MetadataCatalog.get(name)
        if (meta.get("json_file"), meta.get("image_root")) == (json_file, image_root):
            return
        raise DatasetError(
            f"dataset name {name!r} is already registered with other data: choose another NAME "
            f"for {json_file!r}"
        )
    metadata = {"thing_classes": categories.thing_classes}
    keypoints = categories.keypoint_names
    if keypoints:
        metadata["keypoint_names"] = keypoints
        # ("left_x", "right_x") pairs, as COCO names them, for horizontal flips
        metadata["keypoint_flip_map"] = [
            (kp, "right_" + kp[5:])
            for kp in keypoints
            if kp.startswith("left_") and "right_" + kp[5:] in keypoints
        ]
    register_coco_instances(name, metadata, json_file, image_root)


def register_coco_datasets(cfg):
    """
    Register every ``RETHINK.DATASETS.COCO_INSTANCES`` entry (called by
    ``rethink_d2.resolve_config``) and set ``MODEL.ROI_HEADS.NUM_CLASSES`` (and, with keypoints,
    ``MODEL.ROI_KEYPOINT_HEAD.NUM_KEYPOINTS``) from the training datasets among them.

    Args:
        cfg (CfgNode): an unfrozen config; modified in place and returned.

    Raises:
        DatasetError: bad files (see :func:`read_coco_categories`), a name already registered
            with other data, or training datasets whose categories differ.
    """
    entries = cfg.RETHINK.DATASETS.COCO_INSTANCES
    for entry in entries:
        if not isinstance(entry, (list, tuple)) or len(entry) != 3:
            raise DatasetError(
                f"RETHINK.DATASETS.COCO_INSTANCES entry {entry!r} must be [NAME, JSON, IMAGE_ROOT]"
            )
    by_name = {}
    for name, json_file, image_root in ([str(x) for x in entry] for entry in entries):
        by_name[name] = read_coco_categories(name, json_file, image_root)
        _register(name, json_file, image_root, by_name[name])
    trained = []
    for name in cfg.DATASETS.TRAIN:
        base = parse_subset_name(name).base if is_subset_name(name) else name
        if base in by_name:
            trained.append((name, by_name[base]))
    if not trained:
        return cfg
    first_name, first = trained[0]
    for name, categories in trained[1:]:
        if categories.thing_classes != first.thing_classes:
            raise DatasetError(
                f"training datasets {first_name!r} and {name!r} have different categories: "
                f"train on datasets that share one category list"
            )
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = len(first.thing_classes)
    if cfg.MODEL.KEYPOINT_ON and first.keypoint_names:
        cfg.MODEL.ROI_KEYPOINT_HEAD.NUM_KEYPOINTS = len(first.keypoint_names)
    return cfg
