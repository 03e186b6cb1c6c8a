"""Subset manifests: which images a run used, with their statistics, as a reusable JSON file.

A manifest (``OUTPUT_DIR/subset_manifest.json``) looks like::

    {"format": "rethink_d2.subset_manifest/1",
     "subsets": {"coco_2017_train@10k": {"level": "dataset", "base": "coco_2017_train",
                                         "size": "10k", "seed": 0, "image_ids": [...],
                                         "stats": {"images": 10000, "instances": ..., ...}, ...}}}

``image_ids`` are in selection order: for a seed-drawn subset the first ``k`` ids are the
``k``-image subset of the same seed. ``RETHINK.DATA.SUBSET_MANIFEST`` points to such a file to
train on exactly the same images again.
"""

import json
import os
from collections import Counter

from ..utils.errors import DatasetError
from ..utils.files import atomic_write

MANIFEST_NAME = "subset_manifest.json"
MANIFEST_FORMAT = "rethink_d2.subset_manifest/1"
MANIFEST_KEY = "RETHINK.DATA.SUBSET_MANIFEST"


def subset_stats(num_images, instances, class_names):
    """
    Statistics of a subset.

    Args:
        num_images (int): number of images.
        instances (iterable[tuple[str, bool]]): (category name, is crowd) of every annotation.
        class_names (list[str]): all categories of the dataset, in order.

    Returns:
        dict: ``images``, ``instances`` (non-crowd), ``crowd_instances``, ``categories``,
        ``per_category`` (non-crowd instances per category, in category order) and
        ``zero_instance_categories`` (categories with no non-crowd instance).
    """
    counts, crowd = Counter(), 0
    for name, is_crowd in instances:
        if is_crowd:
            crowd += 1
        else:
            counts[name] += 1
    names = list(class_names) + sorted(set(counts) - set(class_names), key=str)
    return {
        "images": int(num_images),
        "instances": int(sum(counts.values())),
        "crowd_instances": crowd,
        "categories": len(names),
        "per_category": {name: counts[name] for name in names},
        "zero_instance_categories": [name for name in names if counts[name] == 0],
    }


def dicts_stats(dataset_dicts, class_names=None):
    """
    Statistics (see :func:`subset_stats`) of Detectron2 dataset dicts.

    Args:
        dataset_dicts (list[dict]): with contiguous ``category_id`` in their annotations.
        class_names (list[str] or None): the metadata's ``thing_classes``.

    Returns:
        dict
    """
    class_names = list(class_names or [])

    def name(category_id):
        if 0 <= category_id < len(class_names):
            return class_names[category_id]
        return str(category_id)

    instances = (
        (name(ann["category_id"]), ann.get("iscrowd", 0) != 0)
        for record in dataset_dicts
        for ann in record.get("annotations", ())
        if "category_id" in ann
    )
    return subset_stats(len(dataset_dicts), instances, class_names)


def make_entry(level, base, size, seed, selection, image_ids, num_eligible, num_base, stats):
    """
    One manifest entry.

    Args:
        level (str): ``"dataset"`` (a ``<base>@<size>`` name) or ``"sampler"``.
        base (str): the dataset(s) the subset is drawn from.
        size (str): the size as written (``"10k"``).
        seed (int or None): subset seed (``None`` when the ids came from a manifest).
        selection (str): ``"keyed-hash"`` or ``"manifest:<path>"``.
        image_ids (list): selected image ids, in selection order.
        num_eligible (int): eligible images of the base (at least one non-crowd annotation).
        num_base (int): all images of the base.
        stats (dict): see :func:`subset_stats`.

    Returns:
        dict
    """
    return {
        "level": level,
        "base": base,
        "size": size,
        "seed": seed,
        "selection": selection,
        "eligible_images": int(num_eligible),
        "base_images": int(num_base),
        "image_ids": list(image_ids),
        "stats": stats,
    }


def read_manifest(path, key=MANIFEST_KEY):
    """
    Read and validate a manifest.

    Args:
        path (str): the manifest file.
        key (str): the config key that named it, for error messages.

    Returns:
        dict: the manifest.

    Raises:
        DatasetError: missing file, not JSON, or not a rethink-d2 subset manifest.
    """
    if not os.path.isfile(path):
        raise DatasetError(
            f"{key} '{path}' does not exist; point it to the {MANIFEST_NAME} of an earlier run "
            "(written to its OUTPUT_DIR) or set it to ''"
        )
    try:
        with open(path) as f:
            manifest = json.load(f)
    except (OSError, ValueError) as e:
        raise DatasetError(f"{key} '{path}' is not readable JSON ({e}); regenerate it") from e
    if not (
        isinstance(manifest, dict)
        and manifest.get("format") == MANIFEST_FORMAT
        and isinstance(manifest.get("subsets"), dict)
    ):
        raise DatasetError(
            f"{key} '{path}' is not a rethink-d2 subset manifest (expected \"format\": "
            f'"{MANIFEST_FORMAT}" and a "subsets" object)'
        )
    for name, entry in manifest["subsets"].items():
        if not isinstance(entry, dict) or not entry.get("image_ids"):
            raise DatasetError(f"{key} '{path}': entry '{name}' has no \"image_ids\"")
    return manifest


def find_entry(manifest, name, base, level, path, key=MANIFEST_KEY):
    """
    The manifest entry for a subset: the one named ``name``, else the only one drawn from
    ``base`` at the same level.

    Args:
        manifest (dict): from :func:`read_manifest`.
        name (str): subset dataset name (or sampler name).
        base (str): its base dataset(s).
        level (str): ``"dataset"`` or ``"sampler"``.
        path (str): the manifest file, for error messages.
        key (str): the config key that named it, for error messages.

    Returns:
        dict: the entry.

    Raises:
        DatasetError: no (unique) entry matches.
    """
    subsets = manifest["subsets"]
    if name in subsets and subsets[name].get("level", "dataset") == level:
        return subsets[name]
    same_base = [
        e for e in subsets.values() if e.get("base") == base and e.get("level", "dataset") == level
    ]
    if len(same_base) == 1:
        return same_base[0]
    raise DatasetError(
        f"{key} '{path}' has no {level}-level subset for '{name}' (base '{base}'); it has "
        f"{sorted(subsets)}. Use the manifest of a run on the same subset, or set {key} ''"
    )


def _identity(manifest):
    return {
        name: (e.get("level"), e.get("base"), list(e.get("image_ids", [])))
        for name, e in manifest.get("subsets", {}).items()
    }


def write_manifest(path, entries):
    """
    Write a manifest, leaving an existing one with the same subsets untouched.

    Args:
        path (str): the file to write (normally ``OUTPUT_DIR/subset_manifest.json``).
        entries (dict[str, dict]): name -> entry (see :func:`make_entry`).

    Returns:
        bool: True if the file was written, False if an identical one was already there.

    Raises:
        DatasetError: the file exists and records different subsets (e.g. a resumed run whose
        config now names other images).
    """
    manifest = {"format": MANIFEST_FORMAT, "subsets": entries}
    if os.path.exists(path):
        try:
            with open(path) as f:
                existing = json.load(f)
        except (OSError, ValueError):
            existing = {}
        if _identity(existing) == _identity(json.loads(json.dumps(manifest))):
            return False
        raise DatasetError(
            f"{path} records a different subset than this config ({sorted(entries)}); "
            f"use a new OUTPUT_DIR, delete the file, or set {MANIFEST_KEY} to it to train on "
            "its images"
        )
    # indented, but each id list on one line (a 35k-image subset stays readable)
    placeholders = {f"@ids{i}@": e["image_ids"] for i, e in enumerate(entries.values())}
    shown = {
        name: dict(entry, image_ids=key)
        for (name, entry), key in zip(entries.items(), placeholders)
    }
    text = json.dumps({"format": MANIFEST_FORMAT, "subsets": shown}, indent=1)
    for key, image_ids in placeholders.items():
        text = text.replace(json.dumps(key), json.dumps(image_ids), 1)
    atomic_write(path, lambda f: f.write(text + "\n"), binary=False)
    return True
