"""The built-in demo dataset: procedurally drawn shapes in COCO instance-segmentation format.

Importing this module only *registers* ``rethink_shapes_train`` and ``rethink_shapes_val``; a
split is drawn the first time it is needed, into ``$RETHINK_D2_DATA/shapes/v<SHAPES_VERSION>/``
(``RETHINK_D2_DATA`` defaults to ``$XDG_CACHE_HOME/rethink_d2``), and reused afterwards.

Every split is a pure function of its seed: the same bytes on every machine with the same
numpy / Pillow / zlib. Later shapes occlude earlier ones and each annotation stores the
*visible* mask as COCO RLE (``INPUT.MASK_FORMAT "bitmask"``).
"""

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json
from PIL import Image, ImageDraw
from pycocotools import mask as mask_util

from ..utils.errors import DatasetError
from ..utils.files import cache_root, file_lock

logger = logging.getLogger(__name__)

# Bump whenever the drawing changes, so that old caches are never mistaken for the new data.
SHAPES_VERSION = 1
SHAPE_CLASSES = ("circle", "square", "triangle", "star")
# split -> (seed, number of images, image side in pixels); the seeds differ per split.
SHAPES_SPLITS = {"train": (20190001, 1000, 128), "val": (20190002, 150, 128)}
# registered dataset name -> split
SHAPES_DATASETS = {"rethink_shapes_train": "train", "rethink_shapes_val": "val"}
DATA_ENV_VAR = "RETHINK_D2_DATA"

# shape radius range (circumradius, pixels) as fractions of the image side, sampled log-uniform
_RADIUS_RANGE = (0.06, 0.24)
_SHAPES_PER_IMAGE = (2, 6)
# a new shape is rejected if it would leave an earlier one with less than this fraction visible
_MIN_VISIBLE_FRACTION = 0.5
_PLACEMENT_TRIES = 30
_STAMP = "stamp.json"
_ANNOTATIONS = "annotations.json"
_IMAGES = "images"


def shapes_cache_dir(root=None):
    """
    ``<root>/shapes/v<SHAPES_VERSION>`` (absolute), the directory of every split; ``root``
    defaults to ``$RETHINK_D2_DATA``, else ``$XDG_CACHE_HOME/rethink_d2``.
    """
    return os.path.join(_data_root(root), "shapes", f"v{SHAPES_VERSION}")


def _data_root(root):
    if not root:
        root = os.environ.get(DATA_ENV_VAR) or cache_root()
    return os.path.abspath(os.path.expanduser(root))


def _rasterize(cls_name, cx, cy, radius, angle, size):
    """Boolean ``size x size`` mask of one shape."""
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    if cls_name == "circle":
        draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=1)
        return np.asarray(canvas, dtype=bool)
    if cls_name == "square":
        angles, radii = angle + np.arange(4) * np.pi / 2, np.full(4, radius)
    elif cls_name == "triangle":
        angles, radii = angle + np.arange(3) * 2 * np.pi / 3, np.full(3, radius)
    else:  # star: 5 outer points, inner radius 0.45 of the outer one
        angles = angle + np.arange(10) * np.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, radius, 0.45 * radius)
    draw.polygon(
        [(float(cx + r * np.cos(a)), float(cy + r * np.sin(a))) for a, r in zip(angles, radii)],
        fill=1,
    )
    return np.asarray(canvas, dtype=bool)


def _background(rng, size):
    """A low-frequency colour field with a few thin distractor lines (float32, HxWx3)."""
    grid = int(rng.integers(2, 6))
    coarse = rng.uniform(30, 225, size=(grid, grid, 3)).astype(np.uint8)
    field = Image.fromarray(coarse).resize((size, size), Image.BILINEAR)
    draw = ImageDraw.Draw(field)
    for _ in range(int(rng.integers(0, 4))):
        x0, y0, x1, y1 = (float(v) for v in rng.uniform(0, size, 4))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        draw.line([x0, y0, x1, y1], fill=colour, width=int(rng.integers(1, 3)))
    return np.array(field, dtype=np.float32)


def _shape_colour(rng, canvas, mask):
    """A colour that stands out from the canvas under ``mask`` (best of a few draws)."""
    local = canvas[mask].mean(axis=0)
    best, best_dist = None, -1.0
    for _ in range(8):
        colour = rng.integers(0, 256, 3).astype(np.float32)
        dist = float(np.abs(colour - local).sum())
        if dist > best_dist:
            best, best_dist = colour, dist
        if dist > 150:
            break
    return best


def draw_shapes_image(rng, image_size, noise=True):
    """
    Draw one ``image_size``-pixel square image with ``rng`` (a ``numpy.random.Generator``, the
    only source of randomness): shapes painted in order, a placement that would leave an earlier
    shape less than half visible is redrawn. ``noise=False`` draws the same scene without noise.

    Returns:
        tuple[numpy.ndarray, list[dict]]: the uint8 RGB image and one dict per shape, bottom to
        top: ``category_id`` (0-based index into :data:`SHAPE_CLASSES`), ``mask`` (visible
        pixels), ``full_mask`` (the whole shape) and ``colour`` (float32 RGB before noise).
    """
    canvas = _background(rng, image_size)
    r_lo, r_hi = (np.log(f * image_size) for f in _RADIUS_RANGE)
    instances = []
    for _ in range(int(rng.integers(_SHAPES_PER_IMAGE[0], _SHAPES_PER_IMAGE[1] + 1))):
        category_id = int(rng.integers(len(SHAPE_CLASSES)))
        for _ in range(_PLACEMENT_TRIES):
            radius = float(np.exp(rng.uniform(r_lo, r_hi)))
            cx, cy = (float(v) for v in rng.uniform(radius, image_size - radius, 2))
            angle = float(rng.uniform(0, 2 * np.pi))
            full = _rasterize(SHAPE_CLASSES[category_id], cx, cy, radius, angle, image_size)
            if full.any() and all(
                (inst["mask"] & ~full).sum() >= _MIN_VISIBLE_FRACTION * inst["full_mask"].sum()
                for inst in instances
            ):
                break
        else:
            continue  # no room left for this shape
        for inst in instances:
            inst["mask"] = inst["mask"] & ~full
        colour = _shape_colour(rng, canvas, full)  # contrast with what it is painted over
        canvas[full] = colour
        instances.append(
            {"category_id": category_id, "mask": full, "full_mask": full, "colour": colour}
        )
    if noise:
        canvas += rng.normal(0.0, rng.uniform(3.0, 12.0), size=canvas.shape).astype(np.float32)
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8), instances


def _coco_annotation(inst, ann_id, image_id):
    rle = mask_util.encode(np.asfortranarray(inst["mask"].astype(np.uint8)))
    bbox = [float(v) for v in mask_util.toBbox(rle)]
    rle["counts"] = rle["counts"].decode("ascii")
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": inst["category_id"] + 1,
        "segmentation": rle,
        "area": float(mask_util.area(rle)),
        "bbox": bbox,
        "iscrowd": 0,
    }


def generate_shapes_split(out_dir, num_images, seed, image_size):
    """
    Write ``images/*.png``, ``annotations.json`` and, last, ``stamp.json`` into ``out_dir``
    (not atomic: :func:`ensure_shapes_dataset` is the cached, race-free entry point).

    Image ``i`` is drawn from ``numpy.random.default_rng([seed, i])``, so a smaller
    ``num_images`` gives a prefix of the same split. Returns the stamp.
    """
    if int(num_images) < 1 or int(image_size) < 32:
        raise DatasetError(
            f"shapes dataset needs num_images >= 1 and image_size >= 32, "
            f"got num_images={num_images}, image_size={image_size}"
        )
    image_dir = os.path.join(out_dir, _IMAGES)
    os.makedirs(image_dir, exist_ok=True)
    images, annotations, image_bytes = [], [], 0
    for index in range(int(num_images)):
        image, instances = draw_shapes_image(np.random.default_rng([seed, index]), image_size)
        file_name = f"{index:06d}.png"
        path = os.path.join(image_dir, file_name)
        Image.fromarray(image).save(path, format="PNG")
        image_bytes += os.path.getsize(path)
        images.append(
            {"id": index + 1, "file_name": file_name, "height": image_size, "width": image_size}
        )
        for inst in instances:
            annotations.append(_coco_annotation(inst, len(annotations) + 1, index + 1))
    coco = {
        "info": {"description": f"rethink-d2 shapes v{SHAPES_VERSION}, seed {seed}"},
        "images": images,
        "annotations": annotations,
        "categories": [
            {"id": i + 1, "name": name, "supercategory": "shape"}
            for i, name in enumerate(SHAPE_CLASSES)
        ],
    }
    payload = json.dumps(coco, separators=(",", ":")).encode("utf-8")
    with open(os.path.join(out_dir, _ANNOTATIONS), "wb") as f:
        f.write(payload)
    stamp = _expected_stamp(seed, num_images, image_size)
    stamp.update(
        num_annotations=len(annotations),
        json_sha256=hashlib.sha256(payload).hexdigest(),
        image_bytes=image_bytes,
    )
    with open(os.path.join(out_dir, _STAMP), "w") as f:
        json.dump(stamp, f, indent=1, sort_keys=True)
    return stamp


def _expected_stamp(seed, num_images, image_size):
    seed, num_images, image_size = int(seed), int(num_images), int(image_size)
    return dict(version=SHAPES_VERSION, seed=seed, num_images=num_images, image_size=image_size)


def _cache_problem(split_dir, seed, num_images, image_size):
    """``None`` if ``split_dir`` holds a complete split with these parameters, else the reason."""
    stamp_path = os.path.join(split_dir, _STAMP)
    if not os.path.isfile(stamp_path):
        return "no stamp.json (missing or interrupted generation)"
    try:
        with open(stamp_path) as f:
            stamp = json.load(f)
        expected = _expected_stamp(seed, num_images, image_size)
        if any(stamp.get(k) != v for k, v in expected.items()):
            return f"stamp {stamp} does not match {expected}"
        with open(os.path.join(split_dir, _ANNOTATIONS), "rb") as f:
            if hashlib.sha256(f.read()).hexdigest() != stamp["json_sha256"]:
                return f"{_ANNOTATIONS} does not match its checksum in the stamp"
        image_dir = os.path.join(split_dir, _IMAGES)
        names = [n for n in os.listdir(image_dir) if n.endswith(".png")]
        if len(names) != stamp["num_images"]:
            return f"{len(names)} images instead of {stamp['num_images']}"
        size = sum(os.path.getsize(os.path.join(image_dir, n)) for n in names)
        if size != stamp["image_bytes"]:
            return f"images hold {size} bytes instead of {stamp['image_bytes']}"
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"unreadable ({type(e).__name__}: {e})"
    return None


def _split_params(split, num_images):
    """(seed, number of images, image size) of a split; ``num_images`` None: the default."""
    if split not in SHAPES_SPLITS:
        raise DatasetError(
            f"unknown shapes split {split!r}; use one of {sorted(SHAPES_SPLITS)} "
            f"(datasets {sorted(SHAPES_DATASETS)})"
        )
    seed, default_count, image_size = SHAPES_SPLITS[split]
    count = default_count if num_images is None else int(num_images)
    if count < 1:
        raise DatasetError(f"shapes split {split!r} needs num_images >= 1, got {num_images}")
    return seed, count, image_size


def _split_paths(split_dir):
    return {
        "json_file": os.path.join(split_dir, _ANNOTATIONS),
        "image_root": os.path.join(split_dir, _IMAGES),
    }


def ensure_shapes_dataset(split, root=None, num_images=None):
    """
    Make sure ``split`` ("train" or "val") is in the cache under ``root`` (see
    :func:`shapes_cache_dir`), drawing it if it is missing or corrupt; return its ``json_file``
    and ``image_root``. ``num_images`` other than the split's default is cached on its own.

    Generation writes into a temporary directory that is renamed into place, under a file lock,
    so concurrent callers (several training processes) never see a partial split.
    """
    seed, num_images, image_size = _split_params(split, num_images)
    cache_dir = shapes_cache_dir(root)
    name = split if num_images == SHAPES_SPLITS[split][1] else f"{split}_{num_images}"
    split_dir = os.path.join(cache_dir, name)
    if _cache_problem(split_dir, seed, num_images, image_size) is None:
        return _split_paths(split_dir)
    try:
        os.makedirs(cache_dir, exist_ok=True)
        with file_lock(os.path.join(cache_dir, f".{name}.lock")):
            problem = _cache_problem(split_dir, seed, num_images, image_size)
            if problem is None:  # another process generated it while we waited
                return _split_paths(split_dir)
            if os.path.exists(split_dir):
                logger.warning(f"Regenerating shapes split {split_dir}: {problem}")
                trash = tempfile.mkdtemp(prefix=f".{name}-old-", dir=cache_dir)
                os.rename(split_dir, os.path.join(trash, name))
                shutil.rmtree(trash, ignore_errors=True)
            start = time.perf_counter()
            tmp = tempfile.mkdtemp(prefix=f".{name}-tmp-", dir=cache_dir)
            try:
                stamp = generate_shapes_split(tmp, num_images, seed, image_size)
                os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache may be shared
                os.rename(tmp, split_dir)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            logger.info(
                f"Drew shapes split {split!r}: {num_images} images, "
                f"{stamp['num_annotations']} instances in {time.perf_counter() - start:.1f}s "
                f"-> {split_dir}"
            )
    except OSError as e:
        raise DatasetError(
            f"cannot write the shapes dataset to {cache_dir} ({e}); "
            f"set the environment variable {DATA_ENV_VAR} to a writable directory"
        ) from e
    return _split_paths(split_dir)


def register_shapes_datasets(root=None, datasets=None):
    """
    Register ``datasets`` (name -> split, default :data:`SHAPES_DATASETS`) with Detectron2's
    catalogs and return the names registered; names already registered are left alone.

    Nothing is drawn until a dataset is loaded, but the data ``root`` is fixed now, so that the
    metadata ``json_file`` (read by ``COCOEvaluator``) is known upfront.
    """
    data_root = _data_root(root)
    registered = []
    for name, split in (datasets or SHAPES_DATASETS).items():
        if name in DatasetCatalog.list():
            continue
        _split_params(split, None)

        def load(name=name, split=split):
            paths = ensure_shapes_dataset(split, root=data_root)
            return load_coco_json(paths["json_file"], paths["image_root"], name)

        DatasetCatalog.register(name, load)
        MetadataCatalog.get(name).set(
            thing_classes=list(SHAPE_CLASSES),
            evaluator_type="coco",
            **_split_paths(os.path.join(shapes_cache_dir(data_root), split)),
        )
        registered.append(name)
    return registered


register_shapes_datasets()
