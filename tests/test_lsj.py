"""Large-scale jitter: the mapper builder, and configs/lsj/ against Detectron2's LazyConfig files.

Every SyncBN LSJ YAML config must build the same model (parameters, module and norm types), the
same optimizer parameter groups, the same LR at every phase of the schedule, and the same train
mapper (augmentations, their parameters and their output for one image and seed) as the
``new_baselines`` LazyConfig file it reproduces.
"""
import glob
import os

import numpy as np
import pytest
import torch
from detectron2 import model_zoo
from detectron2.config import get_cfg, instantiate
from detectron2.data import build_detection_train_loader, detection_utils
from detectron2.data import transforms as T
from detectron2.engine import DefaultTrainer
from detectron2.solver import build_lr_scheduler
from detectron2.structures import BoxMode
from PIL import Image

from conftest import REPO, TINY_OPTS, run_train_net
from rethink_d2 import add_rethink_config, resolve_config
from rethink_d2.data import build_train_loader
from rethink_d2.data.augmentation import build_train_mapper
from rethink_d2.modeling import build_model
from rethink_d2.utils.errors import ConfigError

LSJ_DIR = os.path.join(REPO, "configs", "lsj")
# our YAML -> Detectron2's LazyConfig file
SYNCBN_CONFIGS = {
    "scratch_R50_SyncBN_LSJ_50ep.yaml": "new_baselines/mask_rcnn_R_50_FPN_50ep_LSJ.py",
    "scratch_R50_SyncBN_LSJ_100ep.yaml": "new_baselines/mask_rcnn_R_50_FPN_100ep_LSJ.py",
    "scratch_R50_SyncBN_LSJ_200ep.yaml": "new_baselines/mask_rcnn_R_50_FPN_200ep_LSJ.py",
    "scratch_R50_SyncBN_LSJ_400ep.yaml": "new_baselines/mask_rcnn_R_50_FPN_400ep_LSJ.py",
    "scratch_R101_SyncBN_LSJ_100ep.yaml": "new_baselines/mask_rcnn_R_101_FPN_100ep_LSJ.py",
    "scratch_R101_SyncBN_LSJ_200ep.yaml": "new_baselines/mask_rcnn_R_101_FPN_200ep_LSJ.py",
    "scratch_R101_SyncBN_LSJ_400ep.yaml": "new_baselines/mask_rcnn_R_101_FPN_400ep_LSJ.py",
}
ALL_CONFIGS = sorted(os.path.basename(p) for p in glob.glob(os.path.join(LSJ_DIR, "scratch_*")))


def load(name, opts=()):
    """get_cfg -> add_rethink_config -> merge_from_file: plain Detectron2, nothing else."""
    cfg = add_rethink_config(get_cfg())
    cfg.merge_from_file(os.path.join(LSJ_DIR, name))
    cfg.merge_from_list(list(opts))
    return cfg


def build_on_meta(cfg):
    cfg = cfg.clone()
    cfg.MODEL.DEVICE = "meta"
    with torch.device("meta"):
        return build_model(cfg)


def lazy_model(lazy):
    with torch.device("meta"):
        return instantiate(lazy.model)


def norm_layers(model):
    return {
        name: (type(m).__name__, getattr(m, "_stats_mode", None))
        for name, m in model.named_modules()
        if "norm" in type(m).__name__.lower() or "bn" in name.split(".")[-1]
    }


def test_all_syncbn_configs_are_covered():
    assert sorted(SYNCBN_CONFIGS) == sorted(n for n in ALL_CONFIGS if "SyncBN" in n)
    assert {"scratch_R50_GN_LSJ_100ep.yaml", "scratch_R50_GN_LSJ_200ep.yaml"} <= set(ALL_CONFIGS)


@pytest.mark.parametrize("name", ALL_CONFIGS)
def test_config_is_literal_under_plain_detectron2(name):
    # resolve_config must not change anything: the file already holds the resolved recipe.
    cfg = load(name)
    for world_size in (1, 8):
        assert resolve_config(cfg, world_size=world_size) == cfg
    assert cfg.MODEL.WEIGHTS == "" and cfg.MODEL.BACKBONE.FREEZE_AT == 0
    assert cfg.RETHINK.INPUT.AUGMENTATION == "LSJ"
    assert cfg.SOLVER.IMS_PER_BATCH == 64 and cfg.SOLVER.AMP.ENABLED
    assert cfg.RETHINK.DDP_FP16_COMPRESSION
    norm = "GN" if "_GN_" in name else "SyncBN"
    head = "GN" if norm == "GN" else "naiveSyncBN_N"
    assert (cfg.MODEL.RESNETS.NORM, cfg.MODEL.FPN.NORM) == (norm, norm)
    assert (cfg.MODEL.ROI_BOX_HEAD.NORM, cfg.MODEL.ROI_MASK_HEAD.NORM) == (head, head)
    # 118,000 images per epoch at batch 64, as Detectron2
    epochs = int(name.rsplit("_", 1)[1].split("ep")[0])
    assert abs(cfg.SOLVER.MAX_ITER * 64 / 118000 - epochs) < 1e-3


@pytest.mark.parametrize("name", sorted(SYNCBN_CONFIGS))
def test_model_equals_detectron2_lazyconfig(name):
    ours = build_on_meta(load(name))
    theirs = lazy_model(model_zoo.get_config(SYNCBN_CONFIGS[name]))
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(ours) == count(theirs)
    types = lambda m: {k: type(v).__name__ for k, v in m.named_modules()}  # noqa: E731
    assert types(ours) == types(theirs)
    shapes = lambda m: {k: tuple(v.shape) for k, v in m.state_dict().items()}  # noqa: E731
    assert shapes(ours) == shapes(theirs)
    norms = norm_layers(ours)
    assert norms == norm_layers(theirs)
    assert {t for t, _ in norms.values()} == {"SyncBatchNorm", "NaiveSyncBatchNorm"}
    heads = [v for k, v in norms.items() if k.startswith("roi_heads.")]
    assert heads and all(v == ("NaiveSyncBatchNorm", "N") for v in heads)
    assert len(ours.proposal_generator.rpn_head.conv) == 2  # 2-conv RPN head
    assert ours.backbone.bottom_up.stem.conv1.weight.requires_grad  # nothing frozen
    for attr in ("pixel_mean", "pixel_std"):
        assert getattr(ours, attr).shape == getattr(theirs, attr).shape
    assert ours.input_format == theirs.input_format


@pytest.mark.parametrize("name", sorted(SYNCBN_CONFIGS))
def test_solver_equals_detectron2_lazyconfig(name):
    cfg = load(name)
    lazy = model_zoo.get_config(SYNCBN_CONFIGS[name])
    model = build_on_meta(cfg)
    ours = DefaultTrainer.build_optimizer(cfg, model)
    lazy.optimizer.params.model = model
    theirs = instantiate(lazy.optimizer)
    assert type(ours) is type(theirs)

    def groups(opt):
        keys = ("lr", "weight_decay", "momentum", "nesterov", "dampening")
        return sorted(
            (tuple(g[k] for k in keys), sorted(id(p) for p in g["params"]))
            for g in opt.param_groups
        )

    assert groups(ours) == groups(theirs)
    assert cfg.SOLVER.MAX_ITER == lazy.train.max_iter
    assert tuple(cfg.SOLVER.STEPS) == tuple(lazy.lr_multiplier.scheduler.milestones)
    assert cfg.SOLVER.WARMUP_FACTOR == lazy.lr_multiplier.warmup_factor
    assert cfg.SOLVER.AMP.ENABLED == lazy.train.amp.enabled
    assert cfg.RETHINK.DDP_FP16_COMPRESSION == lazy.train.ddp.fp16_compression
    assert cfg.MODEL.WEIGHTS == lazy.train.init_checkpoint

    # The LR multiplier at every phase boundary. Detectron2 keeps warmup_length = 500 / 184375 of
    # the run for every length, so the 50ep warm-up ends at 249.9986 iterations (250 here).
    ours_sched = build_lr_scheduler(cfg, ours)._multiplier
    theirs_sched = instantiate(lazy.lr_multiplier)
    max_iter = cfg.SOLVER.MAX_ITER
    points = {0, 1, 100, max_iter - 1}
    for edge in (cfg.SOLVER.WARMUP_ITERS, *cfg.SOLVER.STEPS):
        points |= {edge - 1, edge, edge + 1}
    for it in sorted(points):
        a, b = ours_sched(it / max_iter), theirs_sched(it / lazy.train.max_iter)
        assert a == pytest.approx(b, rel=1e-4), f"iteration {it}: {a} vs {b}"


def _write_image(tmp_path, height=480, width=640):
    rng = np.random.RandomState(0)
    path = str(tmp_path / "image.png")
    Image.fromarray(rng.randint(0, 255, (height, width, 3), dtype=np.uint8)).save(path)
    boxes = [[40.0, 60.0, 300.0, 400.0], [350.0, 20.0, 620.0, 200.0], [500.0, 300.0, 560.0, 460.0]]
    annotations = [
        {
            "bbox": box,
            "bbox_mode": BoxMode.XYXY_ABS,
            "category_id": i,
            "iscrowd": 0,
            "segmentation": [[box[0], box[1], box[2], box[1], (box[0] + box[2]) / 2, box[3]]],
        }
        for i, box in enumerate(boxes)
    ]
    return {
        "file_name": path,
        "height": height,
        "width": width,
        "image_id": 0,
        "annotations": annotations,
    }


@pytest.mark.parametrize("name", sorted(SYNCBN_CONFIGS))
def test_train_mapper_equals_detectron2_lazyconfig(name, tmp_path):
    ours = build_train_mapper(load(name))
    theirs = instantiate(model_zoo.get_config(SYNCBN_CONFIGS[name]).dataloader.train.mapper)
    ours_augs, theirs_augs = ours.augmentations.augs, theirs.augmentations.augs
    assert [type(a) for a in ours_augs] == [T.ResizeScale, T.FixedSizeCrop, T.RandomFlip]
    assert [type(a) for a in ours_augs] == [type(a) for a in theirs_augs]
    assert [vars(a) for a in ours_augs] == [vars(a) for a in theirs_augs]
    attrs = ("is_train", "image_format", "use_instance_mask", "recompute_boxes", "use_keypoint")
    for attr in attrs:
        assert getattr(ours, attr) == getattr(theirs, attr), attr
    assert ours.recompute_boxes


def test_same_image_boxes_and_seed_give_the_same_output(tmp_path):
    record = _write_image(tmp_path)
    name = "scratch_R50_SyncBN_LSJ_100ep.yaml"
    ours = build_train_mapper(load(name))
    theirs = instantiate(model_zoo.get_config(SYNCBN_CONFIGS[name]).dataloader.train.mapper)
    padded = 0
    for seed in range(6):
        outputs = []
        for mapper in (ours, theirs):
            np.random.seed(seed)
            outputs.append(mapper(dict(record)))
        a, b = outputs
        assert a["image"].shape == (3, 1024, 1024)
        assert torch.equal(a["image"], b["image"])
        assert torch.equal(a["instances"].gt_boxes.tensor, b["instances"].gt_boxes.tensor)
        assert torch.equal(a["instances"].gt_classes, b["instances"].gt_classes)
        padded += bool((a["image"][:, -1, -1] == 128).all())
    assert padded and padded < 6  # both the padded (scale < 1) and the cropped path were taken


def test_default_augmentation_is_detectron2s_unchanged():
    cfg = add_rethink_config(get_cfg())
    ours = build_train_mapper(cfg).augmentations.augs
    theirs = detection_utils.build_augmentation(cfg, True)
    assert [type(a) for a in ours] == [T.ResizeShortestEdge, T.RandomFlip]
    assert [vars(a) for a in ours] == [vars(a) for a in theirs]
    assert not build_train_mapper(cfg).recompute_boxes


@pytest.mark.parametrize(
    "opts, message",
    [
        (["RETHINK.INPUT.AUGMENTATION", "lsj"], "not a registered augmentation"),
        (["RETHINK.INPUT.MIN_SCALE", "0.0"], "0 < MIN_SCALE <= MAX_SCALE"),
        (["RETHINK.INPUT.MAX_SCALE", "0.05"], "0 < MIN_SCALE <= MAX_SCALE"),
        (["RETHINK.INPUT.IMAGE_SIZE", "0"], "IMAGE_SIZE=0"),
        (["INPUT.CROP.ENABLED", "True"], "INPUT.CROP.ENABLED"),
    ],
)
def test_bad_lsj_settings_are_one_line_errors(opts, message):
    with pytest.raises(ConfigError, match=message) as info:
        build_train_mapper(load("scratch_R50_SyncBN_LSJ_100ep.yaml", opts))
    assert "\n" not in str(info.value)


SHAPES_OPTS = [
    "DATASETS.TRAIN", "('rethink_shapes_train',)",
    "INPUT.MASK_FORMAT", "bitmask",
    "RETHINK.INPUT.IMAGE_SIZE", "96",
    "SOLVER.IMS_PER_BATCH", "2",
    "DATALOADER.NUM_WORKERS", "0",
]  # fmt: skip


def test_rethink_loader_and_a_users_own_loader_apply_lsj():
    cfg = load("scratch_R50_SyncBN_LSJ_100ep.yaml", SHAPES_OPTS)
    # rethink_d2's loader (tools/train_net.py, rethink_d2.engine.Trainer) and the documented
    # DefaultTrainer.build_train_loader override of a Detectron2 user
    for loader in (
        build_train_loader(cfg),
        build_detection_train_loader(cfg, mapper=build_train_mapper(cfg)),
    ):
        batch = next(iter(loader))
        assert [d["image"].shape for d in batch] == [(3, 96, 96)] * 2


# Narrow any LSJ config to seconds on CPU: R18, 64-wide FPN and heads, 128 px LSJ, fp32.
NARROW_OPTS = TINY_OPTS + [
    "MODEL.RESNETS.DEPTH", "18",
    "MODEL.RESNETS.RES2_OUT_CHANNELS", "64",
    "MODEL.FPN.OUT_CHANNELS", "64",
    "MODEL.ROI_BOX_HEAD.CONV_DIM", "64",
    "MODEL.ROI_BOX_HEAD.FC_DIM", "128",
    "MODEL.ROI_MASK_HEAD.CONV_DIM", "64",
    "MODEL.ROI_HEADS.NUM_CLASSES", "4",
    "MODEL.ANCHOR_GENERATOR.SIZES", "[[8], [16], [32], [64], [128]]",
    "DATASETS.TRAIN", "('rethink_shapes_train',)",
    "INPUT.MASK_FORMAT", "bitmask",
    "RETHINK.INPUT.IMAGE_SIZE", "128",
    "RETHINK.SCHEDULE.SPEC", "",
    "SOLVER.AMP.ENABLED", "False",  # Detectron2's AMPTrainer is CUDA-only
    "SOLVER.BASE_LR", "0.01",
    "SOLVER.MAX_ITER", "3",
]  # fmt: skip


@pytest.mark.parametrize("name", ALL_CONFIGS)
def test_narrowed_config_resolves(name):
    cfg = resolve_config(load(name, NARROW_OPTS), world_size=1)
    assert cfg.SOLVER.MAX_ITER == 3 and cfg.RETHINK.INPUT.AUGMENTATION == "LSJ"


@pytest.mark.slow
@pytest.mark.parametrize(
    "name", ["scratch_R50_SyncBN_LSJ_100ep.yaml", "scratch_R50_GN_LSJ_100ep.yaml"]
)
def test_lsj_config_trains_on_cpu(name, tmp_path):
    result = run_train_net(
        ["--config", os.path.join(LSJ_DIR, name), *NARROW_OPTS, "OUTPUT_DIR", str(tmp_path)]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert os.path.isfile(tmp_path / "model_final.pth")
    assert "ResizeScale" in result.stdout + result.stderr


def _fp16_ddp_worker(rank, init_file, out_prefix):
    import torch.distributed as dist

    from rethink_d2.engine.trainer import wrap_model_for_distributed

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    model = torch.nn.Linear(4, 1, bias=False)
    ddp = wrap_model_for_distributed(model, fp16_compression=True)
    # a gradient of 1 + 2**-13 per element: exact in fp32, 1.0 once all-reduced in fp16
    ddp(torch.full((1, 4), 1.0 + 2.0**-13)).sum().backward()
    torch.save(model.weight.grad, f"{out_prefix}.{rank}")
    dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_fp16_compression_reaches_the_gradients(tmp_path):
    # RETHINK.DDP_FP16_COMPRESSION -> wrap_model_for_distributed -> Detectron2's fp16 hook
    torch.multiprocessing.spawn(
        _fp16_ddp_worker, args=(str(tmp_path / "init"), str(tmp_path / "grad")), nprocs=2
    )
    for rank in range(2):
        grad = torch.load(tmp_path / f"grad.{rank}")
        assert grad.tolist() == [[1.0] * 4]
