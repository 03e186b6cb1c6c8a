"""The built-in shapes dataset: determinism, masks, variety, cache, registration, config."""
import hashlib
import importlib
import json
import os
import threading

import numpy as np
import pytest
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from pycocotools import mask as mask_util

from conftest import QUICKSTART
from rethink_d2 import add_rethink_config
from rethink_d2.data import shapes
from rethink_d2.data.shapes import (
    DATA_ENV_VAR,
    SHAPE_CLASSES,
    SHAPES_SPLITS,
    draw_shapes_image,
    ensure_shapes_dataset,
    generate_shapes_split,
    register_shapes_datasets,
    shapes_cache_dir,
)
from rethink_d2.utils.errors import DatasetError

SEED = SHAPES_SPLITS["train"][0]


def _tree_digest(directory):
    """sha256 of every file under ``directory``, by relative path."""
    digests = {}
    for dirpath, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                digests[os.path.relpath(path, directory)] = hashlib.sha256(f.read()).hexdigest()
    return digests


def _load(split_dir):
    with open(os.path.join(split_dir, "annotations.json")) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def small_split(tmp_path_factory):
    """40 full-size training images, drawn once for the tests that only read them."""
    out = str(tmp_path_factory.mktemp("shapes_small"))
    generate_shapes_split(out, 40, SEED, 128)
    return out


def test_generation_is_deterministic(tmp_path, small_split):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    generate_shapes_split(a, 5, SEED, 128)
    generate_shapes_split(b, 5, SEED, 128)
    digest_a = _tree_digest(a)
    assert digest_a == _tree_digest(b)
    assert len([p for p in digest_a if p.startswith("images")]) == 5
    # a smaller count is a prefix of the same split (image i depends only on (seed, i))
    big = _tree_digest(small_split)
    for index in range(5):
        name = os.path.join("images", f"{index:06d}.png")
        assert digest_a[name] == big[name]


def test_train_and_val_differ(tmp_path):
    seeds = {split: seed for split, (seed, _, _) in SHAPES_SPLITS.items()}
    assert len(set(seeds.values())) == len(seeds)
    train, val = str(tmp_path / "train"), str(tmp_path / "val")
    generate_shapes_split(train, 3, seeds["train"], 64)
    generate_shapes_split(val, 3, seeds["val"], 64)
    train_images = {v for k, v in _tree_digest(train).items() if k.startswith("images")}
    val_images = {v for k, v in _tree_digest(val).items() if k.startswith("images")}
    assert not train_images & val_images


def test_visible_masks_follow_occlusion():
    saw_occlusion = False
    for index in range(30):
        image, instances = draw_shapes_image(np.random.default_rng([SEED, index]), 96, noise=False)
        assert image.shape == (96, 96, 3) and image.dtype == np.uint8
        assert 1 <= len(instances) <= 6
        covered = np.zeros((96, 96), dtype=bool)
        for inst in reversed(instances):  # top to bottom
            expected = inst["full_mask"] & ~covered
            np.testing.assert_array_equal(inst["mask"], expected)
            assert inst["mask"].sum() >= 0.5 * inst["full_mask"].sum()
            saw_occlusion |= bool((inst["full_mask"] & covered).any())
            # without noise, every visible pixel has the shape's own colour
            colour = np.clip(np.rint(inst["colour"]), 0, 255).astype(np.uint8)
            assert (image[inst["mask"]] == colour).all()
            covered |= inst["full_mask"]
    assert saw_occlusion, "30 images without a single overlap: placement is too conservative"


def test_noise_does_not_change_the_scene():
    clean, clean_instances = draw_shapes_image(np.random.default_rng([SEED, 3]), 64, noise=False)
    noisy, noisy_instances = draw_shapes_image(np.random.default_rng([SEED, 3]), 64, noise=True)
    assert len(clean_instances) == len(noisy_instances)
    for a, b in zip(clean_instances, noisy_instances):
        np.testing.assert_array_equal(a["mask"], b["mask"])
    assert not np.array_equal(clean, noisy)


def test_json_annotations_match_the_drawn_masks(small_split):
    coco = _load(small_split)
    by_image = {}
    for ann in coco["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    for image_info in coco["images"][:10]:
        index = image_info["id"] - 1
        _, instances = draw_shapes_image(np.random.default_rng([SEED, index]), 128)
        anns = by_image[image_info["id"]]
        assert [a["category_id"] - 1 for a in anns] == [i["category_id"] for i in instances]
        for ann, inst in zip(anns, instances):
            decoded = mask_util.decode(ann["segmentation"]).astype(bool)
            np.testing.assert_array_equal(decoded, inst["mask"])
            assert ann["area"] == inst["mask"].sum()
            ys, xs = np.nonzero(inst["mask"])
            x0, y0 = xs.min(), ys.min()
            assert ann["bbox"] == [x0, y0, xs.max() - x0 + 1, ys.max() - y0 + 1]
            assert ann["iscrowd"] == 0


def test_dataset_has_variety(small_split):
    coco = _load(small_split)
    assert [c["name"] for c in coco["categories"]] == list(SHAPE_CLASSES)
    anns = coco["annotations"]
    assert {a["category_id"] for a in anns} == set(range(1, len(SHAPE_CLASSES) + 1))
    areas = np.array([a["area"] for a in anns])
    assert (areas < 32**2).sum() > 10 and (areas >= 32**2).sum() > 10  # COCO small and medium
    counts = np.bincount([a["image_id"] for a in anns])[1:]
    assert counts.min() >= 1 and len(set(counts.tolist())) >= 3
    ids = [a["id"] for a in anns]
    assert len(set(ids)) == len(ids)


def test_cache_is_reused(tmp_path):
    first = ensure_shapes_dataset("val", root=str(tmp_path), num_images=4)
    assert first["json_file"].startswith(shapes_cache_dir(str(tmp_path)))
    assert len(os.listdir(first["image_root"])) == 4
    split_dir = os.path.dirname(first["json_file"])
    assert os.stat(split_dir).st_mode & 0o777 == 0o755  # readable by others sharing the cache
    mtime = os.stat(first["json_file"]).st_mtime_ns
    again = ensure_shapes_dataset("val", root=str(tmp_path), num_images=4)
    assert again == first
    assert os.stat(first["json_file"]).st_mtime_ns == mtime
    # no temporary directories left behind
    assert not [n for n in os.listdir(shapes_cache_dir(str(tmp_path))) if "-tmp-" in n]


def test_env_var_sets_the_cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv(DATA_ENV_VAR, str(tmp_path / "elsewhere"))
    assert shapes_cache_dir() == os.path.join(
        str(tmp_path / "elsewhere"), "shapes", f"v{shapes.SHAPES_VERSION}"
    )
    paths = ensure_shapes_dataset("val", num_images=2)
    assert paths["json_file"].startswith(str(tmp_path / "elsewhere"))
    monkeypatch.delenv(DATA_ENV_VAR)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert shapes_cache_dir().startswith(os.path.join(str(tmp_path / "xdg"), "rethink_d2"))


@pytest.mark.parametrize("damage", ["truncate_json", "delete_image", "old_version", "no_stamp"])
def test_corrupt_cache_is_regenerated(tmp_path, damage):
    paths = ensure_shapes_dataset("val", root=str(tmp_path), num_images=3)
    split_dir = os.path.dirname(paths["json_file"])
    good = _tree_digest(split_dir)
    if damage == "truncate_json":
        with open(paths["json_file"], "r+b") as f:
            f.truncate(100)
    elif damage == "delete_image":
        os.remove(os.path.join(paths["image_root"], "000001.png"))
    elif damage == "old_version":
        stamp_path = os.path.join(split_dir, "stamp.json")
        with open(stamp_path) as f:
            stamp = json.load(f)
        stamp["version"] = -1
        with open(stamp_path, "w") as f:
            json.dump(stamp, f)
    else:
        os.remove(os.path.join(split_dir, "stamp.json"))
    assert ensure_shapes_dataset("val", root=str(tmp_path), num_images=3) == paths
    assert _tree_digest(split_dir) == good


def test_concurrent_callers_generate_once(tmp_path, monkeypatch):
    calls, results, errors = [], [], []
    real = shapes.generate_shapes_split

    def counting(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(shapes, "generate_shapes_split", counting)

    def worker():
        try:
            results.append(ensure_shapes_dataset("val", root=str(tmp_path), num_images=6))
        except Exception as e:  # noqa: BLE001 -- reported by the assert below
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 3 and len({r["json_file"] for r in results}) == 1
    assert len(calls) == 1
    assert len(_load(os.path.dirname(results[0]["json_file"]))["images"]) == 6


def test_bad_inputs_raise_dataset_error(tmp_path):
    with pytest.raises(DatasetError, match="unknown shapes split 'test'"):
        ensure_shapes_dataset("test", root=str(tmp_path))
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    with pytest.raises(DatasetError, match=DATA_ENV_VAR):
        ensure_shapes_dataset("val", root=str(not_a_dir), num_images=2)
    with pytest.raises(DatasetError, match="num_images >= 1"):
        ensure_shapes_dataset("val", root=str(tmp_path), num_images=0)
    with pytest.raises(DatasetError, match="num_images >= 1"):
        generate_shapes_split(str(tmp_path / "zero"), 0, SEED, 64)


def test_default_datasets_are_registered_lazily():
    for name, split in shapes.SHAPES_DATASETS.items():
        assert name in DatasetCatalog.list()
        meta = MetadataCatalog.get(name)
        assert meta.thing_classes == list(SHAPE_CLASSES)
        assert meta.evaluator_type == "coco"
        suffix = os.path.join(f"v{shapes.SHAPES_VERSION}", split, "annotations.json")
        assert meta.json_file.endswith(suffix)
        assert meta.image_root == os.path.join(os.path.dirname(meta.json_file), "images")
    # re-importing (e.g. importlib.reload, a second `import`) must not fail on existing names
    importlib.reload(shapes)
    assert register_shapes_datasets() == []


def test_registered_dataset_loads_and_matches_metadata(tmp_path):
    name = "test_shapes_val_" + os.path.basename(str(tmp_path))
    assert register_shapes_datasets(root=str(tmp_path), datasets={name: "val"}) == [name]
    meta = MetadataCatalog.get(name)
    assert not os.path.exists(meta.json_file)  # registration draws nothing
    try:
        dicts = DatasetCatalog.get(name)
        assert os.path.isfile(meta.json_file)  # what COCOEvaluator reads
        assert len(dicts) == SHAPES_SPLITS["val"][1]
        first = dicts[0]
        assert first["file_name"] == os.path.join(meta.image_root, "000000.png")
        assert first["height"] == first["width"] == SHAPES_SPLITS["val"][2]
        assert all(0 <= a["category_id"] < len(SHAPE_CLASSES) for a in first["annotations"])
        assert isinstance(first["annotations"][0]["segmentation"], dict)  # RLE
        assert meta.thing_dataset_id_to_contiguous_id == {i + 1: i for i in range(4)}
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def test_quickstart_config_matches_the_dataset():
    cfg = get_cfg()
    add_rethink_config(cfg)
    cfg.merge_from_file(QUICKSTART)
    assert set(cfg.DATASETS.TRAIN) | set(cfg.DATASETS.TEST) <= set(DatasetCatalog.list())
    assert cfg.DATASETS.TRAIN == ("rethink_shapes_train",)
    assert cfg.DATASETS.TEST == ("rethink_shapes_val",)
    assert cfg.MODEL.ROI_HEADS.NUM_CLASSES == len(SHAPE_CLASSES)
    assert cfg.INPUT.MASK_FORMAT == "bitmask"  # the json holds RLE masks
    size = SHAPES_SPLITS["train"][2]
    assert cfg.INPUT.MIN_SIZE_TRAIN == (size,) and cfg.INPUT.MAX_SIZE_TEST == size
    # the paper's recipe, narrowed: GN, random init, nothing frozen, 4conv1fc box head
    assert cfg.RETHINK.NORM == "GN" and cfg.MODEL.WEIGHTS == ""
    assert cfg.MODEL.BACKBONE.FREEZE_AT == 0
    assert (cfg.MODEL.ROI_BOX_HEAD.NUM_CONV, cfg.MODEL.ROI_BOX_HEAD.NUM_FC) == (4, 1)
    assert cfg.MODEL.ROI_MASK_HEAD.NUM_CONV == 4
    groups = cfg.RETHINK.GN_GROUPS
    widths = [cfg.MODEL.FPN.OUT_CHANNELS]
    widths += [cfg.MODEL.ROI_BOX_HEAD.CONV_DIM, cfg.MODEL.ROI_MASK_HEAD.CONV_DIM]
    assert all(width % groups == 0 for width in widths), widths


def test_data_and_subset_caches_share_one_root_rule(tmp_path, monkeypatch):
    from rethink_d2.data.coco_fast import default_cache_dir

    monkeypatch.delenv(DATA_ENV_VAR)
    monkeypatch.delenv("RETHINK_D2_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    root = os.path.join(str(tmp_path / "xdg"), "rethink_d2")
    assert shapes_cache_dir().startswith(root + os.sep)
    assert default_cache_dir() == os.path.join(root, "subsets")
    monkeypatch.setenv("RETHINK_D2_CACHE", str(tmp_path / "cache"))
    assert default_cache_dir() == os.path.join(str(tmp_path / "cache"), "subsets")
