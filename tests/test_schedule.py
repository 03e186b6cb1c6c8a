"""RETHINK.SCHEDULE.SPEC -> SOLVER: the paper's table, batch scaling, units, errors, a real run."""

import json
import logging
import os

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from detectron2 import model_zoo
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.engine import DefaultTrainer, HookBase
from detectron2.structures import BoxMode

from conftest import REPO
from rethink_d2 import add_rethink_config, resolve_config
from rethink_d2 import model_zoo as rethink_zoo
from rethink_d2.engine import build_config
from rethink_d2.solver import compute_schedule, parse_schedule_spec, resolve_schedule
from rethink_d2.solver.table import main as schedule_cli
from rethink_d2.utils.errors import ConfigError


def make_cfg(overrides=None, base=None):
    """A config with the RETHINK node, an optional _BASE_ file and {KEY: VALUE} overrides."""
    cfg = add_rethink_config(get_cfg())
    if base:
        cfg.merge_from_file(base)
    cfg.merge_from_list([x for item in (overrides or {}).items() for x in item])
    return cfg


def resolved(spec, batch=16, overrides=None, base=None):
    """``resolve_schedule`` of ``spec`` at ``batch`` images/iteration."""
    cfg = make_cfg(
        {"RETHINK.SCHEDULE.SPEC": spec, "SOLVER.IMS_PER_BATCH": batch, **(overrides or {})}, base
    )
    return resolve_schedule(cfg)


def solver_of(cfg):
    return cfg.SOLVER.MAX_ITER, tuple(cfg.SOLVER.STEPS), cfg.SOLVER.BASE_LR


# ---------------------------------------------------------------------------------------------
# the paper's table
# ---------------------------------------------------------------------------------------------
PAPER_TABLE = [
    # spec, batch, MAX_ITER, STEPS, BASE_LR
    ("2x", 16, 180000, (120000, 160000), 0.02),
    ("3x", 16, 270000, (210000, 250000), 0.02),
    ("4x", 16, 360000, (300000, 340000), 0.02),
    ("5x", 16, 450000, (390000, 430000), 0.02),
    ("6x", 16, 540000, (480000, 520000), 0.02),
    ("7x", 16, 630000, (570000, 610000), 0.02),
    ("8x", 16, 720000, (660000, 700000), 0.02),
    ("9x", 16, 810000, (750000, 790000), 0.02),
    # Detectron2's configs/Misc/scratch_mask_rcnn_R_50_FPN_9x_gn.yaml
    ("9x", 64, 202500, (187500, 197500), 0.08),
]


@pytest.mark.parametrize("spec,batch,max_iter,steps,lr", PAPER_TABLE)
def test_paper_table(spec, batch, max_iter, steps, lr):
    cfg = resolved(spec, batch)
    assert solver_of(cfg) == (max_iter, steps, lr)
    assert cfg.SOLVER.GAMMA == 0.1
    assert cfg.SOLVER.IMS_PER_BATCH == batch


def test_matches_detectron2_scratch_9x_config_file():
    d2 = make_cfg(base=model_zoo.get_config_file("Misc/scratch_mask_rcnn_R_50_FPN_9x_gn.yaml"))
    ours = resolved("9x", d2.SOLVER.IMS_PER_BATCH)
    assert solver_of(ours) == solver_of(d2) == (202500, (187500, 197500), 0.08)
    # warm-up is kept as written, as Detectron2's file does (default 1000)
    assert ours.SOLVER.WARMUP_ITERS == d2.SOLVER.WARMUP_ITERS == 1000


def test_fractional_multiplier_and_case():
    assert solver_of(resolved("4.5x")) == (405000, (345000, 385000), 0.02)
    assert solver_of(resolved(" 4.5X ")) == (405000, (345000, 385000), 0.02)


def test_proportional_mode_is_detectron2_1x():
    cfg = resolved("1x", 16, {"RETHINK.SCHEDULE.MODE": "proportional"})
    assert solver_of(cfg) == (90000, (60000, 80000), 0.02)
    cfg = resolved("3x", 64, {"RETHINK.SCHEDULE.MODE": "proportional"})
    assert solver_of(cfg) == (67500, (45000, 60000), 0.08)


def test_tail_keys_gamma_and_base_lr_are_configurable():
    # the paper's 35k-image runs: LR 0.04 and decay factor 0.02
    keys = {"BASE_LR": 0.04, "GAMMA": 0.02, "TAILS": (30000, 10000), "BASE_ITER": 45000}
    cfg = resolved("6x", 16, {f"RETHINK.SCHEDULE.{k}": v for k, v in keys.items()})
    assert solver_of(cfg) == (270000, (240000, 260000), 0.04)
    assert cfg.SOLVER.GAMMA == 0.02


# ---------------------------------------------------------------------------------------------
# units: iterations, images, epochs
# ---------------------------------------------------------------------------------------------
def test_units_agree():
    by_iter = solver_of(resolved("220kit", 64))
    assert by_iter == (55000, (40000, 50000), 0.08)
    assert solver_of(resolved("3.52Mimg", 64)) == by_iter
    assert solver_of(resolved("220000it", 64)) == by_iter
    # the paper's 10k-image run: 220k iterations = 352 epochs of 10k images
    assert solver_of(resolved("352ep", 64, {"DATASETS.TRAIN": ("coco_2017_train@10k",)})) == by_iter
    assert solver_of(resolved("352ep", 64, {"RETHINK.SCHEDULE.DATASET_IMAGES": 10000})) == by_iter
    # counts of several subset names add up: 3.5k + 6.5k = 10k
    names = ("a@3.5k", "b@6500:seed3")
    assert solver_of(resolved("352ep", 64, {"DATASETS.TRAIN": names})) == by_iter
    assert solver_of(resolved("352ep", 64, {"RETHINK.DATA.SAMPLER_SUBSET": "10k"})) == by_iter


def test_images_seen_do_not_depend_on_batch():
    for spec in ("6x", "4.5x", "220kit", "1.2Mimg"):
        seen = {compute_schedule(make_cfg(), spec=spec, batch=b).images_seen for b in (16, 32, 64)}
        assert len(seen) == 1, (spec, seen)


def test_parse_spec():
    assert parse_schedule_spec("6x") == (6, "x")
    assert parse_schedule_spec("220kit") == (220000, "it")
    assert parse_schedule_spec("3.52Mimg") == (3520000, "img")
    assert parse_schedule_spec("24ep") == (24, "ep")


# ---------------------------------------------------------------------------------------------
# batch scaling and Detectron2's REFERENCE_WORLD_SIZE
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("spec", ["2x", "3x", "6x", "9x", "4.5x", "220kit"])
@pytest.mark.parametrize("batch", [8, 32, 64])
def test_scaling_round_trip(spec, batch):
    at_ref, scaled = resolved(spec, 16), resolved(spec, batch)
    k = 16 / batch
    assert scaled.SOLVER.MAX_ITER == round(at_ref.SOLVER.MAX_ITER * k)
    assert scaled.SOLVER.STEPS == tuple(round(s * k) for s in at_ref.SOLVER.STEPS)
    assert scaled.SOLVER.BASE_LR == pytest.approx(at_ref.SOLVER.BASE_LR / k, rel=1e-12)
    # Detectron2's worker scaling maps one onto the other, both ways (2 images per worker)
    scaled.SOLVER.REFERENCE_WORLD_SIZE = batch // 2
    back = DefaultTrainer.auto_scale_workers(scaled, 8)
    assert back.SOLVER.IMS_PER_BATCH == 16
    assert back.SOLVER.MAX_ITER == at_ref.SOLVER.MAX_ITER
    assert back.SOLVER.STEPS == at_ref.SOLVER.STEPS
    assert back.SOLVER.BASE_LR == pytest.approx(at_ref.SOLVER.BASE_LR, rel=1e-12)
    at_ref.SOLVER.REFERENCE_WORLD_SIZE = 8
    forth = DefaultTrainer.auto_scale_workers(at_ref, batch // 2)
    assert solver_of(forth)[:2] == solver_of(scaled)[:2]
    assert forth.SOLVER.BASE_LR == pytest.approx(scaled.SOLVER.BASE_LR, rel=1e-12)


def test_re_resolving_a_resolved_config_at_another_batch():
    # a batch given on the command line over a shipped config: the spec rescales everything
    cfg = resolved("4.5x", 8)
    cfg.SOLVER.IMS_PER_BATCH = 16
    assert solver_of(resolve_schedule(cfg)) == solver_of(resolved("4.5x", 16))


def test_auto_scale_workers_after_resolve_does_not_double_scale():
    cfg = resolved("9x", 16, {"SOLVER.REFERENCE_WORLD_SIZE": 8})
    scaled = DefaultTrainer.auto_scale_workers(cfg, 32)
    assert scaled.SOLVER.IMS_PER_BATCH == 64
    assert solver_of(scaled) == solver_of(resolved("9x", 64)) == (202500, (187500, 197500), 0.08)
    # and back: a batch-64 resolution auto-scaled to 8 workers is the batch-16 schedule
    at_64 = resolved("9x", 64, {"SOLVER.REFERENCE_WORLD_SIZE": 32})
    down = DefaultTrainer.auto_scale_workers(at_64, 8)
    assert solver_of(down) == solver_of(resolved("9x", 16))


def test_resolve_config_runs_the_schedule_once():
    cfg = make_cfg(
        {"RETHINK.SCHEDULE.SPEC": "6x", "SOLVER.IMS_PER_BATCH": 32, "RETHINK.SCRATCH_GUARD": False}
    )
    out = resolve_config(cfg)
    assert solver_of(out) == (270000, (240000, 260000), 0.04)
    assert cfg.SOLVER.MAX_ITER == get_cfg().SOLVER.MAX_ITER  # the input is not modified
    assert resolve_config(out) == out  # resolving is idempotent


# ---------------------------------------------------------------------------------------------
# warm-up, periods, SPEC "", logging, dump
# ---------------------------------------------------------------------------------------------
def test_warmup_kept_or_scaled():
    assert resolved("6x", 64, {"SOLVER.WARMUP_ITERS": 500}).SOLVER.WARMUP_ITERS == 500
    assert resolved("6x", 64, {"RETHINK.SCHEDULE.WARMUP_ITERS": 4000}).SOLVER.WARMUP_ITERS == 1000
    assert resolved("6x", 8, {"RETHINK.SCHEDULE.WARMUP_ITERS": 1000}).SOLVER.WARMUP_ITERS == 2000


def test_periods_scaled_when_set_and_kept_otherwise():
    periods = {"RETHINK.SCHEDULE.EVAL_PERIOD": 20000, "RETHINK.SCHEDULE.CHECKPOINT_PERIOD": 10000}
    cfg = resolved("6x", 64, {**periods, "TEST.EVAL_PERIOD": 7})
    assert (cfg.TEST.EVAL_PERIOD, cfg.SOLVER.CHECKPOINT_PERIOD) == (5000, 2500)
    kept = resolved("6x", 64, {"TEST.EVAL_PERIOD": 7, "SOLVER.CHECKPOINT_PERIOD": 3})
    assert (kept.TEST.EVAL_PERIOD, kept.SOLVER.CHECKPOINT_PERIOD) == (7, 3)


def test_empty_spec_leaves_solver_untouched():
    cfg = make_cfg({"SOLVER.MAX_ITER": 123, "SOLVER.STEPS": (100,), "SOLVER.BASE_LR": 0.5})
    before = cfg.dump()
    assert resolve_schedule(cfg).dump() == before


def test_logs_one_info_line(caplog):
    with caplog.at_level(logging.INFO, logger="rethink_d2.solver.schedule"):
        resolved("9x", 64)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Resolved")]
    assert len(lines) == 1
    for part in (
        "'9x'",
        "64 images/iteration",
        "202500 iterations",
        "(187500, 197500)",
        "0.08",
        "warm-up 1000",
        "12960000 images seen",
    ):
        assert part in lines[0]


def test_resolved_values_are_in_the_dumped_config():
    dumped = yaml.safe_load(resolved("6x", 32).dump())
    assert dumped["SOLVER"]["MAX_ITER"] == 270000
    assert list(dumped["SOLVER"]["STEPS"]) == [240000, 260000]
    assert dumped["SOLVER"]["BASE_LR"] == 0.04
    assert dumped["RETHINK"]["SCHEDULE"]["SPEC"] == "6x"


def test_global_default_config_unchanged():
    before = get_cfg().dump()
    resolved("6x", 64)
    assert get_cfg().dump() == before


def test_cli_prints_the_table_of_the_docs(capsys):
    assert schedule_cli([]) == 0
    out = capsys.readouterr().out
    with open(os.path.join(REPO, "docs", "schedules.md")) as f:
        assert out.strip() in f.read(), "docs/schedules.md: paste `python -m rethink_d2.solver`"
    assert "| 6x | tail | 16 | 540,000 | 480,000, 520,000 | 0.02 |" in out
    assert "| 9x | tail | 64 | 202,500 | 187,500, 197,500 | 0.08 |" in out
    assert schedule_cli(["0x"]) == 2


# ---------------------------------------------------------------------------------------------
# explicit SOLVER values: inherited ones are replaced, typed ones are errors
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "zoo_file",
    [
        "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml",
        "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml",
        "Misc/scratch_mask_rcnn_R_50_FPN_9x_gn.yaml",
    ],
)
def test_schedules_of_base_files_are_replaced(zoo_file):
    base = model_zoo.get_config_file(zoo_file)
    cfg = make_cfg({"RETHINK.SCHEDULE.SPEC": "6x"}, base)
    batch = cfg.SOLVER.IMS_PER_BATCH
    assert solver_of(resolve_schedule(cfg)) == solver_of(resolved("6x", batch))


def test_spec_owns_its_solver_keys_and_logs_what_it_replaced(caplog):
    """The one rule: a non-empty SPEC writes MAX_ITER, STEPS, GAMMA, BASE_LR (no guessing)."""
    typed = {"SOLVER.MAX_ITER": 1000, "SOLVER.STEPS": (500,), "SOLVER.BASE_LR": 0.5}
    with caplog.at_level(logging.INFO, logger="rethink_d2.solver.schedule"):
        cfg = resolved("6x", 16, {**typed, "SOLVER.GAMMA": 0.5})
    assert solver_of(cfg) == (540000, (480000, 520000), 0.02) and cfg.SOLVER.GAMMA == 0.1
    replaced = [r.getMessage() for r in caplog.records if "replaced" in r.getMessage()]
    assert len(replaced) == 1
    for part in ("SOLVER.MAX_ITER 1000 -> 540000", "SOLVER.BASE_LR 0.5 -> 0.02", "GAMMA 0.5 -> 0.1"):
        assert part in replaced[0]


def test_stating_the_specs_values_replaces_nothing(caplog):
    same = {"SOLVER.MAX_ITER": 135000, "SOLVER.STEPS": (120000, 130000), "SOLVER.BASE_LR": 0.08}
    with caplog.at_level(logging.INFO, logger="rethink_d2.solver.schedule"):
        cfg = resolved("6x", 64, same)
    assert solver_of(cfg) == (135000, (120000, 130000), 0.08)
    assert not [r for r in caplog.records if "replaced" in r.getMessage()]


@pytest.mark.parametrize(
    "key, value, use_instead",
    [
        ("SOLVER.MAX_ITER", "1000", "RETHINK.SCHEDULE.SPEC"),
        ("SOLVER.STEPS", "(1,2)", "RETHINK.SCHEDULE.TAILS"),
        ("SOLVER.BASE_LR", "0.01", "RETHINK.SCHEDULE.BASE_LR"),
        ("TEST.EVAL_PERIOD", "0", "RETHINK.SCHEDULE.EVAL_PERIOD"),
    ],
)
def test_command_line_value_of_an_owned_key_is_refused(key, value, use_instead):
    config = rethink_zoo.get_config_file("scratch_R50_GN_3x.yaml")
    with pytest.raises(ConfigError, match=f"{key} on the command line") as info:
        build_config(config, [key, value], for_training=False)
    assert use_instead in str(info.value) and "RETHINK.SCHEDULE.SPEC \"\"" in str(info.value)
    cfg = build_config(config, ["RETHINK.SCHEDULE.SPEC", "", key, value], for_training=False)
    assert str(cfg[key.split(".")[0]][key.split(".")[1]]) == str(eval(value))


# ---------------------------------------------------------------------------------------------
# impossible schedules
# ---------------------------------------------------------------------------------------------
PROPORTIONAL = {"RETHINK.SCHEDULE.MODE": "proportional"}
HUGE_BATCH = {"SOLVER.IMS_PER_BATCH": 1024}


@pytest.mark.parametrize(
    "spec,opts,message",
    [
        ("0x", {}, "must be > 0"),
        ("-2x", {}, "must be > 0"),
        ("0kit", {}, "must be > 0"),
        ("six", {}, "is not a schedule"),
        ("6", {}, "is not a schedule"),
        ("1.5kx", {}, "k/M suffixes apply to 'it' and 'img' only"),
        # a length shorter than its tails: the paper's 60k pre-trained run needs other tails
        ("60kit", {}, "not longer than its first LR tail of 60000"),
        ("0.5x", {}, "not longer than its first LR tail"),
        # steps not increasing
        ("6x", {"RETHINK.SCHEDULE.TAILS": (20000, 60000)}, "must be strictly decreasing"),
        ("6x", {"RETHINK.SCHEDULE.TAILS": (60000, 0)}, "must all be > 0"),
        ("6x", {**PROPORTIONAL, "RETHINK.SCHEDULE.FRACTIONS": (0.9, 0.5)}, "FRACTIONS"),
        ("6x", {**PROPORTIONAL, "RETHINK.SCHEDULE.FRACTIONS": (0.5, 1.0)}, "FRACTIONS"),
        # steps that collide after scaling to a huge batch
        ("61it", {**HUGE_BATCH, "RETHINK.SCHEDULE.TAILS": (60, 59)}, "not strictly increasing"),
        ("6x", {"RETHINK.SCHEDULE.MODE": "cosine"}, "RETHINK.SCHEDULE.MODE"),
        ("6x", {"RETHINK.SCHEDULE.GAMMA": 0.0}, "RETHINK.SCHEDULE.GAMMA"),
        ("6x", {"RETHINK.SCHEDULE.BASE_LR": -0.02}, "RETHINK.SCHEDULE.BASE_LR"),
        ("6x", {"SOLVER.IMS_PER_BATCH": 0}, "SOLVER.IMS_PER_BATCH=0 must be > 0"),
        ("6x", {"RETHINK.SCHEDULE.EVAL_PERIOD": -1}, "RETHINK.SCHEDULE.EVAL_PERIOD"),
        ("70kit", {"SOLVER.WARMUP_ITERS": 20000}, "set SOLVER.WARMUP_ITERS to at most 10000"),
        ("6x", {"SOLVER.LR_SCHEDULER_NAME": "WarmupCosineLR"}, "SOLVER.LR_SCHEDULER_NAME"),
        # epochs whose length cannot be known from the config
        ("24ep", {"DATASETS.TRAIN": ("coco_2017_train",)}, "RETHINK.SCHEDULE.DATASET_IMAGES"),
        ("24ep", {"DATASETS.TRAIN": ("coco_2017_train@0.1",)}, "RETHINK.SCHEDULE.DATASET_IMAGES"),
        ("24ep", {"DATASETS.TRAIN": ("a@10k", "b")}, "'b'"),
        ("24ep", {"RETHINK.DATA.SAMPLER_SUBSET": "10%"}, "is a fraction"),
    ],
)
def test_impossible_schedules_raise_one_clear_error(spec, opts, message):
    cfg = make_cfg(opts)
    cfg.RETHINK.SCHEDULE.SPEC = spec  # set directly: yacs would turn "6" into an int
    before = cfg.dump()
    with pytest.raises(ConfigError) as info:
        resolve_schedule(cfg)
    assert message in str(info.value)
    assert "\n" not in str(info.value)
    assert cfg.dump() == before  # nothing is half-applied


# ---------------------------------------------------------------------------------------------
# a tiny real training run: the scheduler follows the resolved schedule
# ---------------------------------------------------------------------------------------------
TINY_DATASET = "rethink_test_schedule_tiny"
# (height, width) of the stored images; all become 64 px on the short side (MAX_SIZE 96)
TINY_SIZES = [(64, 64), (64, 96), (128, 128), (96, 64), (64, 80), (80, 64)]


def register_tiny_dataset(root, name=TINY_DATASET):
    """Six PNGs with 1-3 boxes each, registered as ``name`` (idempotent)."""
    if name in DatasetCatalog.list():
        return DatasetCatalog.get(name)
    rng = np.random.default_rng(0)
    dicts = []
    for i, (h, w) in enumerate(TINY_SIZES):
        path = os.path.join(root, f"{i}.png")
        image = rng.integers(0, 255, size=(h, w, 3), dtype=np.uint8)
        annos = []
        for j in range(1 + i % 3):
            x0, y0 = 4 + 10 * j, 6 + 8 * j
            image[y0 : y0 + 20, x0 : x0 + 24] = 255
            annos.append(
                {"bbox": [x0, y0, 24, 20], "bbox_mode": BoxMode.XYWH_ABS, "category_id": j % 2}
            )
        Image.fromarray(image).save(path)
        dicts.append(
            {"file_name": path, "image_id": i, "height": h, "width": w, "annotations": annos}
        )
    DatasetCatalog.register(name, lambda: dicts)
    MetadataCatalog.get(name).set(thing_classes=["a", "b"])
    return dicts


def tiny_train_cfg(output_dir, overrides):
    """R18-FPN Faster R-CNN at 64 px on CPU, GN everywhere, from scratch."""
    tiny = {
        "MODEL.DEVICE": "cpu",
        "MODEL.WEIGHTS": "",
        "MODEL.MASK_ON": False,
        "MODEL.BACKBONE.FREEZE_AT": 0,
        "MODEL.RESNETS.DEPTH": 18,
        "MODEL.RESNETS.RES2_OUT_CHANNELS": 64,
        "MODEL.RESNETS.NORM": "GN",
        "MODEL.FPN.OUT_CHANNELS": 32,
        "MODEL.ROI_BOX_HEAD.NUM_CONV": 0,
        "MODEL.ROI_BOX_HEAD.NUM_FC": 1,
        "MODEL.ROI_BOX_HEAD.FC_DIM": 64,
        "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE": 32,
        "MODEL.ROI_HEADS.NUM_CLASSES": 2,
        "MODEL.RPN.BATCH_SIZE_PER_IMAGE": 32,
        "INPUT.MIN_SIZE_TRAIN": (64,),
        "INPUT.MAX_SIZE_TRAIN": 96,
        "DATASETS.TRAIN": (TINY_DATASET,),
        "DATASETS.TEST": (),
        "DATALOADER.NUM_WORKERS": 0,
        "TEST.EVAL_PERIOD": 0,
        "RETHINK.PLOT_LEARNING_CURVE": False,
        "RETHINK.AUTO_RESUME": False,
        "OUTPUT_DIR": str(output_dir),
    }
    # Base-RCNN-FPN: FPN features, anchors and heads (build_resnet_fpn_backbone)
    return make_cfg({**tiny, **overrides}, model_zoo.get_config_file("Base-RCNN-FPN.yaml"))


class LRRecorder(HookBase):
    """The LR the scheduler hands to each iteration."""

    def __init__(self):
        self.lrs = []

    def before_step(self):
        self.lrs.append(self.trainer.scheduler.get_last_lr()[0])


def test_lr_of_a_real_run_follows_the_resolved_schedule(tmp_path):
    from rethink_d2.engine import Trainer

    torch.set_num_threads(1)
    register_tiny_dataset(str(tmp_path))
    # 0.5 x BASE_ITER 10 = 5 iterations at REFERENCE_BATCH 4 -> 10 at batch 2; tails 3 and 1
    # -> steps 4 and 8; LR 0.02 at 4 -> 0.01 at 2; warm-up 1 reference iteration -> 2
    schedule = {"SPEC": "0.5x", "BASE_ITER": 10, "REFERENCE_BATCH": 4, "TAILS": (3, 1)}
    overrides = {f"RETHINK.SCHEDULE.{k}": v for k, v in schedule.items()}
    overrides.update(
        {
            "RETHINK.SCHEDULE.WARMUP_ITERS": 1,
            "SOLVER.WARMUP_FACTOR": 0.5,
            "SOLVER.IMS_PER_BATCH": 2,
            "SOLVER.CHECKPOINT_PERIOD": 1000,
            "RETHINK.LOG_DATA_SEEN": False,
        }
    )
    cfg = tiny_train_cfg(tmp_path / "run", overrides)
    trainer = Trainer(cfg)
    assert solver_of(trainer.cfg) == (10, (4, 8), 0.01)
    assert trainer.cfg.SOLVER.WARMUP_ITERS == 2
    recorder = LRRecorder()
    trainer.register_hooks([recorder])
    trainer.train()
    expected = [0.005, 0.0075, 0.01, 0.01, 0.001, 0.001, 0.001, 0.001, 0.0001, 0.0001]
    assert recorder.lrs == pytest.approx(expected, rel=1e-9)
    # what Detectron2 logged agrees
    with open(tmp_path / "run" / "metrics.json") as f:
        records = [json.loads(line) for line in f if line.strip()]
    last = [r for r in records if "lr" in r][-1]
    assert last["iteration"] == 9 and last["lr"] == pytest.approx(0.0001)
