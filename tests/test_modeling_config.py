"""Config transforms of rethink_d2.modeling: norm mapping, input format, scratch guard, checks."""

import pytest
from detectron2.config import get_cfg

import rethink_d2  # noqa: F401  (registers the backbone and keypoint head)
from rethink_d2 import add_rethink_config, resolve_config
from rethink_d2.engine import build_config
from rethink_d2.modeling import (
    apply_norm_config,
    apply_pretrained_format,
    check_model_config,
    check_scratch_config,
    detect_pretrained_format,
)
from rethink_d2.utils.errors import ConfigError

NORM_KEYS = (
    "RESNETS",
    "FPN",
    "ROI_BOX_HEAD",
    "ROI_MASK_HEAD",
)


def make_cfg(**rethink):
    """A default Detectron2 config with the RETHINK node and scratch-friendly backbone keys."""
    cfg = get_cfg()
    add_rethink_config(cfg)
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.BACKBONE.NAME = "build_rethink_resnet_fpn_backbone"
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    for key, value in rethink.items():
        setattr(cfg.RETHINK, key, value)
    return cfg


def norms(cfg):
    return tuple(cfg.MODEL[node].NORM for node in NORM_KEYS)


def test_import_leaves_detectron2_default_config_unchanged():
    fresh = get_cfg()
    assert "RETHINK" not in fresh
    assert fresh.MODEL.RESNETS.NORM == "FrozenBN"
    assert fresh.MODEL.BACKBONE.FREEZE_AT == 2


@pytest.mark.parametrize(
    "norm, device, backbone, head",
    [
        ("GN", "cpu", "GN", "GN"),
        ("GN", "cuda", "GN", "GN"),
        ("BN", "cpu", "BN", "BN"),
        ("SyncBN", "cuda", "SyncBN", "naiveSyncBN_N"),
        ("SyncBN", "cuda:1", "SyncBN", "naiveSyncBN_N"),
        ("SyncBN", "cpu", "naiveSyncBN", "naiveSyncBN_N"),
        ("SyncBN", "meta", "naiveSyncBN", "naiveSyncBN_N"),
    ],
)
def test_apply_norm_config_writes_every_norm_key(norm, device, backbone, head):
    cfg = make_cfg(NORM=norm)
    cfg.MODEL.DEVICE = device
    out = apply_norm_config(cfg)
    assert out is cfg
    assert norms(cfg) == (backbone, backbone, head, head)


def test_empty_norm_leaves_keys_as_written():
    cfg = make_cfg(NORM="")
    cfg.MODEL.FPN.NORM = "GN"
    apply_norm_config(cfg)
    assert norms(cfg) == ("FrozenBN", "GN", "", "")


def test_keypoint_head_gets_the_norm_version():
    cfg = make_cfg(NORM="GN")
    cfg.MODEL.KEYPOINT_ON = True
    apply_norm_config(cfg)
    assert cfg.MODEL.ROI_KEYPOINT_HEAD.NAME == "NormKRCNNConvDeconvUpsampleHead"
    custom = make_cfg(NORM="GN")
    custom.MODEL.KEYPOINT_ON = True
    custom.MODEL.ROI_KEYPOINT_HEAD.NAME = "MyHead"
    apply_norm_config(custom)
    assert custom.MODEL.ROI_KEYPOINT_HEAD.NAME == "MyHead"
    off = apply_norm_config(make_cfg(NORM="GN"))
    assert off.MODEL.ROI_KEYPOINT_HEAD.NAME == "KRCNNConvDeconvUpsampleHead"


@pytest.mark.parametrize(
    "key, value, message",
    [("NORM", "LayerNorm", "RETHINK.NORM='LayerNorm'"), ("GN_GROUPS", 0, "RETHINK.GN_GROUPS=0")],
)
def test_invalid_norm_settings_are_refused(key, value, message):
    with pytest.raises(ConfigError, match=message):
        apply_norm_config(make_cfg(**{key: value}))


@pytest.mark.parametrize(
    "weights, scratch, expected",
    [
        ("", True, "scratch"),
        ("", False, None),
        ("detectron2://ImageNetPretrained/MSRA/R-50.pkl", False, "msra"),
        ("catalog://ImageNetPretrained/MSRA/R-101", False, "msra"),
        ("catalog://ImageNetPretrained/FAIR/R-50-GN", False, "fair_caffe2"),
        ("detectron2://ImageNetPretrained/FAIR/X-101-32x8d.pkl", False, "fair"),
        ("/models/resnet50-0676ba61.pth", False, "torchvision"),
        ("/models/torchvision/R-18.pth", False, "torchvision"),
        ("output/run1/model_final.pth", False, None),
    ],
)
def test_detect_pretrained_format(weights, scratch, expected):
    assert detect_pretrained_format(weights, scratch) == expected


def input_settings(cfg):
    return (
        cfg.INPUT.FORMAT,
        list(cfg.MODEL.PIXEL_MEAN),
        list(cfg.MODEL.PIXEL_STD),
        cfg.MODEL.RESNETS.STRIDE_IN_1X1,
    )


IMAGENET_MEAN_BGR = [103.53, 116.28, 123.675]
IMAGENET_STD_BGR = [57.375, 57.12, 58.395]


@pytest.mark.parametrize(
    "weights, scratch, expected",
    [
        ("", True, ("BGR", IMAGENET_MEAN_BGR, IMAGENET_STD_BGR, False)),
        (
            "detectron2://ImageNetPretrained/MSRA/R-50.pkl",
            False,
            ("BGR", IMAGENET_MEAN_BGR, [1.0, 1.0, 1.0], True),
        ),
        (
            "catalog://ImageNetPretrained/FAIR/R-50-GN",
            False,
            ("BGR", IMAGENET_MEAN_BGR, [1.0, 1.0, 1.0], False),
        ),
        (
            "/m/resnet18-f37072fd.pth",
            False,
            ("RGB", IMAGENET_MEAN_BGR[::-1], IMAGENET_STD_BGR[::-1], False),
        ),
    ],
)
def test_apply_pretrained_format_auto(weights, scratch, expected):
    cfg = make_cfg(SCRATCH=scratch)
    cfg.MODEL.WEIGHTS = weights
    assert input_settings(apply_pretrained_format(cfg)) == expected


def test_unrecognized_weights_and_empty_format_keep_input_settings():
    cfg = make_cfg(SCRATCH=False)
    cfg.MODEL.WEIGHTS = "output/run1/model_final.pth"
    before = input_settings(cfg)
    assert input_settings(apply_pretrained_format(cfg)) == before
    cfg = make_cfg(PRETRAINED_FORMAT="")
    before = input_settings(cfg)
    assert input_settings(apply_pretrained_format(cfg)) == before
    # an explicit format wins over detection
    cfg = make_cfg(PRETRAINED_FORMAT="msra")
    assert input_settings(apply_pretrained_format(cfg))[3] is True


def test_unknown_pretrained_format_is_refused():
    with pytest.raises(ConfigError, match="RETHINK.PRETRAINED_FORMAT='detectron'"):
        apply_pretrained_format(make_cfg(PRETRAINED_FORMAT="detectron"))


# ---- scratch guard -------------------------------------------------------------------------


def resolved_scratch_cfg():
    return apply_norm_config(make_cfg())


@pytest.mark.parametrize(
    "key, value, fix",
    [
        ("MODEL.WEIGHTS", "detectron2://ImageNetPretrained/MSRA/R-50.pkl", "set it to ''"),
        ("MODEL.BACKBONE.FREEZE_AT", 2, "set it to 0"),
        ("MODEL.RESNETS.NORM", "FrozenBN", "RETHINK.NORM"),
        ("MODEL.ROI_MASK_HEAD.NORM", "FrozenBN", "RETHINK.NORM"),
        ("MODEL.RETINANET.NORM", "FrozenBN", "RETHINK.NORM"),
    ],
)
def test_scratch_guard_names_the_key_to_change(key, value, fix):
    cfg = resolved_scratch_cfg()
    check_scratch_config(cfg)  # the resolved default is fine
    cfg.merge_from_list([key, value])
    with pytest.raises(ConfigError) as info:
        check_scratch_config(cfg)
    message = str(info.value)
    assert key in message and fix in message
    assert "RETHINK.SCRATCH_GUARD False" in message and "\n" not in message


def test_scratch_guard_lists_every_problem_in_one_message():
    cfg = make_cfg(NORM="")  # Detectron2 defaults: FrozenBN, and here weights too
    cfg.MODEL.WEIGHTS = "x.pkl"
    cfg.MODEL.BACKBONE.FREEZE_AT = 2
    with pytest.raises(ConfigError) as info:
        check_scratch_config(cfg)
    for key in ("MODEL.WEIGHTS", "MODEL.BACKBONE.FREEZE_AT", "MODEL.RESNETS.NORM"):
        assert key in str(info.value)


@pytest.mark.parametrize("opt_out", [{"SCRATCH": False}, {"SCRATCH_GUARD": False}])
def test_scratch_guard_opt_outs(opt_out):
    cfg = make_cfg(NORM="", **opt_out)
    cfg.MODEL.WEIGHTS = "x.pkl"
    cfg.MODEL.BACKBONE.FREEZE_AT = 2
    check_scratch_config(cfg)


def test_the_guard_runs_where_training_starts_not_in_resolve_config(tmp_path):
    cfg = make_cfg()
    cfg.MODEL.BACKBONE.FREEZE_AT = 2
    resolve_config(cfg, world_size=1)  # build_model and inference resolve it too: no guard
    path = tmp_path / "frozen.yaml"
    path.write_text(cfg.dump())
    with pytest.raises(ConfigError, match="MODEL.BACKBONE.FREEZE_AT=2"):
        build_config(str(path), for_training=True)
    build_config(str(path), for_training=False)


# ---- checks before building ----------------------------------------------------------------


@pytest.mark.parametrize("key", ["MODEL.RESNETS.NORM", "MODEL.ROI_BOX_HEAD.NORM"])
def test_unresolved_norms_are_refused_before_building(key):
    cfg = resolved_scratch_cfg()
    check_model_config(cfg)
    cfg.merge_from_list([key, "BN"])
    with pytest.raises(ConfigError, match=f"{key}='BN' disagrees with RETHINK.NORM='GN'.*resolve"):
        check_model_config(cfg)


def test_config_without_rethink_node_is_refused():
    cfg = get_cfg()
    with pytest.raises(ConfigError, match="add_rethink_config"):
        check_model_config(cfg)


@pytest.mark.parametrize(
    "opts, message",
    [
        (["RETHINK.GN_GROUPS", 48], "RETHINK.GN_GROUPS"),
        (["MODEL.FPN.OUT_CHANNELS", 48], "MODEL.FPN.OUT_CHANNELS"),
        (["MODEL.ROI_BOX_HEAD.NUM_CONV", 4, "MODEL.ROI_BOX_HEAD.CONV_DIM", 100], "CONV_DIM"),
        (["MODEL.RESNETS.DEPTH", 18], "MODEL.RESNETS.RES2_OUT_CHANNELS 64"),
        (["MODEL.RESNETS.DEPTH", 26], "MODEL.RESNETS.DEPTH=26"),
    ],
)
def test_bad_widths_and_depths_are_refused_before_building(opts, message):
    cfg = resolved_scratch_cfg()
    cfg.merge_from_list(opts)
    with pytest.raises(ConfigError, match=message):
        check_model_config(cfg)
