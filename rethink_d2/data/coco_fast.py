"""The fast path of COCO-json subsets: select at the json level, cache a small COCO json.

Loading ``coco_2017_train`` parses a 450 MB json into ~860k annotation dicts. A subset is
therefore written once as its own COCO json (all categories, the selected images and their
annotations) and later runs read only that file with ``load_coco_json``. An entry is rebuilt when
the source json changes (path, size, mtime); it is written atomically under a file lock, so
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

logger = logging.getLogger(__name__)

CACHE_VERSION = 1
CACHE_ENV = "RETHINK_D2_CACHE"


def default_cache_dir(configured=""):
    """
    The subset cache: ``configured`` (``RETHINK.DATA.SUBSET_CACHE_DIR``), else
    ``$RETHINK_D2_CACHE/subsets``, else ``<cache root>/subsets`` (``utils.files.cache_root``).
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
    """The DatasetError for an annotation file that does not exist."""
    return DatasetError(
        f"annotation file '{json_file}' of {dataset} does not exist; put it there "
        "(Detectron2's built-in COCO names look under $DETECTRON2_DATASETS, default "
        "./datasets) or register the dataset with the right json_file"
    )


def read_coco_json(json_file, dataset="the dataset"):
    """Read a COCO json (``dataset`` names it in the one-line error when it is unusable)."""
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
    if not isinstance(coco, dict) or any(not isinstance(coco.get(k), list) for k in keys):
        raise DatasetError(
            f"annotation file '{json_file}' of {dataset} is not a COCO instances file (it needs "
            "the lists 'images', 'annotations' and 'categories')"
        )
    return coco


def coco_eligible_ids(coco):
    """
    Ids of the images eligible for a subset, in json order: the rule of
    ``subsets.has_usable_annotation`` applied to what ``load_coco_json`` would return (a
    non-crowd annotation whose polygon list, if any, keeps one valid polygon).
    """

    def usable(ann):
        if ann.get("iscrowd", 0) != 0:
            return False
        segm = ann.get("segmentation")
        if segm and isinstance(segm, list):
            return any(len(poly) % 2 == 0 and len(poly) >= 6 for poly in segm)
        return True

    with_usable = {ann["image_id"] for ann in coco["annotations"] if usable(ann)}
    return [img["id"] for img in coco["images"] if img["id"] in with_usable]


def coco_subset(coco, image_ids, info=None):
    """
    ``coco`` restricted to ``image_ids``, with extra "info" fields. All categories are kept, so
    category ids and Detectron2's contiguous ids stay those of the full dataset.
    """
    keep = set(image_ids)
    return {
        "info": dict(coco.get("info") or {}, **(info or {})),
        "licenses": coco.get("licenses", []),
        "images": [img for img in coco["images"] if img["id"] in keep],
        "annotations": [ann for ann in coco["annotations"] if ann["image_id"] in keep],
        "categories": coco["categories"],
    }


def write_json_atomic(obj, path, **dump_kwargs):
    """Write ``json.dumps(obj, **dump_kwargs)`` with ``utils.files.atomic_write``."""
    text = json.dumps(obj, **dump_kwargs)  # json.dump(obj, f) would use the slow Python encoder
    atomic_write(path, lambda f: f.write(text), binary=False)


def cache_paths(cache_dir, json_file, tag, label):
    """(subset json, its sidecar) of the subset ``tag`` of ``json_file``; ``label`` is readable."""
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
