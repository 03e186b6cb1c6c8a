"""``<dataset>@<size>[:seed<N>]`` datasets: deterministic, nested subsets of any dataset.

One path, top to bottom (rules in docs/subsets.md):

1. name: :func:`parse_subset_name` reads ``coco_2017_train@10k``, ``@0.1``, ``@10%``, ``:seed1``;
2. select: :func:`choose_positions` ranks the eligible images (at least one non-crowd annotation,
   what ``DATALOADER.FILTER_EMPTY_ANNOTATIONS`` keeps) by a keyed hash of (seed, image id) and
   keeps the first ``n``: a smaller subset of one seed is a prefix of a larger one;
3. register: :func:`register_subset` adds a lazy ``DatasetCatalog`` entry; COCO-json bases are
   subset at the json level and cached (``coco_fast``), others are filtered after
   ``DatasetCatalog.get``;
4. manifest: :func:`write_run_manifest` writes the selected ids to
   ``OUTPUT_DIR/subset_manifest.json``; ``RETHINK.DATA.SUBSET_MANIFEST`` trains on them again.
"""

import difflib
import functools
import hashlib
import json
import logging
import math
import os
import re
from collections import Counter
from dataclasses import dataclass
from fractions import Fraction
from typing import Optional, Tuple

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json
from detectron2.utils import comm

from ..utils.errors import DatasetError
from ..utils.files import atomic_write
from .coco_fast import default_cache_dir, ensure_cached_subset, missing_json_error

logger = logging.getLogger(__name__)

# --- 1. names --------------------------------------------------------------------------------

GRAMMAR = (
    "a size is a count (1000, 1k, 3.5k) or a fraction of the eligible images (0.1, 10%), as in "
    "'coco_2017_train@10k' or 'coco_2017_train@0.1:seed1' (see docs/subsets.md)"
)
_COUNT = re.compile(r"^[0-9]+$")
_KILO = re.compile(r"^([0-9]+(?:\.[0-9]*)?|\.[0-9]+)[kK]$")
_DECIMAL = re.compile(r"^([0-9]+\.[0-9]*|\.[0-9]+)$")
_PERCENT = re.compile(r"^([0-9]+(?:\.[0-9]*)?|\.[0-9]+)%$")
_SEED = re.compile(r"^(.*):seed([0-9]+)$")


@dataclass(frozen=True)
class SubsetSpec:
    """A subset size as written (``text``): an image ``count`` or a ``fraction`` in (0, 1]."""

    text: str
    count: Optional[int] = None
    fraction: Optional[Fraction] = None

    @property
    def canonical(self):
        """str: a spelling-independent key (``"3.5k"`` and ``"3500"`` give ``"n3500"``)."""
        return f"n{self.count}" if self.count is not None else f"f{self.fraction}"

    def resolve(self, num_eligible, what="the dataset"):
        """
        Returns:
            int: the number of images among ``num_eligible`` (a fraction rounds down, exactly).
        """
        if self.count is not None:
            if self.count > num_eligible:
                raise DatasetError(
                    f"{what} asks for {self.count} images but only {num_eligible} images are "
                    "eligible (at least one non-crowd annotation); use a smaller size, or '@1.0' "
                    "for all of them"
                )
            return self.count
        count = math.floor(self.fraction * num_eligible)
        if count < 1:
            raise DatasetError(
                f"{what} selects 0 of {num_eligible} eligible images; use a larger fraction or a "
                "count such as '@100'"
            )
        return count


@dataclass(frozen=True)
class SubsetName:
    """A parsed ``<base>@<size>[:seed<N>]`` name (``seed`` None: the config's seed)."""

    name: str
    base: str
    spec: SubsetSpec
    seed: Optional[int] = None


def is_subset_name(name):
    """Whether ``name`` has the ``<base>@<size>`` shape (it may still be invalid)."""
    return isinstance(name, str) and "@" in name


def parse_subset_spec(text, where="RETHINK.DATA.SAMPLER_SUBSET"):
    """
    Parse a subset size such as ``"10k"``, ``"1000"``, ``"0.1"`` or ``"10%"``.

    Args:
        text (str): the size.
        where (str): the key or name that holds it, for the error message.

    Returns:
        SubsetSpec
    """
    text = str(text)

    def bad(why):
        return DatasetError(f"bad subset size '{text}' in {where}: {why}; {GRAMMAR}")

    if text.startswith("-"):
        raise bad("sizes must be positive")
    count = None
    if _COUNT.match(text):
        count = Fraction(text)
    elif _KILO.match(text):
        count = Fraction(_KILO.match(text).group(1)) * 1000
        if count.denominator != 1:
            raise bad(f"{text} is {float(count)} images, not a whole number")
    if count is not None:
        if count < 1:
            raise bad("a count must be at least 1 image")
        return SubsetSpec(text=text, count=int(count))

    if _DECIMAL.match(text):
        fraction = Fraction(text)
    elif _PERCENT.match(text):
        fraction = Fraction(_PERCENT.match(text).group(1)) / 100
    else:
        raise bad("not a count or a fraction")
    if not 0 < fraction <= 1:
        raise bad("a fraction must be in (0, 1] (a count has no decimal point, e.g. '10k')")
    return SubsetSpec(text=text, fraction=fraction)


def parse_subset_name(name):
    """
    Parse ``<base>@<size>[:seed<N>]`` (the base may itself contain ``@``: the last one splits).

    Returns:
        SubsetName
    """
    if not is_subset_name(name):
        raise DatasetError(f"'{name}' is not a subset name; {GRAMMAR}")
    base, _, size = name.rpartition("@")
    if not base:
        raise DatasetError(f"subset name '{name}' names no dataset before '@'; {GRAMMAR}")
    seed = None
    match = _SEED.match(size)
    if match:
        size, seed = match.group(1), int(match.group(2))
    spec = parse_subset_spec(size, where=f"dataset name '{name}'")
    return SubsetName(name=name, base=base, spec=spec, seed=seed)


def check_subset_seed(seed, key="RETHINK.DATA.SUBSET_SEED"):
    """Return ``seed`` if it is an integer >= 0 (a subset is never random), else raise."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise DatasetError(
            f"{key} must be an integer >= 0 (subsets are never random), got {seed!r}"
        )
    return seed


# --- 2. selection ----------------------------------------------------------------------------


def image_key(record):
    """The stable key of a dataset dict: ``image_id``, else ``file_name``."""
    if "image_id" in record:
        return record["image_id"]
    if "file_name" in record:
        return record["file_name"]
    raise DatasetError(
        "a dataset dict has neither 'image_id' nor 'file_name', so it cannot be put in a subset; "
        f"add 'image_id' to the dicts of the base dataset (keys found: {sorted(record)})"
    )


def has_usable_annotation(record):
    """Whether a dataset dict is eligible: a non-crowd annotation, or no "annotations" key."""
    if "annotations" not in record:
        return True
    return any(ann.get("iscrowd", 0) == 0 for ann in record["annotations"])


def choose_positions(keys, spec, seed=None, image_ids=None, what="the subset", manifest=None):
    """
    The subset draw (or the images a manifest lists) among the eligible images.

    Args:
        keys (list[int or str]): image keys of the eligible images.
        spec (SubsetSpec): subset size.
        seed (int or None): subset seed, used when ``image_ids`` is None.
        image_ids (list or None): ids from a manifest: they define the subset.
        what (str): the subset's name, for error messages.
        manifest (str or None): the manifest file, for error messages.

    Returns:
        list[int]: positions into ``keys``, in selection order (the first ``k`` are the
        ``k``-image subset of the same seed). Ties (equal keys) are broken by position, so the
        order is a pure function of ``keys`` and ``seed``.
    """
    expected = spec.resolve(len(keys), what)
    if image_ids is None:
        hasher = hashlib.blake2b(digest_size=8, key=f"rethink_d2.subset:{seed}".encode())

        def rank(position):
            h = hasher.copy()
            h.update(str(keys[position]).encode())
            return (h.digest(), position)

        return sorted(range(len(keys)), key=rank)[:expected]
    position = {}
    for p, key in enumerate(keys):
        position.setdefault(key, p)
    missing = [i for i in image_ids if i not in position]
    if missing:
        raise DatasetError(
            f"RETHINK.DATA.SUBSET_MANIFEST '{manifest}' lists {len(missing)} image ids that are "
            f"not eligible images of {what} (e.g. {missing[:5]}); it was written for another "
            "dataset or another version of it"
        )
    if expected != len(image_ids):
        raise DatasetError(
            f"RETHINK.DATA.SUBSET_MANIFEST '{manifest}' lists {len(image_ids)} images but {what} "
            f"means {expected}; change the size to {len(image_ids)} or use a matching manifest"
        )
    return [position[i] for i in image_ids]


def select_subset_indices(
    dataset, spec, seed=None, image_ids=None, what="the subset", manifest=None
):
    """
    The draw of :func:`choose_positions` on a list of dataset dicts.

    Returns:
        tuple[list[int], list, int]: indices into ``dataset`` (selection order), their image
        ids, and the number of eligible images.
    """
    eligible = [i for i, record in enumerate(dataset) if has_usable_annotation(record)]
    keys = [image_key(dataset[i]) for i in eligible]
    positions = choose_positions(keys, spec, seed, image_ids, what, manifest)
    return [eligible[p] for p in positions], [keys[p] for p in positions], len(eligible)


# --- 3. registration -------------------------------------------------------------------------

# name -> _Source of the subsets registered here (a name registered by the user is theirs)
_OWNED = {}
# name -> manifest entry of the last load of that subset
_RECORDS = {}


@dataclass(frozen=True)
class _Source:
    """Everything a subset depends on; two registrations with equal sources are the same."""

    base: str
    spec: SubsetSpec
    seed: Optional[int]
    image_ids: Optional[Tuple] = None
    manifest: Optional[str] = None
    cache_dir: str = ""


def get_subset_record(name):
    """
    Returns:
        dict or None: the manifest entry of subset ``name`` (see :func:`make_entry`), once it
        was loaded in this process; None for names rethink-d2 did not register.
    """
    return _RECORDS.get(name) if name in _OWNED else None


def register_subset(name, seed=0, manifest=None, cache_dir=None):
    """
    Register a ``<base>@<size>[:seed<N>]`` dataset, loaded on ``DatasetCatalog.get``.

    Args:
        name (str): e.g. ``"coco_2017_train@10k"``; ``<base>`` must be registered already.
        seed (int): subset seed (>= 0) unless the name has ``:seed<N>``.
        manifest (str or None): a subset manifest whose ids define the subset instead.
        cache_dir (str or None): cache of subset COCO jsons (None: ``default_cache_dir()``).

    Returns:
        str: ``name``.
    """
    parsed = parse_subset_name(name)
    if parsed.base not in DatasetCatalog:
        close = difflib.get_close_matches(parsed.base, DatasetCatalog.keys(), n=3)
        hint = f"; did you mean {close}?" if close else ""
        raise DatasetError(
            f"dataset '{parsed.base}' (in subset name '{name}') is not registered; register it "
            "before the config is resolved, e.g. detectron2.data.datasets.register_coco_instances("
            f"'{parsed.base}', {{}}, json_file, image_root) or DatasetCatalog.register("
            f"'{parsed.base}', loader){hint}"
        )
    seed = parsed.seed if parsed.seed is not None else check_subset_seed(seed, "subset seed")
    image_ids = None
    if manifest:
        entry = find_entry(read_manifest(manifest), name, parsed.base, "dataset", manifest)
        image_ids = tuple(entry["image_ids"])
        if parsed.spec.count is not None and parsed.spec.count != len(image_ids):
            raise DatasetError(
                f"RETHINK.DATA.SUBSET_MANIFEST '{manifest}' lists {len(image_ids)} images of "
                f"'{parsed.base}' but '{name}' asks for {parsed.spec.count}; name the dataset "
                f"'{parsed.base}@{len(image_ids)}' or use the manifest of a {parsed.spec.text} run"
            )
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
    Register the ``<dataset>@<size>`` names of ``DATASETS.TRAIN`` / ``DATASETS.TEST``.

    Args:
        cfg (CfgNode): a config with the ``RETHINK`` node (not modified). The manifest of
            ``RETHINK.DATA.SUBSET_MANIFEST`` applies to the training names only.

    Returns:
        list[str]: the names handled here (names the user registered directly are left alone).
    """
    data = cfg.RETHINK.DATA
    seed = check_subset_seed(data.SUBSET_SEED)
    manifest = data.SUBSET_MANIFEST or None
    cache_dir = default_cache_dir(data.SUBSET_CACHE_DIR)
    if manifest:
        read_manifest(manifest)
    names = []
    for name in list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST):
        if not is_subset_name(name) or name in names:
            continue
        if name in DatasetCatalog and name not in _OWNED:
            continue
        in_train = name in cfg.DATASETS.TRAIN
        register_subset(name, seed, manifest if in_train else None, cache_dir)
        names.append(name)
    return names


def _copy_metadata(base, name):
    """Give the subset its base's metadata, except what describes the full dataset's file."""
    meta = MetadataCatalog.get(name)
    for key, value in MetadataCatalog.get(base).as_dict().items():
        if key not in ("name", "json_file") and meta.get(key) is None:
            meta.set(**{key: value})


def _load_subset(name, source):
    """The loader registered in DatasetCatalog for a subset name."""
    meta = MetadataCatalog.get(source.base)
    json_file = meta.get("json_file")
    # a loader may write its json on first use: then it takes the generic path
    is_coco_json = meta.get("evaluator_type") == "coco" and json_file and os.path.isfile(json_file)
    load = _load_coco_json_subset if is_coco_json else _load_generic_subset
    dicts, image_ids, num_eligible, num_base = load(name, source)
    stats = dicts_stats(dicts, MetadataCatalog.get(name).get("thing_classes"))
    selection = f"manifest:{source.manifest}" if source.image_ids is not None else "keyed-hash"
    _RECORDS[name] = make_entry(
        "dataset", source.base, source.spec.text, source.seed, selection, image_ids,
        num_eligible, num_base, stats,
    )  # fmt: skip
    logger.info(
        f"Subset '{name}': {len(dicts)} of {num_eligible} eligible images of '{source.base}' "
        f"({stats['instances']} instances, selection {selection}, seed {source.seed}); the ids "
        f"go to OUTPUT_DIR/{MANIFEST_NAME}"
    )
    return dicts


def _load_coco_json_subset(name, source):
    """Select at the json level, through the cache of small subset jsons (coco_fast)."""
    meta = MetadataCatalog.get(source.base)
    if source.image_ids is None:
        tag = f"{source.spec.canonical}:seed{source.seed}"
    else:
        ids_json = json.dumps(list(source.image_ids))
        tag = "ids:" + hashlib.sha256(ids_json.encode()).hexdigest()[:16]

    def choose(keys):
        positions = choose_positions(
            keys, source.spec, source.seed, source.image_ids, f"'{name}'", source.manifest
        )
        return [keys[p] for p in positions]

    cached = ensure_cached_subset(
        meta.json_file, tag, choose, source.cache_dir, label=name, dataset=f"'{source.base}'"
    )
    dicts = load_coco_json(cached["json"], meta.image_root, name)
    subset_meta = MetadataCatalog.get(name)
    if subset_meta.get("json_file") is None:  # COCOEvaluator may have set its own already
        subset_meta.json_file = cached["json"]
    return dicts, cached["image_ids"], cached["eligible_images"], cached["base_images"]


def _load_generic_subset(name, source):
    """Load the whole base with DatasetCatalog.get and keep the selected dicts."""
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
    indices, image_ids, num_eligible = select_subset_indices(
        base_dicts, source.spec, source.seed, source.image_ids, f"'{name}'", source.manifest
    )
    _copy_metadata(source.base, name)  # the base's loader may have set thing_classes just now
    return [base_dicts[i] for i in sorted(indices)], image_ids, num_eligible, len(base_dicts)


# --- 4. manifest -----------------------------------------------------------------------------
#
# {"format": "rethink_d2.subset_manifest/1",
#  "subsets": {"coco_2017_train@10k": {"level": "dataset", "base": "coco_2017_train", "size": "10k",
#              "seed": 0, "selection": "keyed-hash", "image_ids": [...], "stats": {...}, ...}}}
# image_ids are in selection order: for a seed draw, the first k are the k-image subset.

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
        ``per_category`` and ``zero_instance_categories``.
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
    """:func:`subset_stats` of Detectron2 dataset dicts (contiguous ``category_id``)."""
    class_names = list(class_names or [])

    def name(category_id):
        return class_names[category_id] if 0 <= category_id < len(class_names) else str(category_id)

    instances = (
        (name(ann["category_id"]), ann.get("iscrowd", 0) != 0)
        for record in dataset_dicts
        for ann in record.get("annotations", ())
        if "category_id" in ann
    )
    return subset_stats(len(dataset_dicts), instances, class_names)


def coco_stats(coco):
    """:func:`subset_stats` of a COCO json."""
    names = {cat["id"]: cat["name"] for cat in coco["categories"]}
    instances = (
        (names.get(ann["category_id"], str(ann["category_id"])), ann.get("iscrowd", 0) != 0)
        for ann in coco["annotations"]
    )
    return subset_stats(len(coco["images"]), instances, [names[k] for k in sorted(names)])


def make_entry(level, base, size, seed, selection, image_ids, num_eligible, num_base, stats):
    """
    One manifest entry.

    Args:
        level (str): ``"dataset"`` (a ``<base>@<size>`` name) or ``"sampler"``.
        base (str): the dataset(s) the subset is drawn from.
        size (str): the size as written.
        seed (int or None): subset seed (None when the ids came from a manifest).
        selection (str): ``"keyed-hash"`` or ``"manifest:<path>"``.
        image_ids (list): selected image ids, in selection order.
        num_eligible, num_base (int): eligible and all images of the base.
        stats (dict): see :func:`subset_stats`.
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
    Read and validate a subset manifest.

    Args:
        path (str): the manifest file.
        key (str): the config key or flag that named it, for error messages.

    Returns:
        dict
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
    """The entry named ``name``, else the only one of ``level`` drawn from ``base``."""
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


def write_run_manifest(cfg, sampler=None):
    """
    Write ``OUTPUT_DIR/subset_manifest.json`` (main process) when the run trains on a subset.

    Args:
        cfg (CfgNode): the config; its ``<dataset>@<size>`` training names must be loaded.
        sampler (Sampler or None): the training sampler (a ``SubsetTrainingSampler``'s entry,
            its ``record``, is written too).

    Returns:
        str or None: the manifest path; None without a subset or outside the main process.

    Raises:
        DatasetError: the file already records other images (e.g. a resumed run whose config
        now names another subset). An identical file is left untouched.
    """
    records = {name: get_subset_record(name) for name in cfg.DATASETS.TRAIN}
    records[cfg.DATALOADER.SAMPLER_TRAIN] = getattr(sampler, "record", None)
    entries = {name: record for name, record in records.items() if record is not None}
    if not entries or not comm.is_main_process():
        return None
    path = os.path.join(cfg.OUTPUT_DIR, MANIFEST_NAME)
    written = _write_manifest(path, entries)
    for name, entry in entries.items():
        logger.info(
            f"Training on subset {name}: {entry['stats']['images']} images, "
            f"{entry['stats']['instances']} instances; image ids in {path}"
            + ("" if written else " (unchanged)")
        )
    return path


def _write_manifest(path, entries):
    """Write a manifest; False if an identical one is there, an error if a different one is."""

    def identity(manifest):
        return {
            name: (e.get("level"), e.get("base"), list(e.get("image_ids", [])))
            for name, e in manifest.get("subsets", {}).items()
        }

    if os.path.exists(path):
        try:
            with open(path) as f:
                existing = json.load(f)
        except (OSError, ValueError):
            existing = {}
        new = json.loads(json.dumps({"subsets": entries}))
        if identity(existing) == identity(new):
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
