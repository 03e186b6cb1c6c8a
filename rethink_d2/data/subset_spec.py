"""Subset names (``<dataset>@<size>[:seed<N>]``) and the deterministic, nested subset draw.

Grammar of the part after ``@`` (see docs/subsets.md):

* count: ``1000``, ``1k``, ``3.5k``, ``35K`` (an integer number of images, ``k`` = x1000);
* fraction of the eligible images: ``0.1``, ``.25``, ``1.0`` (a decimal point) or ``10%``;
* optional subset seed: ``coco_2017_train@10k:seed1`` (else ``RETHINK.DATA.SUBSET_SEED``).

The draw ranks every eligible image by a keyed hash of (subset seed, image id) and keeps the first
``n``. It therefore depends only on (dataset, size, seed), and for one seed a smaller subset is a
prefix of a larger one (1k ⊂ 3.5k ⊂ 10k ⊂ 35k). This module imports nothing from Detectron2.
"""

import hashlib
import math
import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Optional

from ..utils.errors import DatasetError

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
    """
    A subset size: an exact image count or a fraction of the eligible images.

    Attributes:
        text (str): the size as written, e.g. ``"3.5k"``.
        count (int or None): number of images, for count specs.
        fraction (Fraction or None): share of the eligible images in (0, 1], for fraction specs.
    """

    text: str
    count: Optional[int] = None
    fraction: Optional[Fraction] = None

    @property
    def canonical(self):
        """str: a spelling-independent key (``"3.5k"`` and ``"3500"`` give ``"n3500"``)."""
        return f"n{self.count}" if self.count is not None else f"f{self.fraction}"

    def resolve(self, num_eligible, what="the dataset"):
        """
        Turn the spec into an image count.

        Args:
            num_eligible (int): number of eligible images of the base dataset.
            what (str): how to name the subset in error messages.

        Returns:
            int: ``count``, or ``floor(fraction * num_eligible)`` (exact rational arithmetic).

        Raises:
            DatasetError: the subset would be empty or larger than the eligible images.
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
    """
    A parsed ``<base>@<size>[:seed<N>]`` dataset name.

    Attributes:
        name (str): the full name.
        base (str): the registered dataset the subset is drawn from.
        spec (SubsetSpec): the size.
        seed (int or None): the seed written in the name (``None``: use the config's).
    """

    name: str
    base: str
    spec: SubsetSpec
    seed: Optional[int] = None


def is_subset_name(name):
    """
    Args:
        name (str): a dataset name.

    Returns:
        bool: whether ``name`` has the ``<base>@<size>`` shape (it may still be invalid).
    """
    return isinstance(name, str) and "@" in name


def parse_subset_spec(text, where="RETHINK.DATA.SAMPLER_SUBSET"):
    """
    Parse a subset size.

    Args:
        text (str): e.g. ``"10k"``, ``"1000"``, ``"0.1"``, ``"10%"``.
        where (str): what holds the text (a config key or a dataset name), for error messages.

    Returns:
        SubsetSpec

    Raises:
        DatasetError: zero, negative, fraction above 1, or not a size at all.
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
    Parse a ``<base>@<size>[:seed<N>]`` dataset name (the base itself may contain ``@``).

    Args:
        name (str): e.g. ``"coco_2017_train@10k"``, ``"coco_2017_train@0.1:seed2"``.

    Returns:
        SubsetName

    Raises:
        DatasetError: not of that shape, or a bad size (see :func:`parse_subset_spec`).
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
    """
    Args:
        seed: a subset seed from a config or an API call.
        key (str): where it comes from, for the error message.

    Returns:
        int: the seed.

    Raises:
        DatasetError: the seed is not an integer >= 0 (a subset seed is never random).
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise DatasetError(
            f"{key} must be an integer >= 0 (subsets are never random), got {seed!r}"
        )
    return seed


def image_key(record):
    """
    The stable key of one image: ``image_id``, else ``file_name``.

    Args:
        record (dict): a Detectron2 dataset dict.

    Returns:
        int or str

    Raises:
        DatasetError: the dict has neither key.
    """
    if "image_id" in record:
        return record["image_id"]
    if "file_name" in record:
        return record["file_name"]
    raise DatasetError(
        "a dataset dict has neither 'image_id' nor 'file_name', so it cannot be put in a subset; "
        f"add 'image_id' to the dicts of the base dataset (keys found: {sorted(record)})"
    )


def has_usable_annotation(record):
    """
    Whether an image is eligible for a subset: what Detectron2's
    ``filter_images_with_only_crowd_annotations`` keeps.

    Args:
        record (dict): a Detectron2 dataset dict.

    Returns:
        bool: True if it has a non-crowd annotation, or has no "annotations" key at all
        (datasets without instances, e.g. semantic segmentation).
    """
    if "annotations" not in record:
        return True
    return any(ann.get("iscrowd", 0) == 0 for ann in record["annotations"])


def coco_annotation_is_usable(ann):
    """
    Whether a COCO-json annotation survives ``load_coco_json`` and counts as non-crowd.

    Args:
        ann (dict): one element of a COCO json's "annotations".

    Returns:
        bool: non-crowd, and its segmentation (if it is a polygon list) keeps one valid polygon.
    """
    if ann.get("iscrowd", 0) != 0:
        return False
    segm = ann.get("segmentation")
    if segm and isinstance(segm, list):
        return any(len(poly) % 2 == 0 and len(poly) >= 6 for poly in segm)
    return True


def rank_positions(keys, seed):
    """
    Order items by a keyed hash of (seed, key): the selection order of the subset draw.

    Args:
        keys (list[int or str]): the image key of each item.
        seed (int): the subset seed.

    Returns:
        list[int]: positions into ``keys``, first selected first. Ties (equal keys) are broken by
        position, so the order is a pure function of ``keys`` and ``seed``.
    """
    hasher = hashlib.blake2b(digest_size=8, key=f"rethink_d2.subset:{seed}".encode())

    def rank(position):
        h = hasher.copy()
        h.update(str(keys[position]).encode())
        return (h.digest(), position)

    return sorted(range(len(keys)), key=rank)


def select_positions(keys, spec, seed, what="the subset"):
    """
    The subset draw.

    Args:
        keys (list[int or str]): image keys of the eligible images.
        spec (SubsetSpec): subset size.
        seed (int): subset seed.
        what (str): how to name the subset in error messages.

    Returns:
        list[int]: positions into ``keys`` of the selected images, in selection order (the first
        ``k`` are the ``k``-image subset of the same seed).
    """
    count = spec.resolve(len(keys), what=what)
    return rank_positions(keys, seed)[:count]


def choose_positions(keys, spec, seed=None, image_ids=None, what="the subset", manifest=None):
    """
    The subset draw, or the images a manifest lists, among eligible images.

    Args:
        keys (list[int or str]): image keys of the eligible images.
        spec (SubsetSpec): subset size.
        seed (int or None): subset seed (used when ``image_ids`` is None).
        image_ids (list or None): ids from a manifest; they define the subset.
        what (str): how to name the subset in error messages.
        manifest (str or None): the manifest file, for error messages.

    Returns:
        list[int]: positions into ``keys``, in selection (or manifest) order.

    Raises:
        DatasetError: bad size for this dataset, or manifest ids that are not eligible images or
        do not match the size.
    """
    if image_ids is None:
        return select_positions(keys, spec, seed, what)
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
    expected = spec.resolve(len(keys), what)
    if expected != len(image_ids):
        raise DatasetError(
            f"RETHINK.DATA.SUBSET_MANIFEST '{manifest}' lists {len(image_ids)} images but {what} "
            f"means {expected}; change the size to {len(image_ids)} or use a matching manifest"
        )
    return [position[i] for i in image_ids]
