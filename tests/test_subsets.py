"""Tests of '<dataset>@<size>' subsets: grammar, exact sizes, nesting, determinism across
processes, eligibility, cache, manifest round-trip, bad input and tools/make_subset.py."""

import importlib.util
import json
import os
import subprocess
import sys
import uuid

import pytest
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog, get_detection_dataset_dicts
from detectron2.data.datasets import load_coco_json, register_coco_instances

from rethink_d2 import add_rethink_config, resolve_config
from rethink_d2.data import coco_fast
from rethink_d2.data.subsets import (
    MANIFEST_NAME,
    get_subset_record,
    parse_subset_name,
    parse_subset_spec,
    register_subset,
    register_subset_datasets,
    write_run_manifest,
)
from rethink_d2.utils.errors import ConfigError, DatasetError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CATEGORIES = [{"id": i, "name": f"cat{i}"} for i in (1, 2, 3, 5, 8)]  # 8 never used


def write_coco(path, num_images=300, image_root=None):
    """
    A COCO json with awkward cases: image i has no annotation if i % 10 == 0, only crowd ones if
    i % 15 == 0, only an invalid polygon if i % 23 == 0; the rest 1-3 valid instances.

    Returns:
        str: ``path``.
    """
    images, anns = [], []
    for i in range(num_images):
        image_id = 1000 + 7 * i
        w, h = (32, 24) if i % 3 else (24, 32)
        images.append({"id": image_id, "file_name": f"{image_id}.png", "width": w, "height": h})
        if i % 10 == 0:
            continue
        for k in range(1 + i % 3):
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": image_id,
                    "category_id": CATEGORIES[(i + k) % 4]["id"],
                    "bbox": [2.0, 2.0, 10.0, 8.0],
                    "area": 80.0,
                    "iscrowd": int(i % 15 == 0),
                    "segmentation": [[2, 2, 12, 2, 12, 10, 2, 10]] if i % 23 else [[1, 2, 3, 4]],
                }
            )
        if image_root:
            from PIL import Image

            Image.new("RGB", (w, h), (i % 255, 80, 160)).save(
                os.path.join(image_root, f"{image_id}.png")
            )
    with open(path, "w") as f:
        json.dump({"images": images, "annotations": anns, "categories": CATEGORIES}, f)
    return path


class Synthetic:
    """A synthetic COCO-json dataset registered under a unique name, removed after the test."""

    def __init__(self, tmp_path, num_images=300, with_images=False):
        self.root = str(tmp_path)
        self.json = write_coco(
            os.path.join(self.root, "ann.json"),
            num_images,
            image_root=self.root if with_images else None,
        )
        self.name = f"syn{uuid.uuid4().hex[:8]}"
        self.cache = os.path.join(self.root, "cache")
        register_coco_instances(self.name, {}, self.json, self.root)

    def register_generic(self):
        """The same data under a second name whose metadata has no json_file (generic path)."""
        name = self.name + "_generic"
        DatasetCatalog.register(name, lambda: load_coco_json(self.json, self.root, name))
        return name

    def cfg(self, train, **data):
        cfg = get_cfg()
        add_rethink_config(cfg)
        cfg.DATASETS.TRAIN = tuple(train)
        cfg.DATASETS.TEST = ()
        cfg.OUTPUT_DIR = os.path.join(self.root, "output")
        cfg.RETHINK.DATA.SUBSET_CACHE_DIR = self.cache
        for key, value in data.items():
            cfg.RETHINK.DATA[key] = value
        return cfg

    def cleanup(self):
        for name in list(DatasetCatalog.keys()):
            if name.startswith(self.name):
                DatasetCatalog.remove(name)
                if name in MetadataCatalog.list():
                    MetadataCatalog.remove(name)


@pytest.fixture
def syn(tmp_path):
    ds = Synthetic(tmp_path)
    yield ds
    ds.cleanup()


def ids(name):
    return [d["image_id"] for d in DatasetCatalog.get(name)]


def eligible_ids(base):
    return [d["image_id"] for d in get_detection_dataset_dicts([base])]


# ---- grammar ----
@pytest.mark.parametrize(
    "text, count, fraction",
    [
        ("1000", 1000, None),
        ("1k", 1000, None),
        ("3.5k", 3500, None),
        ("35K", 35000, None),
        ("10k", 10000, None),
        ("0.1", None, 0.1),
        (".25", None, 0.25),
        ("1.0", None, 1.0),
        ("10%", None, 0.1),
        ("2.5%", None, 0.025),
    ],
)
def test_grammar(text, count, fraction):
    spec = parse_subset_spec(text)
    assert spec.count == count
    assert (spec.fraction is None) == (fraction is None)
    if fraction is not None:
        assert float(spec.fraction) == pytest.approx(fraction)


def test_name_with_seed_and_at_in_base():
    parsed = parse_subset_name("my@data@0.5:seed3")
    assert (parsed.base, parsed.spec.text, parsed.seed) == ("my@data", "0.5", 3)
    assert parse_subset_name("coco_2017_train@3.5k").seed is None


@pytest.mark.parametrize(
    "size, message",
    [
        ("0", "at least 1"),
        ("0k", "at least 1"),
        ("-5", "positive"),
        ("0.0", "(0, 1]"),
        ("1.5", "(0, 1]"),
        ("150%", "(0, 1]"),
        ("10m", "not a count or a fraction"),
        ("ten", "not a count or a fraction"),
        ("", "not a count or a fraction"),
        ("3.1415k", "not a whole number"),
    ],
)
def test_bad_spec_is_one_clear_error(syn, size, message):
    name = f"{syn.name}@{size}"
    with pytest.raises(DatasetError) as e:
        register_subset_datasets(syn.cfg([name]))
    text = str(e.value)
    assert message in text and f"'{size}'" in text and name in text
    assert "\n" not in text
    assert name not in DatasetCatalog


def test_too_large_is_one_clear_error_at_load(syn):
    register_subset(f"{syn.name}@249", cache_dir=syn.cache)
    register_subset(f"{syn.name}@0.001", cache_dir=syn.cache)
    with pytest.raises(DatasetError, match="asks for 249 images but only 248 images are eligible"):
        DatasetCatalog.get(f"{syn.name}@249")
    with pytest.raises(DatasetError, match="selects 0 of 248 eligible images"):
        DatasetCatalog.get(f"{syn.name}@0.001")


def test_unknown_base_names_how_to_register(syn):
    with pytest.raises(DatasetError) as e:
        register_subset_datasets(syn.cfg([syn.name[:-1] + "@10"]))
    assert "is not registered" in str(e.value) and "register_coco_instances" in str(e.value)
    assert f"did you mean ['{syn.name}']" in str(e.value)


@pytest.mark.parametrize("seed", [-1, 1.5, "0"])
def test_bad_subset_seed(syn, seed):
    cfg = syn.cfg([f"{syn.name}@10"])
    cfg.RETHINK.DATA.SUBSET_SEED = seed
    with pytest.raises(DatasetError, match="RETHINK.DATA.SUBSET_SEED must be an integer >= 0"):
        register_subset_datasets(cfg)


def test_missing_and_corrupt_annotation_file(tmp_path):
    missing, corrupt = f"m{uuid.uuid4().hex[:6]}", f"c{uuid.uuid4().hex[:6]}"
    bad = tmp_path / "corrupt.json"
    bad.write_text('{"images": [')
    register_coco_instances(missing, {}, str(tmp_path / "nope.json"), str(tmp_path))
    register_coco_instances(corrupt, {}, str(bad), str(tmp_path))
    try:
        register_subset(f"{missing}@5", cache_dir=str(tmp_path / "c"))
        register_subset(f"{corrupt}@5", cache_dir=str(tmp_path / "c"))
        with pytest.raises(DatasetError, match="nope.json' of '.*' does not exist.*DETECTRON2"):
            DatasetCatalog.get(f"{missing}@5")
        with pytest.raises(DatasetError, match="corrupt.json' of .* is corrupt"):
            DatasetCatalog.get(f"{corrupt}@5")
    finally:
        for n in (missing, corrupt, f"{missing}@5", f"{corrupt}@5"):
            DatasetCatalog.remove(n)


# ---- sizes, nesting, eligibility, equivalences ----
def test_exact_sizes_nesting_and_eligibility(syn):
    sizes = ["10", "0.1", "50", "100", "248"]
    names = [f"{syn.name}@{s}" for s in sizes]
    register_subset_datasets(syn.cfg(names))
    eligible = set(eligible_ids(syn.name))
    assert len(eligible) == 248  # what Detectron2's FILTER_EMPTY_ANNOTATIONS keeps
    subsets = [ids(n) for n in names]
    assert [len(s) for s in subsets] == [10, 24, 50, 100, 248]
    for small, large in zip(subsets, subsets[1:]):
        assert set(small) < set(large)
    assert set(subsets[-1]) == eligible  # never an empty, crowd-only or invalid-polygon image
    # a subset stays whole through Detectron2's filter, so '@10k' trains on 10k images
    assert len(get_detection_dataset_dicts([names[2]])) == 50
    # the record's ids are in selection order: a prefix is the smaller subset
    order = get_subset_record(names[3])["image_ids"]
    assert order[:50] == get_subset_record(names[2])["image_ids"]


def test_fraction_equals_count_and_spellings_agree(syn):
    names = [f"{syn.name}@{s}" for s in ("0.25", "25%", "62", "0.062k")]
    register_subset_datasets(syn.cfg(names))
    first = ids(names[0])
    assert len(first) == 62  # floor(0.25 * 248)
    for name in names[1:]:
        assert ids(name) == first


def test_seed_changes_subset_not_run_seed(syn):
    name = f"{syn.name}@40"
    cfg = syn.cfg([name])
    cfg.SEED = 1
    register_subset_datasets(cfg)
    seed0 = ids(name)
    cfg.SEED = 12345
    register_subset_datasets(cfg)
    assert ids(name) == seed0
    cfg.RETHINK.DATA.SUBSET_SEED = 1  # re-registers the same name with the new seed
    register_subset_datasets(cfg)
    seed1 = ids(name)
    assert seed1 != seed0 and len(seed1) == 40
    register_subset_datasets(syn.cfg([f"{syn.name}@40:seed1"]))
    assert ids(f"{syn.name}@40:seed1") == seed1


def test_fast_path_equals_generic_path(syn):
    generic = syn.register_generic()
    register_subset_datasets(syn.cfg([f"{syn.name}@60", f"{generic}@60"]))
    fast_dicts = DatasetCatalog.get(f"{syn.name}@60")
    generic_dicts = DatasetCatalog.get(f"{generic}@60")
    assert fast_dicts == generic_dicts
    assert "json_file" not in MetadataCatalog.get(generic).as_dict()
    assert MetadataCatalog.get(f"{syn.name}@60").json_file.startswith(syn.cache)
    fast_meta = MetadataCatalog.get(f"{syn.name}@60")
    assert fast_meta.thing_classes == [c["name"] for c in CATEGORIES]
    assert MetadataCatalog.get(f"{generic}@60").thing_classes == fast_meta.thing_classes
    assert fast_meta.evaluator_type == "coco"
    stats = get_subset_record(f"{syn.name}@60")["stats"]
    assert stats == get_subset_record(f"{generic}@60")["stats"]
    assert stats["images"] == 60 and stats["zero_instance_categories"] == ["cat8"]
    assert sum(stats["per_category"].values()) == stats["instances"]


def test_json_written_by_the_loader_on_first_use(syn, tmp_path):
    """A COCO-json dataset whose loader creates its json (like the built-in shapes dataset)."""
    name, later = f"{syn.name}_lazy", str(tmp_path / "later.json")

    def loader():
        if not os.path.exists(later):
            write_coco(later)
        return load_coco_json(later, syn.root, name)

    DatasetCatalog.register(name, loader)
    MetadataCatalog.get(name).set(json_file=later, image_root=syn.root, evaluator_type="coco")
    register_subset(f"{name}@30", cache_dir=syn.cache)
    first = ids(f"{name}@30")  # generic path: the json does not exist yet
    assert os.path.exists(later) and not os.path.isdir(syn.cache)
    assert ids(f"{name}@30") == first  # fast path from now on
    assert os.path.isdir(syn.cache)
    register_subset(f"{syn.name}@30", cache_dir=syn.cache)
    assert ids(f"{syn.name}@30") == first


def test_cache_is_used_and_invalidated(syn, monkeypatch):
    name = register_subset(f"{syn.name}@30", cache_dir=syn.cache)
    first = ids(name)
    real_read = coco_fast.read_coco_json

    def must_not_read(*args, **kwargs):
        raise AssertionError("the full json was read although the cache is warm")

    monkeypatch.setattr(coco_fast, "read_coco_json", must_not_read)
    assert ids(name) == first
    # a changed source file invalidates the entry
    os.utime(syn.json, ns=(1, 1))
    with pytest.raises(AssertionError, match="cache is warm"):
        DatasetCatalog.get(name)
    monkeypatch.setattr(coco_fast, "read_coco_json", real_read)
    assert ids(name) == first


def test_identical_across_processes_seeds_and_registration_order(syn):
    generic = syn.register_generic()
    names = [f"{syn.name}@25", f"{syn.name}@0.5", f"{generic}@25"]
    register_subset_datasets(syn.cfg(names))
    here = {n: ids(n) for n in names}
    code = f"""
import json, sys
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog
from detectron2.data.datasets import load_coco_json, register_coco_instances
from rethink_d2 import add_rethink_config
from rethink_d2.data import register_subset_datasets
register_coco_instances({syn.name!r}, {{}}, {syn.json!r}, {syn.root!r})
DatasetCatalog.register(
    {generic!r}, lambda: load_coco_json({syn.json!r}, {syn.root!r}, {generic!r})
)
cfg = get_cfg(); add_rethink_config(cfg)
cfg.SEED = 987
cfg.DATASETS.TRAIN = tuple(reversed({names!r}))
cfg.DATASETS.TEST = ()
cfg.RETHINK.DATA.SUBSET_CACHE_DIR = sys.argv[1]
register_subset_datasets(cfg)
print(json.dumps({{n: [d["image_id"] for d in DatasetCatalog.get(n)] for n in cfg.DATASETS.TRAIN}}))
"""
    env = dict(os.environ, PYTHONHASHSEED="123", PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-c", code, os.path.join(syn.root, "other_cache")],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    there = json.loads(proc.stdout.strip().splitlines()[-1])
    assert there == here


# ---- manifest ----
def test_manifest_written_reused_and_guarded(syn):
    name = f"{syn.name}@40"
    cfg = syn.cfg([name])
    register_subset_datasets(cfg)
    DatasetCatalog.get(name)
    path = write_run_manifest(cfg)
    assert path == os.path.join(cfg.OUTPUT_DIR, MANIFEST_NAME)
    with open(path) as f:
        manifest = json.load(f)
    entry = manifest["subsets"][name]
    assert entry["image_ids"] == get_subset_record(name)["image_ids"]
    assert sorted(entry["image_ids"]) == sorted(ids(name))
    assert entry["stats"]["images"] == 40 and entry["seed"] == 0 and entry["base"] == syn.name
    assert set(entry["stats"]) >= {"instances", "per_category", "zero_instance_categories"}

    # an identical manifest is left untouched
    os.utime(path, ns=(5, 5))
    assert write_run_manifest(cfg) == path
    assert os.stat(path).st_mtime_ns == 5

    # a different subset in the same OUTPUT_DIR is refused
    other = syn.cfg([name], SUBSET_SEED=7)
    register_subset_datasets(other)
    DatasetCatalog.get(name)
    with pytest.raises(DatasetError, match="records a different subset.*SUBSET_MANIFEST"):
        write_run_manifest(other)

    # reuse: the manifest's ids win over the (different) subset seed, also in another spelling
    for reused in (name, f"{syn.name}@0.1613"):  # floor(0.1613 * 248) == 40
        register_subset_datasets(syn.cfg([reused], SUBSET_SEED=7, SUBSET_MANIFEST=path))
        assert sorted(ids(reused)) == sorted(entry["image_ids"])
        assert get_subset_record(reused)["selection"] == f"manifest:{path}"
        assert get_subset_record(reused)["image_ids"] == entry["image_ids"]


def test_manifest_mismatches(syn, tmp_path):
    name = f"{syn.name}@40"
    cfg = syn.cfg([name])
    register_subset_datasets(cfg)
    DatasetCatalog.get(name)
    path = write_run_manifest(cfg)
    with pytest.raises(DatasetError, match="lists 40 images .* asks for 30"):
        register_subset_datasets(syn.cfg([f"{syn.name}@30"], SUBSET_MANIFEST=path))
    register_subset_datasets(syn.cfg([f"{syn.name}@0.5"], SUBSET_MANIFEST=path))
    with pytest.raises(DatasetError, match="lists 40 images but .* means 124"):
        DatasetCatalog.get(f"{syn.name}@0.5")
    with pytest.raises(DatasetError, match="SUBSET_MANIFEST .* does not exist"):
        register_subset_datasets(syn.cfg([name], SUBSET_MANIFEST=str(tmp_path / "none.json")))
    (tmp_path / "bad.json").write_text('{"format": "something else"}')
    with pytest.raises(DatasetError, match="is not a rethink-d2 subset manifest"):
        register_subset_datasets(syn.cfg([name], SUBSET_MANIFEST=str(tmp_path / "bad.json")))
    with pytest.raises(ConfigError, match="SUBSET_MANIFEST .* no dataset in DATASETS.TRAIN"):
        resolve_config(syn.cfg([syn.name], SUBSET_MANIFEST=path))
    # ids that are not in the dataset (a manifest of another dataset version)
    with open(path) as f:
        manifest = json.load(f)
    manifest["subsets"][name]["image_ids"][0] = 999999
    with open(tmp_path / "edited.json", "w") as f:
        json.dump(manifest, f)
    register_subset_datasets(syn.cfg([name], SUBSET_MANIFEST=str(tmp_path / "edited.json")))
    with pytest.raises(DatasetError, match=r"1 image ids that are not eligible.*\[999999\]"):
        DatasetCatalog.get(name)


def test_user_registered_name_is_left_alone(syn):
    name = f"{syn.name}@mine"
    DatasetCatalog.register(name, lambda: [{"image_id": 1}])
    assert register_subset_datasets(syn.cfg([name])) == []
    assert DatasetCatalog.get(name) == [{"image_id": 1}]
    DatasetCatalog.register(f"{syn.name}@7", lambda: [])
    with pytest.raises(DatasetError, match="already registered by someone else"):
        register_subset(f"{syn.name}@7")


def test_resolve_config_registers_subsets(syn):
    from rethink_d2 import resolve_config

    cfg = syn.cfg([f"{syn.name}@20"])
    cfg.RETHINK.SCRATCH_GUARD = False
    resolved = resolve_config(cfg)
    assert resolved.DATASETS.TRAIN == (f"{syn.name}@20",)
    assert len(DatasetCatalog.get(f"{syn.name}@20")) == 20


# ---- tools/make_subset.py ----
def _make_subset_module():
    spec = importlib.util.spec_from_file_location(
        "make_subset", os.path.join(REPO, "tools", "make_subset.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_make_subset_tool(syn, tmp_path, capsys):
    cfg = syn.cfg([f"{syn.name}@35"], SUBSET_SEED=4)
    register_subset_datasets(cfg)
    DatasetCatalog.get(f"{syn.name}@35")
    manifest = write_run_manifest(cfg)
    out = str(tmp_path / "sub.json")
    tool = os.path.join(REPO, "tools", "make_subset.py")
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    proc = subprocess.run(  # the command line once; the other cases in-process
        [sys.executable, tool, "--json", syn.json, "--size", "35", "--seed", "4", "--output", out],
        capture_output=True,
        text=True,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    outputs = [proc.stdout]
    make_subset = _make_subset_module()
    make_subset.main(["--json", syn.json, "--manifest", manifest, "--output", out + "2"])
    outputs.append(capsys.readouterr().out)
    for path, stdout in zip([out, out + "2"], outputs):
        assert "35 of 248 eligible images" in stdout
        assert 'categories with zero instances (1): ["cat8"]' in stdout
        with open(path) as f:
            sub = json.load(f)
        assert sorted(img["id"] for img in sub["images"]) == sorted(ids(f"{syn.name}@35"))
        assert sub["categories"] == CATEGORIES
        assert {a["image_id"] for a in sub["annotations"]} <= {img["id"] for img in sub["images"]}
        assert (
            sub["info"]["rethink_d2_subset"]["image_ids"]
            == get_subset_record(f"{syn.name}@35")["image_ids"]
        )
    with pytest.raises(SystemExit) as e:
        make_subset.main(["--json", syn.json, "--size", "1.5", "--output", out])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("rethink-d2: error: bad subset size '1.5'")
