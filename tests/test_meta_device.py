"""GPU placement proven on a CPU: every model is built with ``MODEL.DEVICE meta``.

Detectron2's ``build_model`` builds on the CPU, then moves the model to ``MODEL.DEVICE``. A
module created after that move (a regrouped GroupNorm, a head built late) stays on the CPU: on
a GPU the first forward fails, on a CPU nothing shows. On the ``meta`` device every such tensor
stands out, and building costs no memory. Each case is built through rethink-d2's
``build_model`` (what ``Trainer.build_model`` calls) and through Detectron2's own
``detectron2.modeling.build_model``.
"""

import pytest
from detectron2.config import get_cfg
from detectron2.modeling import build_model as d2_build_model

from rethink_d2 import add_rethink_config, model_zoo, resolve_config
from rethink_d2.engine import Trainer

META = "meta"
BUILDERS = {"rethink_d2": Trainer.build_model, "detectron2": d2_build_model}


def shipped_configs():
    """Every shipped experiment config (the ``Base-*`` files only exist to be inherited)."""
    return [c for c in model_zoo.list_configs() if not c.split("/")[-1].startswith("Base-")]


def load(config, opts=(), world_size=1, resolve_device=META):
    """
    The config file merged (plus ``opts``), resolved for ``world_size`` processes on
    ``resolve_device`` (which picks the SyncBN flavour), then set to build on ``meta``.
    """
    cfg = get_cfg()
    add_rethink_config(cfg)
    cfg.merge_from_file(model_zoo.get_config_file(config))
    cfg.merge_from_list(list(opts))
    cfg.MODEL.DEVICE = resolve_device
    cfg = resolve_config(cfg, world_size=world_size)
    cfg.MODEL.DEVICE = META
    return cfg


def architecture(cfg):
    """What decides the modules of the built model: MODEL (but the weights file and the pixel
    statistics, which are values) and RETHINK's model keys."""
    model = cfg.MODEL.clone()
    model.WEIGHTS, model.PIXEL_MEAN, model.PIXEL_STD = "", [], []
    rethink = {k: cfg.RETHINK[k] for k in ("NORM", "GN_GROUPS", "WEIGHT_STANDARDIZATION")}
    rethink["ZERO_INIT_RESIDUAL"] = cfg.RETHINK.ZERO_INIT_RESIDUAL
    return model.dump() + repr(sorted(rethink.items()))


def unique_architectures():
    """One shipped config per distinct model (schedules and datasets do not change the model)."""
    seen = {}
    for config in shipped_configs():
        seen.setdefault(architecture(load(config)), config)
    return sorted(seen.values())


def off_meta(model):
    """Names of the parameters and buffers of ``model`` that are not on the meta device."""
    tensors = list(model.named_parameters()) + list(model.named_buffers())
    return [f"{name} ({t.device})" for name, t in tensors if t.device.type != META]


def test_the_narrowing_keeps_every_shipped_config():
    configs = shipped_configs()
    assert len(configs) > 20 and "quickstart/scratch_R18_GN_shapes.yaml" in configs
    built = {architecture(load(c)) for c in unique_architectures()}
    # every shipped config has the architecture of one of the configs that are built
    assert all(architecture(load(c)) in built for c in configs)
    # ... and they differ: R50/R101/X152, GN/SyncBN, masks, keypoints, cascade, VOC
    assert len(built) >= 8


@pytest.mark.parametrize("builder", sorted(BUILDERS))
@pytest.mark.parametrize("config", unique_architectures())
def test_shipped_config_builds_on_the_meta_device(config, builder):
    model = BUILDERS[builder](load(config))
    assert off_meta(model) == []
    assert sum(1 for _ in model.parameters()) > 100


QUICKSTART = "quickstart/scratch_R18_GN_shapes.yaml"
KEYPOINTS = "keypoints/scratch_R50_GN_3x.yaml"
CASCADE = "enhanced/scratch_R101_GN_9x_ms_cascade.yaml"
GN16 = ["RETHINK.GN_GROUPS", "16"]
# name -> (config, overrides, world size, device the norms are resolved for)
NORM_OPTIONS = {
    "GN 16 groups": (QUICKSTART, GN16, 1, META),
    "GN 16 groups, R50": ("scratch_R50_GN_3x.yaml", GN16, 1, META),
    "Weight Standardization": (QUICKSTART, ["RETHINK.WEIGHT_STANDARDIZATION", "True"], 1, META),
    "zero-init residual": (QUICKSTART, ["RETHINK.ZERO_INIT_RESIDUAL", "True"], 1, META),
    "SyncBN, 1 process": (QUICKSTART, ["RETHINK.NORM", "SyncBN"], 1, META),
    "SyncBN, 2 CPU processes": (QUICKSTART, ["RETHINK.NORM", "SyncBN"], 2, "cpu"),
    "SyncBN, 2 GPU processes": (QUICKSTART, ["RETHINK.NORM", "SyncBN"], 2, "cuda"),
    "BN": (QUICKSTART, ["RETHINK.NORM", "BN"], 1, META),
    "keypoints, GN 16 groups": (KEYPOINTS, GN16, 1, META),
    "keypoints, SyncBN, 2 GPU processes": (KEYPOINTS, ["RETHINK.NORM", "SyncBN"], 2, "cuda"),
    "cascade, GN 16 groups": (CASCADE, GN16, 1, META),
}


@pytest.mark.parametrize("builder", sorted(BUILDERS))
@pytest.mark.parametrize("option", sorted(NORM_OPTIONS))
def test_norm_option_builds_on_the_meta_device(option, builder):
    config, opts, world_size, device = NORM_OPTIONS[option]
    model = BUILDERS[builder](load(config, opts, world_size, device))
    assert off_meta(model) == []


def test_regrouped_group_norms_reach_the_heads():
    # the GN 16 case above checks what it claims: heads regrouped after the move to the device
    model = Trainer.build_model(load(CASCADE, GN16))
    groups = {
        name: m.num_groups for name, m in model.named_modules() if type(m).__name__ == "GroupNorm"
    }
    assert set(groups.values()) == {16}
    assert any(name.startswith("roi_heads.box_head.2.") for name in groups)
