"""Every shipped experiment config: it parses, carries the paper's recipe, and its model trains.

The table below holds the paper's numbers (He, Girshick & Dollar, "Rethinking ImageNet
Pre-training", ICCV 2019) as literals, copied from the project's reference notes; nothing reads
those notes at run time. Where the paper is silent the row says so and holds the package's choice
(documented in the config itself and in the README).
"""

import json
import math
import os
from collections import namedtuple

import pytest
import torch
import yaml
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog
from detectron2.structures import BitMasks, Boxes, Instances, Keypoints
from detectron2.utils.events import EventStorage

import rethink_d2  # noqa: F401  (registers the backbone, keypoint head and datasets)
from rethink_d2 import add_rethink_config, model_zoo, resolve_config
from rethink_d2.modeling import build_model

CONFIG_DIR = model_zoo.get_config_dir()

# ---- data and input of the paper's experiments ----
COCO = (("coco_2017_train",), ("coco_2017_val",))
COCO_KP = (("keypoints_coco_2017_train",), ("keypoints_coco_2017_val",))
# VOC2007 trainval + VOC2012 train -> VOC2012 val, Detectron2's registered names
VOC = (("voc_2007_trainval", "voc_2012_train"), ("voc_2012_val",))


def subset(size):
    """COCO train2017 subset of ``size`` images (nested draws, RETHINK.DATA.SUBSET_SEED)."""
    return ((f"coco_2017_train@{size}",), ("coco_2017_val",))


S800 = (800,)  # the paper: shorter side 800 (max 1333), flip only
S640_800 = (640, 672, 704, 736, 768, 800)  # enhanced runs and Detectron2's zoo: [640, 800]
S512_800 = (512, 544, 576, 608, 640, 672, 704, 736, 768, 800)  # the 35k recipe: [512, 800]
S480_800 = (480, 512, 544, 576, 608, 640, 672, 704, 736, 768, 800)  # Detectron2's VOC configs

# ---- initial weights ----
SCRATCH = ""
R50_GN = "catalog://ImageNetPretrained/FAIR/R-50-GN"
R101_GN = "catalog://ImageNetPretrained/FAIR/R-101-GN"
R50_MSRA = "detectron2://ImageNetPretrained/MSRA/R-50.pkl"  # BN-trained, for SyncBN
PHASE1 = "model_cascade_init.pth"  # cascade phase 2 starts from converted phase 1
TRAINED = "model_final.pth"  # test-time augmentation evaluates a trained model

Row = namedtuple(
    "Row", "config arch weights norm max_iter steps base_lr batch gamma data min_size_train"
)

# fmt: off
TABLE = [
    # Mask R-CNN R50-FPN GN: scratch 2x-6x; 1x = 90k, Nx = N*90k, LR /10 at the last 60k, 20k
    Row("scratch_R50_GN_2x.yaml", "mask_R50_GN", SCRATCH, "GN",
        180000, (120000, 160000), 0.02, 16, 0.1, COCO, S800),
    Row("scratch_R50_GN_3x.yaml", "mask_R50_GN", SCRATCH, "GN",
        270000, (210000, 250000), 0.02, 16, 0.1, COCO, S800),
    Row("scratch_R50_GN_4x.yaml", "mask_R50_GN", SCRATCH, "GN",
        360000, (300000, 340000), 0.02, 16, 0.1, COCO, S800),
    Row("scratch_R50_GN_5x.yaml", "mask_R50_GN", SCRATCH, "GN",
        450000, (390000, 430000), 0.02, 16, 0.1, COCO, S800),
    Row("scratch_R50_GN_6x.yaml", "mask_R50_GN", SCRATCH, "GN",
        540000, (480000, 520000), 0.02, 16, 0.1, COCO, S800),
    # pre-trained counterparts; 1x is Detectron's (60k, 80k)
    Row("pretrain_R50_GN_1x.yaml", "mask_R50_GN", R50_GN, "GN",
        90000, (60000, 80000), 0.02, 16, 0.1, COCO, S800),
    Row("pretrain_R50_GN_2x.yaml", "mask_R50_GN", R50_GN, "GN",
        180000, (120000, 160000), 0.02, 16, 0.1, COCO, S800),
    Row("pretrain_R50_GN_3x.yaml", "mask_R50_GN", R50_GN, "GN",
        270000, (210000, 250000), 0.02, 16, 0.1, COCO, S800),
    Row("pretrain_R50_GN_6x.yaml", "mask_R50_GN", R50_GN, "GN",
        540000, (480000, 520000), 0.02, 16, 0.1, COCO, S800),
    # R101-FPN GN
    Row("scratch_R101_GN_2x.yaml", "mask_R101_GN", SCRATCH, "GN",
        180000, (120000, 160000), 0.02, 16, 0.1, COCO, S800),
    Row("scratch_R101_GN_3x.yaml", "mask_R101_GN", SCRATCH, "GN",
        270000, (210000, 250000), 0.02, 16, 0.1, COCO, S800),
    Row("scratch_R101_GN_4x.yaml", "mask_R101_GN", SCRATCH, "GN",
        360000, (300000, 340000), 0.02, 16, 0.1, COCO, S800),
    Row("scratch_R101_GN_5x.yaml", "mask_R101_GN", SCRATCH, "GN",
        450000, (390000, 430000), 0.02, 16, 0.1, COCO, S800),
    Row("scratch_R101_GN_6x.yaml", "mask_R101_GN", SCRATCH, "GN",
        540000, (480000, 520000), 0.02, 16, 0.1, COCO, S800),
    Row("pretrain_R101_GN_1x.yaml", "mask_R101_GN", R101_GN, "GN",
        90000, (60000, 80000), 0.02, 16, 0.1, COCO, S800),
    Row("pretrain_R101_GN_2x.yaml", "mask_R101_GN", R101_GN, "GN",
        180000, (120000, 160000), 0.02, 16, 0.1, COCO, S800),
    Row("pretrain_R101_GN_3x.yaml", "mask_R101_GN", R101_GN, "GN",
        270000, (210000, 250000), 0.02, 16, 0.1, COCO, S800),
    Row("pretrain_R101_GN_6x.yaml", "mask_R101_GN", R101_GN, "GN",
        540000, (480000, 520000), 0.02, 16, 0.1, COCO, S800),
    # R50-FPN SyncBN (MSRA's BN weights put the stride in the 1x1 conv: another architecture)
    Row("scratch_R50_SyncBN_2x.yaml", "mask_R50_SyncBN", SCRATCH, "SyncBN",
        180000, (120000, 160000), 0.02, 16, 0.1, COCO, S800),
    Row("scratch_R50_SyncBN_3x.yaml", "mask_R50_SyncBN", SCRATCH, "SyncBN",
        270000, (210000, 250000), 0.02, 16, 0.1, COCO, S800),
    Row("scratch_R50_SyncBN_4x.yaml", "mask_R50_SyncBN", SCRATCH, "SyncBN",
        360000, (300000, 340000), 0.02, 16, 0.1, COCO, S800),
    Row("scratch_R50_SyncBN_5x.yaml", "mask_R50_SyncBN", SCRATCH, "SyncBN",
        450000, (390000, 430000), 0.02, 16, 0.1, COCO, S800),
    Row("scratch_R50_SyncBN_6x.yaml", "mask_R50_SyncBN", SCRATCH, "SyncBN",
        540000, (480000, 520000), 0.02, 16, 0.1, COCO, S800),
    Row("pretrain_R50_SyncBN_1x.yaml", "mask_R50_SyncBN_msra", R50_MSRA, "SyncBN",
        90000, (60000, 80000), 0.02, 16, 0.1, COCO, S800),
    Row("pretrain_R50_SyncBN_2x.yaml", "mask_R50_SyncBN_msra", R50_MSRA, "SyncBN",
        180000, (120000, 160000), 0.02, 16, 0.1, COCO, S800),
    Row("pretrain_R50_SyncBN_3x.yaml", "mask_R50_SyncBN_msra", R50_MSRA, "SyncBN",
        270000, (210000, 250000), 0.02, 16, 0.1, COCO, S800),
    Row("pretrain_R50_SyncBN_6x.yaml", "mask_R50_SyncBN_msra", R50_MSRA, "SyncBN",
        540000, (480000, 520000), 0.02, 16, 0.1, COCO, S800),
    # Detectron2's zoo scratch 9x at batch 64: 90k*9/4, steps at the last 60k/4 and 20k/4, LR 0.08
    Row("scratch_R50_GN_9x_bs64.yaml", "mask_R50_GN", SCRATCH, "GN",
        202500, (187500, 197500), 0.08, 64, 0.1, COCO, S640_800),
    Row("scratch_R50_SyncBN_9x_bs64.yaml", "mask_R50_SyncBN", SCRATCH, "SyncBN",
        202500, (187500, 197500), 0.08, 64, 0.1, COCO, S640_800),
    # enhanced (R101 GN): scale augmentation [640, 800], 9x scratch vs 6x pre-trained
    Row("enhanced/scratch_R101_GN_9x_ms.yaml", "mask_R101_GN", SCRATCH, "GN",
        810000, (750000, 790000), 0.02, 16, 0.1, COCO, S640_800),
    Row("enhanced/pretrain_R101_GN_6x_ms.yaml", "mask_R101_GN", R101_GN, "GN",
        540000, (480000, 520000), 0.02, 16, 0.1, COCO, S640_800),
    # cascade from scratch: Mask R-CNN for 810k - 270k = 540k (no drop yet), then cascade for the
    # final 270k with the 9x drops at 750k, 790k = 210k, 250k of phase 2
    Row("enhanced/scratch_R101_GN_9x_ms_cascade_phase1.yaml", "mask_R101_GN", SCRATCH, "GN",
        540000, (), 0.02, 16, 0.1, COCO, S640_800),
    Row("enhanced/scratch_R101_GN_9x_ms_cascade.yaml", "cascade_R101_GN", PHASE1, "GN",
        270000, (210000, 250000), 0.02, 16, 0.1, COCO, S640_800),
    Row("enhanced/scratch_R101_GN_9x_ms_cascade_tta.yaml", "cascade_R101_GN", TRAINED, "GN",
        270000, (210000, 250000), 0.02, 16, 0.1, COCO, S640_800),
    Row("enhanced/pretrain_R101_GN_6x_ms_cascade.yaml", "cascade_R101_GN", R101_GN, "GN",
        540000, (480000, 520000), 0.02, 16, 0.1, COCO, S640_800),
    Row("enhanced/pretrain_R101_GN_6x_ms_cascade_tta.yaml", "cascade_R101_GN", R101_GN, "GN",
        540000, (480000, 520000), 0.02, 16, 0.1, COCO, S640_800),
    # X152 (ResNeXt-152 32x8d) GN from scratch (schedule not given by the paper: the enhanced 9x)
    Row("enhanced/scratch_X152_GN_9x_ms.yaml", "mask_X152_GN", SCRATCH, "GN",
        810000, (750000, 790000), 0.02, 16, 0.1, COCO, S640_800),
    Row("enhanced/scratch_X152_GN_9x_ms_cascade_phase1.yaml", "mask_X152_GN", SCRATCH, "GN",
        540000, (), 0.02, 16, 0.1, COCO, S640_800),
    Row("enhanced/scratch_X152_GN_9x_ms_cascade.yaml", "cascade_X152_GN", PHASE1, "GN",
        270000, (210000, 250000), 0.02, 16, 0.1, COCO, S640_800),
    Row("enhanced/scratch_X152_GN_9x_ms_cascade_tta.yaml", "cascade_X152_GN", TRAINED, "GN",
        270000, (210000, 250000), 0.02, 16, 0.1, COCO, S640_800),
    # Keypoint R-CNN R50-FPN GN, 2x and 3x (input: Detectron2's keypoint configs)
    Row("keypoints/scratch_R50_GN_2x.yaml", "keypoint_R50_GN", SCRATCH, "GN",
        180000, (120000, 160000), 0.02, 16, 0.1, COCO_KP, S640_800),
    Row("keypoints/scratch_R50_GN_3x.yaml", "keypoint_R50_GN", SCRATCH, "GN",
        270000, (210000, 250000), 0.02, 16, 0.1, COCO_KP, S640_800),
    Row("keypoints/pretrain_R50_GN_2x.yaml", "keypoint_R50_GN", R50_GN, "GN",
        180000, (120000, 160000), 0.02, 16, 0.1, COCO_KP, S640_800),
    Row("keypoints/pretrain_R50_GN_3x.yaml", "keypoint_R50_GN", R50_GN, "GN",
        270000, (210000, 250000), 0.02, 16, 0.1, COCO_KP, S640_800),
    # less data: scale aug [512, 800], LR 0.04, LR decay factor 0.02; 35k at 6x;
    # 10k: 220k (scratch) vs 60k (pre-trained); 3.5k and 1k reuse the 10k setup (paper silent)
    Row("less_data/scratch_R50_GN_6x_35k.yaml", "mask_R50_GN", SCRATCH, "GN",
        540000, (480000, 520000), 0.04, 16, 0.02, subset("35k"), S512_800),
    Row("less_data/pretrain_R50_GN_6x_35k.yaml", "mask_R50_GN", R50_GN, "GN",
        540000, (480000, 520000), 0.04, 16, 0.02, subset("35k"), S512_800),
    Row("less_data/scratch_R50_GN_220kit_10k.yaml", "mask_R50_GN", SCRATCH, "GN",
        220000, (160000, 200000), 0.04, 16, 0.02, subset("10k"), S512_800),
    Row("less_data/pretrain_R50_GN_60kit_10k.yaml", "mask_R50_GN", R50_GN, "GN",
        60000, (30000, 50000), 0.04, 16, 0.02, subset("10k"), S512_800),
    Row("less_data/scratch_R50_GN_220kit_3.5k.yaml", "mask_R50_GN", SCRATCH, "GN",
        220000, (160000, 200000), 0.04, 16, 0.02, subset("3.5k"), S512_800),
    Row("less_data/pretrain_R50_GN_60kit_3.5k.yaml", "mask_R50_GN", R50_GN, "GN",
        60000, (30000, 50000), 0.04, 16, 0.02, subset("3.5k"), S512_800),
    Row("less_data/scratch_R50_GN_220kit_1k.yaml", "mask_R50_GN", SCRATCH, "GN",
        220000, (160000, 200000), 0.04, 16, 0.02, subset("1k"), S512_800),
    Row("less_data/pretrain_R50_GN_60kit_1k.yaml", "mask_R50_GN", R50_GN, "GN",
        60000, (30000, 50000), 0.04, 16, 0.02, subset("1k"), S512_800),
    # PASCAL VOC Faster R-CNN R101-FPN GN: 144k scratch vs 18k pre-trained (drops: last 6k, 2k)
    Row("voc/scratch_R101_GN_144kit.yaml", "faster_R101_GN_voc", SCRATCH, "GN",
        144000, (138000, 142000), 0.02, 16, 0.1, VOC, S480_800),
    Row("voc/pretrain_R101_GN_18kit.yaml", "faster_R101_GN_voc", R101_GN, "GN",
        18000, (12000, 16000), 0.02, 16, 0.1, VOC, S480_800),
]
# fmt: on

# What each architecture label means (checked on the resolved config).
ARCHS = {
    "mask_R50_GN": dict(depth=50, heads="StandardROIHeads", task="mask", stride_in_1x1=False),
    "mask_R101_GN": dict(depth=101, heads="StandardROIHeads", task="mask", stride_in_1x1=False),
    "mask_R50_SyncBN": dict(depth=50, heads="StandardROIHeads", task="mask", stride_in_1x1=False),
    "mask_R50_SyncBN_msra": dict(
        depth=50, heads="StandardROIHeads", task="mask", stride_in_1x1=True
    ),
    "cascade_R101_GN": dict(depth=101, heads="CascadeROIHeads", task="mask", stride_in_1x1=False),
    "mask_X152_GN": dict(
        depth=152, heads="StandardROIHeads", task="mask", stride_in_1x1=False, groups=(32, 8)
    ),
    "cascade_X152_GN": dict(
        depth=152, heads="CascadeROIHeads", task="mask", stride_in_1x1=False, groups=(32, 8)
    ),
    "keypoint_R50_GN": dict(
        depth=50, heads="StandardROIHeads", task="keypoint", stride_in_1x1=False
    ),
    "faster_R101_GN_voc": dict(
        depth=101, heads="StandardROIHeads", task="box", stride_in_1x1=False
    ),
}
IMAGENET_STD = [57.375, 57.12, 58.395]
TTA_SIZES = (400, 500, 600, 700, 800, 900, 1000, 1100, 1200)
BY_CONFIG = {row.config: row for row in TABLE}


def load(config, world_size=1, device=None):
    """get_cfg -> add_rethink_config -> merge_from_file -> resolve_config, as train_net does."""
    cfg = get_cfg()
    add_rethink_config(cfg)
    cfg.merge_from_file(model_zoo.get_config_file(config))
    if device is not None:
        cfg.MODEL.DEVICE = device
    return resolve_config(cfg, world_size=world_size)


def shipped_experiment_configs():
    """The paper's experiments (lsj/ follows Detectron2's new_baselines: tests/test_lsj.py)."""
    return [
        c
        for c in model_zoo.list_configs()
        if not os.path.basename(c).startswith("Base-")
        and not c.startswith(("quickstart/", "lsj/"))
    ]


def test_every_shipped_config_is_in_the_table():
    shipped = set(shipped_experiment_configs())
    assert shipped == set(BY_CONFIG), (
        f"untested configs: {sorted(shipped - set(BY_CONFIG))}; "
        f"missing configs: {sorted(set(BY_CONFIG) - shipped)}"
    )
    assert len(BY_CONFIG) == len(TABLE)
    assert set(row.arch for row in TABLE) == set(ARCHS)


@pytest.mark.parametrize("config", model_zoo.list_configs())
def test_base_chain_stays_inside_the_package(config):
    """_BASE_ paths are relative to the file and never leave configs/ (no Detectron2 checkout)."""
    root = os.path.realpath(CONFIG_DIR)
    path = os.path.realpath(model_zoo.get_config_file(config))
    seen = [path]
    while True:
        with open(path) as f:
            base = (yaml.safe_load(f) or {}).get("_BASE_")
        if base is None:
            break
        assert not os.path.isabs(base) and "detectron2" not in base, (path, base)
        path = os.path.realpath(os.path.join(os.path.dirname(path), base))
        assert os.path.commonpath([path, root]) == root, f"{config}: _BASE_ leaves configs/"
        assert os.path.isfile(path) and path not in seen, f"{config}: bad _BASE_ {base}"
        seen.append(path)


@pytest.mark.parametrize("row", TABLE, ids=lambda r: r.config)
def test_config_carries_the_paper_recipe(row):
    cfg = load(row.config)
    solver, model = cfg.SOLVER, cfg.MODEL
    # schedule
    assert solver.MAX_ITER == row.max_iter
    assert tuple(solver.STEPS) == row.steps
    assert math.isclose(solver.BASE_LR, row.base_lr, rel_tol=1e-12)
    assert solver.IMS_PER_BATCH == row.batch
    assert math.isclose(solver.GAMMA, row.gamma, rel_tol=1e-12)
    # optimizer: SGD momentum 0.9, weight decay 1e-4, none on norm parameters (Detectron)
    assert solver.MOMENTUM == 0.9 and solver.WEIGHT_DECAY == 1e-4 and solver.WEIGHT_DECAY_NORM == 0
    # a learning curve: at least 5 evaluations, one every 10k iterations at batch 16 or more often
    assert 0 < cfg.TEST.EVAL_PERIOD <= min(row.max_iter // 5, 10000 * 16 // row.batch)
    # data and input
    assert tuple(cfg.DATASETS.TRAIN) == row.data[0] and tuple(cfg.DATASETS.TEST) == row.data[1]
    assert tuple(cfg.INPUT.MIN_SIZE_TRAIN) == row.min_size_train
    assert cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING == "choice"
    assert (cfg.INPUT.MAX_SIZE_TRAIN, cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST) == (
        1333,
        800,
        1333,
    )
    # norm everywhere, nothing frozen, in scratch and pre-trained runs alike
    assert cfg.RETHINK.NORM == row.norm
    assert model.BACKBONE.NAME == "build_rethink_resnet_fpn_backbone"
    assert model.BACKBONE.FREEZE_AT == 0
    # initialization and matching input statistics
    assert cfg.RETHINK.SCRATCH == (row.weights in (SCRATCH, PHASE1, TRAINED))
    if row.weights in (PHASE1, TRAINED):
        assert os.path.basename(model.WEIGHTS) == row.weights
        assert cfg.RETHINK.SCRATCH_GUARD is False  # loads its own earlier phase, not ImageNet
    else:
        assert model.WEIGHTS == row.weights
    if row.weights == R50_MSRA:
        assert list(model.PIXEL_STD) == [1.0, 1.0, 1.0] and model.RESNETS.STRIDE_IN_1X1
    elif row.weights in (R50_GN, R101_GN):
        assert list(model.PIXEL_STD) == [1.0, 1.0, 1.0] and not model.RESNETS.STRIDE_IN_1X1
    else:
        assert list(model.PIXEL_STD) == IMAGENET_STD
    assert list(model.PIXEL_MEAN) == [103.53, 116.28, 123.675] and cfg.INPUT.FORMAT == "BGR"
    # test-time augmentation only in the *_tta configs: flip + 400..1200 (Detectron's)
    assert cfg.TEST.AUG.ENABLED == row.config.endswith("_tta.yaml")
    if cfg.TEST.AUG.ENABLED:
        assert tuple(cfg.TEST.AUG.MIN_SIZES) == TTA_SIZES and cfg.TEST.AUG.FLIP


@pytest.mark.parametrize("row", TABLE, ids=lambda r: r.config)
def test_config_architecture(row):
    arch = ARCHS[row.arch]
    model = load(row.config).MODEL
    assert model.RESNETS.DEPTH == arch["depth"]
    assert (model.RESNETS.NUM_GROUPS, model.RESNETS.WIDTH_PER_GROUP) == arch.get("groups", (1, 64))
    assert model.RESNETS.STRIDE_IN_1X1 == arch["stride_in_1x1"]
    assert model.ROI_HEADS.NAME == arch["heads"]
    if arch["heads"] == "CascadeROIHeads":
        assert model.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG
    # the paper's GN box head: 4conv1fc
    assert (model.ROI_BOX_HEAD.NUM_CONV, model.ROI_BOX_HEAD.NUM_FC) == (4, 1)
    assert model.MASK_ON == (arch["task"] == "mask")
    assert model.KEYPOINT_ON == (arch["task"] == "keypoint")
    num_classes = {"mask": 80, "keypoint": 1, "box": 20}[arch["task"]]
    assert model.ROI_HEADS.NUM_CLASSES == num_classes


@pytest.mark.parametrize("row", TABLE, ids=lambda r: r.config)
def test_norm_reaches_every_module_in_distributed_training(row):
    """8 GPUs: GN or SyncBN in backbone, FPN, box/mask/keypoint heads (empty-safe in heads)."""
    model = load(row.config, world_size=8, device="cuda").MODEL
    backbone, heads = {"GN": ("GN", "GN"), "SyncBN": ("SyncBN", "naiveSyncBN_N")}[row.norm]
    assert (model.RESNETS.NORM, model.FPN.NORM) == (backbone, backbone)
    assert (model.ROI_BOX_HEAD.NORM, model.ROI_MASK_HEAD.NORM) == (heads, heads)
    if model.KEYPOINT_ON:
        assert model.ROI_KEYPOINT_HEAD.NAME == "NormKRCNNConvDeconvUpsampleHead"


@pytest.mark.parametrize("row", TABLE, ids=lambda r: r.config)
def test_datasets_are_registered(row):
    cfg = load(row.config)
    registered = set(DatasetCatalog.list())
    for name in cfg.DATASETS.TRAIN + cfg.DATASETS.TEST:
        assert name in registered, f"{row.config}: {name} is not a registered dataset"


def plain_detectron2_config(config):
    """What Detectron2's own APIs see: get_cfg -> add_rethink_config -> merge_from_file, nothing else."""
    cfg = add_rethink_config(get_cfg())
    cfg.merge_from_file(model_zoo.get_config_file(config))
    return cfg


def every_shipped_config():
    return [c for c in model_zoo.list_configs() if not os.path.basename(c).startswith("Base-")]


@pytest.mark.parametrize("config", every_shipped_config())
def test_plain_merge_from_file_already_holds_the_recipe(config):
    """resolve_config changes nothing in a shipped file (norms, schedule, LR, pixel stats...)."""
    plain = plain_detectron2_config(config)
    assert plain.MODEL.DEVICE == "cuda"  # the file's own device: SyncBN stays torch's SyncBN
    assert resolve_config(plain).dump() == plain.dump()


def norm_layers_and_size(model):
    norms = {
        name: type(m).__name__
        for name, m in model.named_modules()
        if isinstance(m, (torch.nn.GroupNorm, torch.nn.modules.batchnorm._NormBase))
    }
    return norms, sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("config", every_shipped_config())
def test_detectron2_build_model_on_the_plain_config_builds_the_resolved_model(config):
    from detectron2.modeling import build_model as d2_build_model

    plain = plain_detectron2_config(config)
    resolved = resolve_config(plain)
    for cfg in (plain, resolved):
        cfg.MODEL.DEVICE = "meta"  # no memory, no init cost: every shipped model in seconds
    with torch.device("meta"):
        ours = norm_layers_and_size(build_model(resolved))
        theirs = norm_layers_and_size(d2_build_model(plain))
    assert ours == theirs
    assert set(ours[0].values()) <= {"GroupNorm", "SyncBatchNorm", "NaiveSyncBatchNorm"}
    for key in ("MAX_ITER", "STEPS", "BASE_LR", "WARMUP_ITERS", "GAMMA"):
        assert plain.SOLVER[key] == resolved.SOLVER[key]


def architecture_signature(config):
    """The resolved MODEL node without what does not change the architecture."""
    model = load(config).MODEL.clone()
    for key in ("WEIGHTS", "PIXEL_MEAN", "PIXEL_STD", "DEVICE"):
        model.pop(key)
    return json.dumps(model, sort_keys=True, default=str)


def test_architecture_labels_group_identical_models():
    signatures = {row.config: architecture_signature(row.config) for row in TABLE}
    by_arch = {}
    for row in TABLE:
        by_arch.setdefault(row.arch, set()).add(signatures[row.config])
    for arch, sigs in by_arch.items():
        assert len(sigs) == 1, f"configs labelled {arch} build different models"
    distinct = [next(iter(s)) for s in by_arch.values()]
    assert len(set(distinct)) == len(distinct), "two labels build the same model"


# ---- one forward/backward per architecture, on CPU at tiny input size ----
# Sizes are overridden here, never in the configs: a 64x96 image, few anchors and RoIs.
STEP_OPTS = [
    "MODEL.DEVICE", "cpu",
    "MODEL.RPN.PRE_NMS_TOPK_TRAIN", "64",
    "MODEL.RPN.POST_NMS_TOPK_TRAIN", "16",
    "MODEL.RPN.BATCH_SIZE_PER_IMAGE", "32",
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "8",
]  # fmt: skip


def tiny_batch(num_classes, keypoints):
    """One 64x96 image with two annotated objects (boxes, masks, and keypoints if asked)."""
    height, width = 64, 96
    boxes = torch.tensor([[8.0, 8.0, 40.0, 48.0], [44.0, 12.0, 90.0, 60.0]])
    inst = Instances((height, width))
    inst.gt_boxes = Boxes(boxes)
    inst.gt_classes = torch.tensor([0, num_classes - 1])
    masks = torch.zeros(2, height, width, dtype=torch.bool)
    for i, (x0, y0, x1, y1) in enumerate(boxes.int().tolist()):
        masks[i, y0:y1, x0:x1] = True
    inst.gt_masks = BitMasks(masks)
    if keypoints:
        kp = torch.zeros(2, 17, 3)
        for i, (x0, y0, x1, y1) in enumerate(boxes.tolist()):
            kp[i, :, 0] = torch.linspace(x0 + 1, x1 - 1, 17)
            kp[i, :, 1] = torch.linspace(y0 + 1, y1 - 1, 17)
            kp[i, :, 2] = 2  # visible
        inst.gt_keypoints = Keypoints(kp)
    image = torch.randint(0, 256, (3, height, width), dtype=torch.uint8).float()
    return [{"image": image, "instances": inst, "height": height, "width": width}]


ARCH_EXAMPLE = {arch: next(r.config for r in TABLE if r.arch == arch) for arch in ARCHS}


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_model_trains_one_step_on_cpu(arch):
    """Build the model of every architecture label (shared by its configs) and backpropagate."""
    torch.manual_seed(0)
    cfg = get_cfg()
    add_rethink_config(cfg)
    cfg.merge_from_file(model_zoo.get_config_file(ARCH_EXAMPLE[arch]))
    cfg.merge_from_list(STEP_OPTS)
    cfg = resolve_config(cfg, world_size=1)
    model = build_model(cfg)
    model.train()
    with EventStorage():  # the heads log training statistics
        losses = model(tiny_batch(cfg.MODEL.ROI_HEADS.NUM_CLASSES, cfg.MODEL.KEYPOINT_ON))
    expected = {"loss_rpn_cls", "loss_rpn_loc"}
    if cfg.MODEL.ROI_HEADS.NAME == "CascadeROIHeads":
        expected |= {f"loss_{k}_stage{s}" for k in ("cls", "box_reg") for s in range(3)}
    else:
        expected |= {"loss_cls", "loss_box_reg"}
    expected |= {"loss_mask"} if cfg.MODEL.MASK_ON else set()
    expected |= {"loss_keypoint"} if cfg.MODEL.KEYPOINT_ON else set()
    assert set(losses) == expected
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    stem = model.backbone.bottom_up.stem.conv1.weight
    assert stem.grad is not None and stem.grad.abs().sum() > 0  # nothing frozen
    norm_types = {type(m).__name__ for m in model.modules()}
    assert ("GroupNorm" in norm_types) == (cfg.RETHINK.NORM == "GN")
    assert "FrozenBatchNorm2d" not in norm_types
