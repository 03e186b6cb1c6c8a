"""Tests of the sampler registry, SubsetTrainingSampler (determinism, sharding, repeat factors)
and build_train_loader (aspect-ratio grouping, worker counts, manifests, 2 gloo processes)."""

import itertools
import json
import os

import pytest
import torch
import torch.multiprocessing as mp
from detectron2.data import DatasetCatalog, get_detection_dataset_dicts
from detectron2.data import samplers as d2_samplers
from test_subsets import Synthetic, ids

from rethink_d2.data import SAMPLER_REGISTRY, build_train_loader, build_train_sampler
from rethink_d2.data.samplers import SubsetTrainingSampler
from rethink_d2.data.subsets import MANIFEST_NAME, get_subset_record, register_subset_datasets
from rethink_d2.utils.errors import ConfigError, DatasetError


@pytest.fixture
def syn(tmp_path):
    ds = Synthetic(tmp_path)
    yield ds
    ds.cleanup()


@pytest.fixture
def syn_images(tmp_path):
    ds = Synthetic(tmp_path, num_images=40, with_images=True)
    yield ds
    ds.cleanup()


def sampler_cfg(ds, subset="50", **data):
    cfg = ds.cfg([ds.name], SAMPLER_SUBSET=subset, **data)
    cfg.DATALOADER.SAMPLER_TRAIN = "SubsetTrainingSampler"
    return cfg


def first_epoch(stream, n):
    return list(itertools.islice(stream, n))


# ---- registry ----
def test_registry_covers_detectron2_samplers(syn):
    dataset = get_detection_dataset_dicts([syn.name])
    cfg = syn.cfg([syn.name])
    assert {"TrainingSampler", "RepeatFactorTrainingSampler", "SubsetTrainingSampler"} <= {
        name for name, _ in SAMPLER_REGISTRY
    }
    assert isinstance(build_train_sampler(cfg, dataset), d2_samplers.TrainingSampler)
    cfg.DATALOADER.SAMPLER_TRAIN = "RepeatFactorTrainingSampler"
    cfg.DATALOADER.REPEAT_THRESHOLD = 0.5
    assert isinstance(build_train_sampler(cfg, dataset), d2_samplers.RepeatFactorTrainingSampler)
    cfg.DATALOADER.SAMPLER_TRAIN = "WeightedTrainingSampler"  # left to Detectron2's loader
    assert build_train_sampler(cfg, dataset) is None


@pytest.mark.parametrize(
    "sampler, data, error, message",
    [
        ("NoSuchSampler", {}, ConfigError, "'NoSuchSampler' is not a registered sampler; use one "),
        ("RandomSubsetTrainingSampler", {}, ConfigError, "RANDOM_SUBSET_RATIO, which is not in"),
        ("SubsetTrainingSampler", {}, ConfigError, "needs RETHINK.DATA.SAMPLER_SUBSET"),
        ("TrainingSampler", {"SAMPLER_SUBSET": "10"}, ConfigError, "only applies to"),
        ("SubsetTrainingSampler", {"SAMPLER_SUBSET": "1.5"}, DatasetError, "(0, 1]"),
        ("SubsetTrainingSampler", {"SAMPLER_SUBSET": "0"}, DatasetError, "at least 1"),
        ("SubsetTrainingSampler", {"SAMPLER_SUBSET": "999"}, DatasetError, "asks for 999"),
    ],
)
def test_bad_sampler_settings(syn, sampler, data, error, message):
    cfg = syn.cfg([syn.name], **data)
    cfg.DATALOADER.SAMPLER_TRAIN = sampler
    with pytest.raises(error) as e:
        register_subset_datasets(cfg)
        build_train_sampler(cfg, get_detection_dataset_dicts([syn.name]))
    assert message in str(e.value) and "\n" not in str(e.value)
    if sampler == "NoSuchSampler":
        assert "SubsetTrainingSampler" in str(e.value) and "TrainingSampler" in str(e.value)


# ---- SubsetTrainingSampler ----
def test_subset_sampler_equals_dataset_subset_and_ignores_run_seed(syn):
    register_subset_datasets(syn.cfg([f"{syn.name}@50"]))
    expected = ids(f"{syn.name}@50")
    for filter_empty in (True, False):  # empty images in the dataset never enter the subset
        dataset = get_detection_dataset_dicts([syn.name], filter_empty=filter_empty)
        orders = []
        for seed in (3, 4):
            cfg = sampler_cfg(syn)
            cfg.SEED = seed
            sampler = build_train_sampler(cfg, dataset)
            assert isinstance(sampler, SubsetTrainingSampler)
            assert sorted(dataset[i]["image_id"] for i in sampler._indices.tolist()) == sorted(
                expected
            )
            assert sampler.record["image_ids"] == get_subset_record(f"{syn.name}@50")["image_ids"]
            assert sampler.record["level"] == "sampler" and sampler.record["stats"]["images"] == 50
            epoch = first_epoch(iter(sampler), 50)
            assert sorted(epoch) == sorted(sampler._indices.tolist())
            orders.append(epoch)
        assert orders[0] != orders[1]  # SEED changes the order only


def test_two_ranks_shard_without_overlap():
    subset = [3, 17, 42, 5, 99, 64, 8, 71, 23, 50]
    local = [
        first_epoch(SubsetTrainingSampler.local_indices(subset, 7, rank, 2), len(subset) // 2)
        for rank in (0, 1)
    ]
    assert not set(local[0]) & set(local[1])
    assert sorted(local[0] + local[1]) == sorted(subset)
    single = first_epoch(SubsetTrainingSampler.local_indices(subset, 7, 0, 1), 40)
    assert single[0::2] == first_epoch(SubsetTrainingSampler.local_indices(subset, 7, 0, 2), 20)
    assert single[1::2] == first_epoch(SubsetTrainingSampler.local_indices(subset, 7, 1, 2), 20)
    assert set(single) == set(subset)


def test_repeat_factors_over_full_dataset(syn):
    dataset = get_detection_dataset_dicts([syn.name])
    cfg = sampler_cfg(syn, "30")
    cfg.DATALOADER.REPEAT_THRESHOLD = 0.9
    cfg.SEED = 1
    sampler = build_train_sampler(cfg, dataset)
    assert sampler._repeat_factors is not None and sampler._repeat_factors.max() > 1
    stream = first_epoch(iter(sampler), 300)
    assert set(stream) == set(sampler._indices.tolist())
    assert len(set(stream[:30])) < 30  # some images repeat within a pass


def test_sampler_manifest_round_trip(syn):
    dataset = get_detection_dataset_dicts([syn.name])
    cfg = sampler_cfg(syn, "0.2")
    sampler = build_train_sampler(cfg, dataset)
    from rethink_d2.data.subsets import write_run_manifest

    path = write_run_manifest(cfg, sampler)
    with open(path) as f:
        entry = json.load(f)["subsets"]["SubsetTrainingSampler"]
    assert entry["image_ids"] == sampler.record["image_ids"] and len(entry["image_ids"]) == 49
    reused = build_train_sampler(
        sampler_cfg(syn, "0.2", SUBSET_SEED=5, SUBSET_MANIFEST=path), dataset
    )
    assert reused._indices.tolist() == sampler._indices.tolist()
    with pytest.raises(DatasetError, match="lists 49 images but .* means 50"):
        build_train_sampler(sampler_cfg(syn, "50", SUBSET_MANIFEST=path), dataset)


# ---- the loader ----
def loader_cfg(ds, train, workers):
    cfg = ds.cfg(train)
    cfg.INPUT.MIN_SIZE_TRAIN = (24,)
    cfg.INPUT.MAX_SIZE_TRAIN = 32
    cfg.SOLVER.IMS_PER_BATCH = 2
    cfg.DATALOADER.NUM_WORKERS = workers
    cfg.DATALOADER.ASPECT_RATIO_GROUPING = True
    cfg.SEED = 0
    return cfg


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_yields_only_the_subset(syn_images, workers):
    name = f"{syn_images.name}@12"
    cfg = loader_cfg(syn_images, [name], workers)
    register_subset_datasets(cfg)
    batches = list(itertools.islice(iter(build_train_loader(cfg)), 12))
    subset = set(ids(name))
    seen = [d["image_id"] for batch in batches for d in batch]
    assert set(seen) <= subset and len(set(seen)) >= 8
    for batch in batches:  # aspect-ratio grouping still applies
        assert len(batch) == 2
        assert len({d["width"] > d["height"] for d in batch}) == 1
        assert batch[0]["image"].shape[0] == 3
    with open(os.path.join(cfg.OUTPUT_DIR, MANIFEST_NAME)) as f:
        assert sorted(json.load(f)["subsets"][name]["image_ids"]) == sorted(subset)


def test_loader_with_subset_sampler_and_workers(syn_images):
    cfg = loader_cfg(syn_images, [syn_images.name], 2)
    cfg.DATALOADER.SAMPLER_TRAIN = "SubsetTrainingSampler"
    cfg.RETHINK.DATA.SAMPLER_SUBSET = "10"
    batches = list(itertools.islice(iter(build_train_loader(cfg)), 12))
    with open(os.path.join(cfg.OUTPUT_DIR, MANIFEST_NAME)) as f:
        subset = set(json.load(f)["subsets"]["SubsetTrainingSampler"]["image_ids"])
    seen = {d["image_id"] for batch in batches for d in batch}
    assert len(subset) == 10 and seen <= subset and len(seen) >= 7


def _rank_worker(rank, root, json_file, name):
    """One of 2 gloo processes: the subset dataset's ids and this rank's sampler stream."""
    import torch.distributed as dist
    from detectron2.config import get_cfg
    from detectron2.data.datasets import register_coco_instances

    from rethink_d2 import add_rethink_config

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{root}/pg", rank=rank, world_size=2)
    register_coco_instances(name, {}, json_file, root)
    cfg = get_cfg()
    add_rethink_config(cfg)
    cfg.DATASETS.TRAIN = (name,)
    cfg.RETHINK.DATA.SUBSET_CACHE_DIR = os.path.join(root, f"cache{rank}")
    cfg.DATALOADER.SAMPLER_TRAIN = "SubsetTrainingSampler"
    cfg.RETHINK.DATA.SAMPLER_SUBSET = "40"
    cfg.SEED = 11
    register_subset_datasets(cfg)
    subset_cfg = cfg.clone()
    subset_cfg.DATASETS.TRAIN = (f"{name}@25",)
    register_subset_datasets(subset_cfg)
    dataset = get_detection_dataset_dicts([name])
    sampler = build_train_sampler(cfg, dataset)
    out = {
        "dataset_subset": [d["image_id"] for d in DatasetCatalog.get(f"{name}@25")],
        "indices": sampler._indices.tolist(),
        "stream": first_epoch(iter(sampler), 20),
        "world_size": dist.get_world_size(),
    }
    with open(os.path.join(root, f"rank{rank}.json"), "w") as f:
        json.dump(out, f)
    dist.destroy_process_group()


def test_two_gloo_processes(syn):
    register_subset_datasets(syn.cfg([f"{syn.name}@25"]))
    mp.spawn(_rank_worker, args=(syn.root, syn.json, syn.name), nprocs=2, join=True)
    ranks = []
    for rank in (0, 1):
        with open(os.path.join(syn.root, f"rank{rank}.json")) as f:
            ranks.append(json.load(f))
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert ranks[0]["dataset_subset"] == ranks[1]["dataset_subset"] == ids(f"{syn.name}@25")
    assert ranks[0]["indices"] == ranks[1]["indices"]
    assert not set(ranks[0]["stream"]) & set(ranks[1]["stream"])
    assert sorted(ranks[0]["stream"] + ranks[1]["stream"]) == sorted(ranks[0]["indices"])
    # the same subset as one process (world size 1) selects
    cfg = sampler_cfg(syn, "40")
    single = build_train_sampler(cfg, get_detection_dataset_dicts([syn.name]))
    assert single._indices.tolist() == ranks[0]["indices"]
