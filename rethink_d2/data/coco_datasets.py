"""Your own COCO-format data, named in the config: ``RETHINK.DATASETS.COCO_INSTANCES``.

Each entry is ``[NAME, JSON, IMAGE_ROOT]`` (``tools/train_net.py --dataset NAME JSON IMAGE_ROOT``
writes it). :func:`register_coco_datasets`, called by ``rethink_d2.resolve_config``, checks the
files and registers each entry with Detectron2's ``register_coco_instances``, so a run's dumped
``config.yaml`` re-registers its data for ``--eval-only``, ``--resume`` and ``tools/predict.py``.
Subset names (``NAME@0.5``, ``NAME@200``) work on these datasets like on COCO's.
"""

import json
import os

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances

from ..utils.errors import DatasetError
from .subset_spec import is_subset_name, parse_subset_name

__all__ = ["CocoCategories", "read_coco_categories", "register_coco_datasets"]

# Missing images named in an error message.
_SHOWN_MISSING = 3
# (json path, mtime, size, image root) -> CocoCategories: each file is read and checked once.
_CHECKED = {}


class CocoCategories:
    """
    The categories of a COCO instances json, as Detectron2 orders them.

    Attributes:
        thing_classes (list[str]): names sorted by category id (``load_coco_json``'s order).
        keypoint_names (list[str]): the first category's keypoint names ([] without keypoints).
    """

    def __init__(self, thing_classes, keypoint_names):
        self.thing_classes = thing_classes
        self.keypoint_names = keypoint_names


def read_coco_categories(name, json_file, image_root):
    """
    Check a COCO instances dataset on disk and return its categories.

    Args:
        name (str): the dataset name (for messages).
        json_file (str): path of the COCO instances json.
        image_root (str): folder that holds the images the json names.

    Returns:
        CocoCategories

    Raises:
        DatasetError: a missing json or image folder, a json that is not COCO instances, or
            images the json names but the folder lacks (with a count and the first few names).
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
    if key not in _CHECKED:
        _CHECKED[key] = _check_files(where, json_file, image_root)
    return _CHECKED[key]


def _check_files(where, json_file, image_root):
    try:
        with open(json_file) as f:
            data = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DatasetError(f"{where}: {json_file!r} is not valid JSON ({e})") from None
    fields = ("images", "annotations", "categories")
    if not isinstance(data, dict) or any(not isinstance(data.get(k), list) for k in fields):
        raise DatasetError(
            f"{where}: {json_file!r} is not a COCO instances file (it needs the lists "
            f"'images', 'annotations' and 'categories')"
        )
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
            f"not in {image_root!r} (first: {', '.join(missing[:_SHOWN_MISSING])}): fix "
            f"IMAGE_ROOT or the json's file_name entries"
        )
    categories = sorted(data["categories"], key=lambda c: c["id"])
    return CocoCategories(
        thing_classes=[c["name"] for c in categories],
        keypoint_names=list(categories[0].get("keypoints") or []),
    )


def _keypoint_flip_map(keypoint_names):
    """Pairs ("left_x", "right_x"), as COCO names them, for horizontal-flip augmentation."""
    pairs = []
    for kp in keypoint_names:
        if kp.startswith("left_") and "right_" + kp[len("left_") :] in keypoint_names:
            pairs.append((kp, "right_" + kp[len("left_") :]))
    return pairs


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
    if categories.keypoint_names:
        metadata["keypoint_names"] = categories.keypoint_names
        metadata["keypoint_flip_map"] = _keypoint_flip_map(categories.keypoint_names)
    register_coco_instances(name, metadata, json_file, image_root)


def _entries(cfg):
    entries = []
    for entry in cfg.RETHINK.DATASETS.COCO_INSTANCES:
        if not isinstance(entry, (list, tuple)) or len(entry) != 3:
            raise DatasetError(
                f"RETHINK.DATASETS.COCO_INSTANCES entry {entry!r} must be [NAME, JSON, IMAGE_ROOT]"
            )
        entries.append(tuple(str(x) for x in entry))
    return entries


def _base_name(name):
    return parse_subset_name(name).base if is_subset_name(name) else name


def register_coco_datasets(cfg):
    """
    Register every ``RETHINK.DATASETS.COCO_INSTANCES`` entry and fit the heads to its categories.

    ``MODEL.ROI_HEADS.NUM_CLASSES`` (and, with keypoints, ``MODEL.ROI_KEYPOINT_HEAD.NUM_KEYPOINTS``)
    is set from the json of the training datasets among the entries.

    Args:
        cfg (CfgNode): an unfrozen config with the ``RETHINK`` node; modified in place.

    Returns:
        CfgNode: the same ``cfg``.

    Raises:
        DatasetError: bad files (see :func:`read_coco_categories`), a name already registered
            with other data, or training datasets whose categories differ.
    """
    by_name = {}
    for name, json_file, image_root in _entries(cfg):
        categories = read_coco_categories(name, json_file, image_root)
        _register(name, json_file, image_root, categories)
        by_name[name] = categories
    trained = [(n, by_name[_base_name(n)]) for n in cfg.DATASETS.TRAIN if _base_name(n) in by_name]
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
