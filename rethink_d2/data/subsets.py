"""``<dataset>@<size>`` dataset names: lazily loaded, deterministic, nested subsets of any dataset.

``register_subset_datasets(cfg)`` (called by ``rethink_d2.resolve_config``) registers every such
name in ``DATASETS.TRAIN`` / ``DATASETS.TEST`` with Detectron2's ``DatasetCatalog``; nothing is
read until ``DatasetCatalog.get`` is called. ``register_subset(name)`` does the same for one name.

* Eligible images: those with at least one non-crowd annotation (exactly what Detectron2's
  ``DATALOADER.FILTER_EMPTY_ANNOTATIONS`` keeps), so ``@10k`` always gives 10,000 training
  images and fractions are of the eligible images. Empty images are never in a subset.
* Selection: ranked by a keyed hash of (subset seed, image id), see ``subset_spec``.
* COCO-json datasets (metadata with ``evaluator_type == "coco"`` and ``json_file``) are subset at
  the json level and cached as a small COCO json (``coco_fast``); any other dataset is loaded with
  ``DatasetCatalog.get(base)`` and filtered.
"""

import difflib
import functools
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from typing import Optional, Tuple

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json

from ..utils.errors import DatasetError
from .coco_fast import default_cache_dir, ensure_cached_subset, missing_json_error
from .manifest import MANIFEST_NAME, dicts_stats, find_entry, make_entry, read_manifest
from .samplers import check_sampler_config
from .subset_spec import (
    check_subset_seed,
    choose_positions,
    has_usable_annotation,
    image_key,
    is_subset_name,
    parse_subset_name,
)

logger = logging.getLogger(__name__)

# name -> _Source of the subsets this module registered (a name registered by the user is theirs)
_OWNED = {}
# name -> manifest entry of the last load of that subset (read by build.py to write the manifest)
_RECORDS = {}


@dataclass(frozen=True)
class _Source:
    """Everything a subset depends on; two registrations with equal sources are the same."""

    base: str
    spec: object
    seed: Optional[int]
    image_ids: Optional[Tuple] = None
    manifest: Optional[str] = None
    cache_dir: str = ""


def get_subset_record(name):
    """
    The manifest entry of a subset dataset, available once it has been loaded.

    Args:
        name (str): a subset dataset name.

    Returns:
        dict or None: see ``manifest.make_entry``; None if ``name`` is not a subset registered by
        rethink-d2 or was not loaded yet in this process.
    """
    return _RECORDS.get(name) if name in _OWNED else None


def _check_base(parsed):
    if parsed.base in DatasetCatalog:
        return
    close = difflib.get_close_matches(parsed.base, DatasetCatalog.keys(), n=3)
    hint = f"; did you mean {close}?" if close else ""
    raise DatasetError(
        f"dataset '{parsed.base}' (in subset name '{parsed.name}') is not registered; register it "
        "before the config is resolved, e.g. detectron2.data.datasets.register_coco_instances("
        f"'{parsed.base}', {{}}, json_file, image_root) or DatasetCatalog.register("
        f"'{parsed.base}', loader){hint}"
    )


def _manifest_ids(parsed, manifest):
    entry = find_entry(read_manifest(manifest), parsed.name, parsed.base, "dataset", manifest)
    ids = tuple(entry["image_ids"])
    if parsed.spec.count is not None and parsed.spec.count != len(ids):
        raise DatasetError(
            f"RETHINK.DATA.SUBSET_MANIFEST '{manifest}' lists {len(ids)} images of "
            f"'{parsed.base}' but '{parsed.name}' asks for {parsed.spec.count}; name the dataset "
            f"'{parsed.base}@{len(ids)}' or use the manifest of a {parsed.spec.text} run"
        )
    return ids


def register_subset(name, seed=0, manifest=None, cache_dir=None):
    """
    Register a ``<base>@<size>[:seed<N>]`` dataset (loaded lazily, on ``DatasetCatalog.get``).

    Args:
        name (str): e.g. ``"coco_2017_train@10k"``; ``<base>`` must be registered already.
        seed (int): subset seed (>= 0) unless the name has ``:seed<N>``.
        manifest (str or None): a subset manifest whose ids define the subset instead of the seed.
        cache_dir (str or None): cache of subset COCO jsons (None: ``default_cache_dir()``).

    Returns:
        str: ``name``.

    Raises:
        DatasetError: bad name or size, unknown base, a manifest that does not match, or a name
        already registered by someone else.
    """
    parsed = parse_subset_name(name)
    _check_base(parsed)
    seed = parsed.seed if parsed.seed is not None else check_subset_seed(seed, "subset seed")
    image_ids = _manifest_ids(parsed, manifest) if manifest else None
    source = _Source(
        base=parsed.base,
        spec=parsed.spec,
        seed=None if image_ids else seed,
        image_ids=image_ids,
        manifest=manifest or None,
        cache_dir=cache_dir or default_cache_dir(),
    )
    if name in DatasetCatalog:
        if _OWNED.get(name) == source:
            return name
        if name not in _OWNED:
            raise DatasetError(
                f"dataset '{name}' is already registered by someone else; remove it with "
                "DatasetCatalog.remove or pick another name"
            )
        logger.info(f"Re-registering subset '{name}' (its seed, manifest or cache changed)")
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
        _RECORDS.pop(name, None)
    DatasetCatalog.register(name, functools.partial(_load_subset, name, source))
    _copy_metadata(source.base, name)
    _OWNED[name] = source
    return name


def register_subset_datasets(cfg):
    """
    Register the subset names of a config and validate the ``RETHINK.DATA`` keys.

    Args:
        cfg (CfgNode): an unfrozen config with the ``RETHINK`` node (it is not modified).

    Returns:
        list[str]: the subset names of ``DATASETS.TRAIN`` and ``DATASETS.TEST`` handled by
        rethink-d2 (names the user registered directly are left alone).

    Raises:
        ConfigError / DatasetError: one line naming the key or dataset name to fix.
    """
    data = cfg.RETHINK.DATA
    seed = check_subset_seed(data.SUBSET_SEED)
    manifest = data.SUBSET_MANIFEST or None
    cache_dir = default_cache_dir(data.SUBSET_CACHE_DIR)
    train = [n for n in cfg.DATASETS.TRAIN if is_subset_name(n)]
    check_sampler_config(cfg)
    if manifest:
        read_manifest(manifest)
    names = []
    for name in list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST):
        if not is_subset_name(name) or name in names:
            continue
        if name in DatasetCatalog and name not in _OWNED:
            continue
        register_subset(
            name, seed=seed, manifest=manifest if name in train else None, cache_dir=cache_dir
        )
        names.append(name)
    return names


def _copy_metadata(base, name):
    """Give the subset its base's metadata, except what describes the full dataset's file."""
    values = MetadataCatalog.get(base).as_dict()
    meta = MetadataCatalog.get(name)
    for key, value in values.items():
        if key not in ("name", "json_file") and meta.get(key) is None:
            meta.set(**{key: value})


def _is_coco_json(base):
    """Whether the fast path applies (a loader may write its json on first use: then not yet)."""
    meta = MetadataCatalog.get(base)
    json_file = meta.get("json_file")
    return meta.get("evaluator_type") == "coco" and bool(json_file) and os.path.isfile(json_file)


def _ids_tag(image_ids):
    return "ids:" + hashlib.sha256(json.dumps(list(image_ids)).encode()).hexdigest()[:16]


def _choose(name, source, keys):
    """Positions (selection order) of the subset among eligible ``keys``: by seed or manifest."""
    return choose_positions(
        keys,
        source.spec,
        seed=source.seed,
        image_ids=source.image_ids,
        what=f"'{name}'",
        manifest=source.manifest,
    )


def _load_fast(name, source):
    meta = MetadataCatalog.get(source.base)
    tag = (
        f"{source.spec.canonical}:seed{source.seed}"
        if source.image_ids is None
        else _ids_tag(source.image_ids)
    )
    cached = ensure_cached_subset(
        meta.json_file,
        tag,
        lambda keys: [keys[p] for p in _choose(name, source, keys)],
        source.cache_dir,
        label=name,
        dataset=f"'{source.base}'",
    )
    dicts = load_coco_json(cached["json"], meta.image_root, name)
    subset_meta = MetadataCatalog.get(name)
    if subset_meta.get("json_file") is None:  # COCOEvaluator may have set its own already
        subset_meta.json_file = cached["json"]
    return dicts, cached["image_ids"], cached["eligible_images"], cached["base_images"]


def _load_generic(name, source):
    try:
        base_dicts = DatasetCatalog.get(source.base)
    except (OSError, json.JSONDecodeError) as e:
        json_file = MetadataCatalog.get(source.base).get("json_file")
        if json_file and not os.path.isfile(json_file):
            raise missing_json_error(json_file, f"'{source.base}'") from e
        raise DatasetError(f"loading '{source.base}' for '{name}' failed: {e}") from e
    if not isinstance(base_dicts, list):
        raise DatasetError(
            f"dataset '{source.base}' returns a {type(base_dicts).__name__}, not a list of dataset "
            f"dicts, so '{name}' cannot be drawn from it; register a loader that returns a list"
        )
    eligible = [d for d in base_dicts if has_usable_annotation(d)]
    keys = [image_key(d) for d in eligible]
    positions = _choose(name, source, keys)
    dicts = [eligible[p] for p in sorted(positions)]
    _copy_metadata(source.base, name)  # the base's loader may have set thing_classes just now
    return dicts, [keys[p] for p in positions], len(eligible), len(base_dicts)


def _load_subset(name, source):
    """The loader registered in DatasetCatalog for a subset name."""
    load = _load_fast if _is_coco_json(source.base) else _load_generic
    dicts, image_ids, num_eligible, num_base = load(name, source)
    stats = dicts_stats(dicts, MetadataCatalog.get(name).get("thing_classes"))
    selection = f"manifest:{source.manifest}" if source.image_ids is not None else "keyed-hash"
    _RECORDS[name] = make_entry(
        "dataset",
        source.base,
        source.spec.text,
        source.seed,
        selection,
        image_ids,
        num_eligible,
        num_base,
        stats,
    )
    logger.info(
        f"Subset '{name}': {len(dicts)} of {num_eligible} eligible images of '{source.base}' "
        f"({stats['instances']} instances, selection {selection}, seed {source.seed}); the ids "
        f"go to OUTPUT_DIR/{MANIFEST_NAME}"
    )
    return dicts
