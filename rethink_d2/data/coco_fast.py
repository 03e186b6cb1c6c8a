"""COCO-json subsets: select at the json level and cache the subset as a small COCO json.

Loading ``coco_2017_train`` means parsing a 450 MB json and building ~860k annotation dicts.
A subset of a COCO-json dataset is therefore written once as its own COCO json (all categories,
the selected images and their annotations) under a cache directory; every later run reads only
that small file with Detectron2's ``load_coco_json``. A cache entry is rebuilt when the source
json changes (path, size or modification time) and is written atomically under a file lock, so
concurrent ranks never see half a file.
"""

import contextlib
import gc
import hashlib
import json
import logging
import os

from ..utils.errors import DatasetError
from ..utils.files import atomic_write, cache_root, file_lock
from .manifest import subset_stats
from .subset_spec import coco_annotation_is_usable

logger = logging.getLogger(__name__)

CACHE_VERSION = 1
CACHE_ENV = "RETHINK_D2_CACHE"


def default_cache_dir(configured=""):
    """
    Args:
        configured (str): ``RETHINK.DATA.SUBSET_CACHE_DIR`` ("" for the default).

    Returns:
        str: ``configured``, else ``$RETHINK_D2_CACHE/subsets``, else ``<cache root>/subsets``
        (:func:`rethink_d2.utils.files.cache_root`).
    """
    if configured:
        return os.path.expanduser(configured)
    root = os.path.abspath(os.path.expanduser(os.environ.get(CACHE_ENV) or cache_root()))
    return os.path.join(root, "subsets")


@contextlib.contextmanager
def _gc_paused():
    """Parsing creates millions of acyclic objects; cyclic GC passes over them only cost time."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def missing_json_error(json_file, dataset="the dataset"):
    """
    Args:
        json_file (str): an annotation file that does not exist.
        dataset (str): the dataset it belongs to.

    Returns:
        DatasetError: the message naming the file and how to fix it.
    """
    return DatasetError(
        f"annotation file '{json_file}' of {dataset} does not exist; put it there "
        "(Detectron2's built-in COCO names look under $DETECTRON2_DATASETS, default "
        "./datasets) or register the dataset with the right json_file"
    )


def read_coco_json(json_file, dataset="the dataset"):
    """
    Read a COCO-format annotation file.

    Args:
        json_file (str): path of the file.
        dataset (str): the dataset it belongs to, for error messages.

    Returns:
        dict: with "images", "annotations" and "categories".

    Raises:
        DatasetError: the file is missing, is not JSON, or lacks a COCO key.
    """
    if not os.path.isfile(json_file):
        raise missing_json_error(json_file, dataset)
    try:
        with open(json_file) as f, _gc_paused():
            coco = json.load(f)
    except (OSError, ValueError) as e:
        raise DatasetError(
            f"annotation file '{json_file}' of {dataset} is corrupt ({e}); download or "
            "regenerate it"
        ) from e
    keys = ("images", "annotations", "categories")
    missing = [k for k in keys if k not in coco] if isinstance(coco, dict) else list(keys)
    if missing:
        raise DatasetError(
            f"annotation file '{json_file}' of {dataset} is not in COCO format (missing "
            f"{missing}); use a COCO instances json"
        )
    return coco


def coco_eligible_ids(coco):
    """
    Images eligible for a subset, at the json level (same rule as
    ``subset_spec.has_usable_annotation`` applied to what ``load_coco_json`` returns).

    Args:
        coco (dict): a COCO json.

    Returns:
        list: ids of the images with a usable non-crowd annotation, in json order.
    """
    usable = {ann["image_id"] for ann in coco["annotations"] if coco_annotation_is_usable(ann)}
    return [img["id"] for img in coco["images"] if img["id"] in usable]


def coco_subset(coco, image_ids, info=None):
    """
    A COCO json restricted to some images (all categories are kept, so category ids and
    Detectron2's contiguous ids stay those of the full dataset).

    Args:
        coco (dict): the full COCO json.
        image_ids (iterable): ids of the images to keep.
        info (dict or None): extra fields for the subset's "info".

    Returns:
        dict: a COCO json.
    """
    keep = set(image_ids)
    return {
        "info": dict(coco.get("info") or {}, **(info or {})),
        "licenses": coco.get("licenses", []),
        "images": [img for img in coco["images"] if img["id"] in keep],
        "annotations": [ann for ann in coco["annotations"] if ann["image_id"] in keep],
        "categories": coco["categories"],
    }


def coco_stats(coco):
    """
    Statistics (see ``manifest.subset_stats``) of a COCO json.

    Args:
        coco (dict): a COCO json.

    Returns:
        dict
    """
    names = {cat["id"]: cat["name"] for cat in coco["categories"]}
    instances = (
        (names.get(ann["category_id"], str(ann["category_id"])), ann.get("iscrowd", 0) != 0)
        for ann in coco["annotations"]
    )
    return subset_stats(len(coco["images"]), instances, [names[k] for k in sorted(names)])


def write_json_atomic(obj, path, **dump_kwargs):
    """
    Write JSON so that readers see either the old file or the complete new one.

    Args:
        obj: JSON-serializable object.
        path (str): destination.
        dump_kwargs: passed to ``json.dumps``.
    """
    text = json.dumps(obj, **dump_kwargs)  # json.dump(obj, f) would use the slow Python encoder
    atomic_write(path, lambda f: f.write(text), binary=False)


def cache_paths(cache_dir, json_file, tag, label):
    """
    Where the cached subset of a json lives.

    Args:
        cache_dir (str): the cache directory.
        json_file (str): the source COCO json.
        tag (str): what selects the images (size + seed, or a hash of manifest ids).
        label (str): readable prefix of the file name (the subset's dataset name).

    Returns:
        tuple[str, str]: (subset json, its sidecar with the selected ids and the source's stat).
    """
    digest = hashlib.sha256(f"{os.path.abspath(json_file)}\n{tag}".encode()).hexdigest()[:16]
    stem = "".join(c if c.isalnum() or c in "@._-" else "_" for c in label)
    base = os.path.join(cache_dir, f"{stem}-{digest}")
    return base + ".json", base + ".meta.json"


def _source_stat(json_file):
    st = os.stat(json_file)
    return {"json_file": os.path.abspath(json_file), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _read_meta(meta_path, subset_path, json_file, tag):
    """The sidecar if the cache entry is complete and matches the source file, else None."""
    if not (os.path.isfile(meta_path) and os.path.isfile(subset_path)):
        return None
    try:
        with open(meta_path) as f:
            meta = json.load(f)
    except (OSError, ValueError):
        return None
    expected = {"version": CACHE_VERSION, "tag": tag, "source": _source_stat(json_file)}
    if any(meta.get(k) != v for k, v in expected.items()):
        return None
    return meta


def ensure_cached_subset(json_file, tag, choose, cache_dir, label, dataset="the dataset"):
    """
    Return the cached subset of a COCO json, building it on first use.

    Args:
        json_file (str): the full COCO json.
        tag (str): what selects the images (part of the cache key).
        choose (callable): ``choose(eligible_ids) -> selected ids in selection order``; called
            only when the cache entry is built.
        cache_dir (str): the cache directory.
        label (str): readable prefix of the cache file name.
        dataset (str): the dataset, for error messages.

    Returns:
        dict: the sidecar: ``json`` (path of the subset json), ``image_ids`` (selection order),
        ``eligible_images``, ``base_images``.

    Raises:
        DatasetError: the source json is missing or corrupt, the cache is not writable, or
        ``choose`` refuses.
    """
    if not os.path.isfile(json_file):
        raise missing_json_error(json_file, dataset)
    subset_path, meta_path = cache_paths(cache_dir, json_file, tag, label)
    with contextlib.ExitStack() as locked:
        try:
            os.makedirs(cache_dir, exist_ok=True)
            locked.enter_context(file_lock(subset_path + ".lock"))
        except OSError as e:
            raise DatasetError(
                f"cannot write the subset cache '{cache_dir}' ({e}); set "
                f"RETHINK.DATA.SUBSET_CACHE_DIR or ${CACHE_ENV} to a writable directory"
            ) from e
        meta = _read_meta(meta_path, subset_path, json_file, tag)
        if meta is None:
            logger.info(f"Building the subset cache {subset_path} from {json_file} (once) ...")
            coco = read_coco_json(json_file, dataset)
            eligible = coco_eligible_ids(coco)
            selected = list(choose(eligible))
            meta = {
                "version": CACHE_VERSION,
                "tag": tag,
                "source": _source_stat(json_file),
                "image_ids": selected,
                "eligible_images": len(eligible),
                "base_images": len(coco["images"]),
            }
            subset = coco_subset(coco, selected, {"rethink_d2_subset": tag})
            del coco
            write_json_atomic(subset, subset_path, separators=(",", ":"))
            write_json_atomic(meta, meta_path)
    meta["json"] = subset_path
    return meta
