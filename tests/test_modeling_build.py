"""Building the scratch detector: same architecture as stock Detectron2, norms everywhere, init."""

import math

import pytest
import torch
from detectron2 import model_zoo
from detectron2.config import get_cfg
from detectron2.layers import Conv2d, FrozenBatchNorm2d, NaiveSyncBatchNorm, ShapeSpec
from detectron2.modeling import build_backbone
from detectron2.modeling import build_model as d2_build_model
from detectron2.structures import BitMasks, Boxes, Instances, Keypoints
from detectron2.utils.events import EventStorage
from torch import nn

from rethink_d2 import add_rethink_config
from rethink_d2.modeling import (
    apply_norm_config,
    apply_pretrained_format,
    build_model,
    check_scratch_config,
)
from rethink_d2.utils.errors import ConfigError

STOCK_CONFIG = "Misc/scratch_mask_rcnn_R_50_FPN_3x_gn.yaml"
NORM_NODES = ("RESNETS", "FPN", "ROI_BOX_HEAD", "ROI_MASK_HEAD")
# name -> (MODEL.RESNETS.DEPTH, NUM_GROUPS, WIDTH_PER_GROUP, RES2_OUT_CHANNELS)
ARCHS = {
    "R18": (18, 1, 64, 64),
    "R34": (34, 1, 64, 64),
    "R50": (50, 1, 64, 256),
    "R101": (101, 1, 64, 256),
    "R152": (152, 1, 64, 256),
    "X50-32x4d": (50, 32, 4, 256),
    "X101-32x8d": (101, 32, 8, 256),
}
# Small sample counts so that a forward/backward on 64x64 images takes well under a second.
TINY = [
    "MODEL.RPN.BATCH_SIZE_PER_IMAGE", 32,
    "MODEL.RPN.PRE_NMS_TOPK_TRAIN", 200,
    "MODEL.RPN.POST_NMS_TOPK_TRAIN", 32,
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", 16,
    "MODEL.ROI_HEADS.NUM_CLASSES", 3,
]  # fmt: skip


def arch_opts(arch):
    depth, groups, width, res2 = ARCHS[arch]
    return [
        "MODEL.RESNETS.DEPTH", depth,
        "MODEL.RESNETS.NUM_GROUPS", groups,
        "MODEL.RESNETS.WIDTH_PER_GROUP", width,
        "MODEL.RESNETS.RES2_OUT_CHANNELS", res2,
    ]  # fmt: skip


def stock_cfg(arch, d2_norm):
    """Detectron2's own scratch config, with only plain Detectron2 keys changed."""
    cfg = get_cfg()
    cfg.merge_from_file(model_zoo.get_config_file(STOCK_CONFIG))
    cfg.MODEL.DEVICE = "cpu"
    cfg.merge_from_list(arch_opts(arch))
    for node in NORM_NODES:
        cfg.MODEL[node].NORM = d2_norm
    return cfg


def our_cfg(arch, norm, world_size=1, opts=(), **rethink):
    """The same file, our backbone name and one norm key; resolved like resolve_config does."""
    cfg = get_cfg()
    add_rethink_config(cfg)
    cfg.merge_from_file(model_zoo.get_config_file(STOCK_CONFIG))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.BACKBONE.NAME = "build_rethink_resnet_fpn_backbone"
    cfg.RETHINK.NORM = norm
    for key, value in rethink.items():
        setattr(cfg.RETHINK, key, value)
    cfg.merge_from_list(arch_opts(arch) + list(opts))
    apply_pretrained_format(cfg)
    apply_norm_config(cfg)
    check_scratch_config(cfg)
    return cfg


def shapes(model):
    return {name: tuple(value.shape) for name, value in model.state_dict().items()}


def normalized_convs(model):
    """(name, conv) for every conv the paper normalizes: backbone, FPN, box/mask/keypoint head."""
    parts = {"backbone": model.backbone}
    for head in ("box_head", "mask_head", "keypoint_head"):
        if hasattr(model.roi_heads, head):
            parts[head] = getattr(model.roi_heads, head)
    for part, module in parts.items():
        for name, conv in module.named_modules():
            if isinstance(conv, Conv2d) and name != "predictor":  # mask logits: no norm
                yield f"{part}.{name}", conv


def assert_norms_everywhere(model, expected_type, num_groups=32):
    convs = list(normalized_convs(model))
    assert len(convs) > 20
    for name, conv in convs:
        assert type(conv.norm) is expected_type, f"{name} is followed by {conv.norm!r}"
        assert conv.bias is None, f"{name} has a bias although a norm follows it"
        if expected_type is nn.GroupNorm:
            assert conv.norm.num_groups == num_groups
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in model.modules())
    assert all(p.requires_grad for p in model.parameters())


# Our RETHINK.NORM -> Detectron2's name in the stock config, and our module type on the CPU
# (SyncBN off CUDA is Detectron2's NaiveSyncBatchNorm: plain BN in one process).
NORMS = {
    "GN": ("GN", nn.GroupNorm),
    "SyncBN": ("SyncBN", NaiveSyncBatchNorm),
    "BN": ("BN", nn.BatchNorm2d),
}
MATRIX = [(arch, norm) for arch in ("R18", "R34", "R50", "R101", "R152") for norm in NORMS] + [
    ("X50-32x4d", "GN"),
    ("X101-32x8d", "GN"),
]


@pytest.mark.parametrize("arch, norm", MATRIX)
def test_same_architecture_as_stock_detectron2(arch, norm):
    d2_norm, module_type = NORMS[norm]
    stock = d2_build_model(stock_cfg(arch, d2_norm))
    stock_shapes, stock_params = shapes(stock), sum(p.numel() for p in stock.parameters())
    del stock
    ours = build_model(our_cfg(arch, norm))
    assert sum(p.numel() for p in ours.parameters()) == stock_params
    assert shapes(ours) == stock_shapes
    assert_norms_everywhere(ours, module_type)


def tiny_batch(num_images=2, size=64, keypoints=False):
    generator = torch.Generator().manual_seed(0)
    boxes = torch.tensor([[4.0, 6.0, 40.0, 44.0], [20.0, 10.0, 60.0, 58.0]])
    batch = []
    for _ in range(num_images):
        instances = Instances((size, size))
        instances.gt_boxes = Boxes(boxes.clone())
        instances.gt_classes = torch.tensor([0, 2])
        masks = torch.zeros(len(boxes), size, size, dtype=torch.bool)
        for i, (x0, y0, x1, y1) in enumerate(boxes.int().tolist()):
            masks[i, y0:y1, x0:x1] = True
        instances.gt_masks = BitMasks(masks)
        if keypoints:
            points = torch.rand(len(boxes), 17, 3, generator=generator) * 30 + 15
            points[:, :, 2] = 2  # visible
            instances.gt_keypoints = Keypoints(points)
        image = torch.rand(3, size, size, generator=generator) * 255
        batch.append({"image": image, "instances": instances})
    return batch


def train_step(model, batch):
    model.train()
    with EventStorage():
        losses = model(batch)
    total = sum(losses.values())
    assert torch.isfinite(total), losses
    total.backward()
    return losses


@pytest.mark.parametrize("arch", ["R18", "R50"])
@pytest.mark.parametrize("norm", list(NORMS))
def test_forward_backward_on_tiny_input(arch, norm):
    torch.manual_seed(0)
    model = build_model(our_cfg(arch, norm, opts=TINY))
    losses = train_step(model, tiny_batch())
    assert {"loss_cls", "loss_box_reg", "loss_mask", "loss_rpn_cls", "loss_rpn_loc"} <= set(losses)
    for name, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
    assert model.backbone.bottom_up.stem.conv1.weight.grad.abs().sum() > 0


def test_syncbn_resolved_for_two_cpu_processes_uses_naive_sync_bn():
    model = build_model(our_cfg("R18", "SyncBN", world_size=2))
    assert_norms_everywhere(model, NaiveSyncBatchNorm)
    modes = {name.split(".")[0]: conv.norm._stats_mode for name, conv in normalized_convs(model)}
    assert modes == {"backbone": "", "box_head": "N", "mask_head": "N"}


def test_init_is_he_for_resnet_and_head_convs_and_identity_for_norms():
    torch.manual_seed(0)
    model = build_model(our_cfg("R50", "GN"))
    checked = 0
    for name, conv in normalized_convs(model):
        weight = conv.weight.detach()
        out_channels, in_channels, kh, kw = weight.shape
        if name.startswith("backbone.fpn_"):
            expected = 1.0 / math.sqrt(in_channels * kh * kw)  # Xavier (c2_xavier_fill)
        else:
            expected = math.sqrt(2.0 / (out_channels * kh * kw))  # He, fan_out
        assert weight.std().item() == pytest.approx(expected, rel=0.06), name
        assert torch.equal(conv.norm.weight, torch.ones_like(conv.norm.weight)), name
        assert torch.equal(conv.norm.bias, torch.zeros_like(conv.norm.bias)), name
        checked += 1
    assert checked == 53 + 8 + 4 + 4  # R50 convs, FPN lateral+output, box head, mask head


def test_gn_groups_apply_to_backbone_fpn_and_heads():
    cfg = our_cfg("R18", "GN", GN_GROUPS=16)
    model = build_model(cfg)
    assert_norms_everywhere(model, nn.GroupNorm, num_groups=16)
    reference = build_model(our_cfg("R18", "GN"))
    assert shapes(model) == shapes(reference)


def test_zero_init_residual_zeros_the_last_norm_of_every_block():
    for arch, last in (("R18", "conv2"), ("R50", "conv3")):
        backbone = build_backbone(our_cfg(arch, "GN", ZERO_INIT_RESIDUAL=True))
        blocks = [block for stage in backbone.bottom_up.stages for block in stage]
        assert len(blocks) == (8 if arch == "R18" else 16)
        for block in blocks:
            for name, conv in block.named_children():
                if not isinstance(conv, Conv2d):
                    continue
                value = 0.0 if name == last else 1.0
                assert torch.all(conv.norm.weight == value), (arch, name)


def test_zero_init_is_off_by_default():
    backbone = build_backbone(our_cfg("R18", "GN"))
    assert torch.all(backbone.bottom_up.res2[0].conv2.norm.weight == 1)


def test_weight_standardization_on_resnet_convs():
    torch.manual_seed(0)
    cfg = our_cfg("R18", "GN", WEIGHT_STANDARDIZATION=True)
    backbone = build_backbone(cfg)
    plain = build_backbone(our_cfg("R18", "GN"))
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(backbone) == count(plain)
    convs = [m for m in backbone.bottom_up.modules() if isinstance(m, Conv2d)]
    assert len(convs) == 20
    for conv in convs:
        assert torch.nn.utils.parametrize.is_parametrized(conv, "weight")
        flat = conv.weight.detach().flatten(1)
        assert torch.allclose(flat.mean(1), torch.zeros(len(flat)), atol=1e-5)
        assert torch.allclose(flat.std(1), torch.ones(len(flat)), atol=1e-3)
    fpn_convs = [m for n, m in backbone.named_modules() if n.startswith("fpn_")]
    assert fpn_convs and not any(
        torch.nn.utils.parametrize.is_parametrized(m, "weight") for m in fpn_convs
    )
    out = backbone(torch.rand(2, 3, 64, 64))
    sum(o.sum() for o in out.values()).backward()
    original = backbone.bottom_up.stem.conv1.parametrizations.weight.original
    assert original.grad is not None and original.grad.abs().sum() > 0


def test_keypoint_head_gets_the_selected_norm():
    opts = TINY + [
        "MODEL.KEYPOINT_ON", True,
        "MODEL.MASK_ON", False,
        "MODEL.ROI_KEYPOINT_HEAD.CONV_DIMS", (64, 64),
        "MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE", 1,
    ]  # fmt: skip
    cfg = our_cfg("R18", "GN", opts=opts)
    assert cfg.MODEL.ROI_KEYPOINT_HEAD.NAME == "NormKRCNNConvDeconvUpsampleHead"
    torch.manual_seed(0)
    model = build_model(cfg)
    assert_norms_everywhere(model, nn.GroupNorm)
    head = model.roi_heads.keypoint_head
    assert [n for n, _ in head.named_children()][:4] == [
        "conv_fcn1", "conv_fcn_relu1", "conv_fcn2", "conv_fcn_relu2"
    ]  # fmt: skip
    stock = stock_cfg("R18", "GN")
    stock.merge_from_list(opts)
    stock_head = d2_build_model(stock).roi_heads.keypoint_head
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    # each conv loses its bias (64) and gains GN gamma and beta (2 x 64)
    assert count(head) == count(stock_head) + 2 * 64
    losses = train_step(model, tiny_batch(keypoints=True))
    assert torch.isfinite(losses["loss_keypoint"])
    assert head.conv_fcn1.weight.grad.abs().sum() > 0


def test_registered_builder_refuses_an_unresolved_config():
    cfg = get_cfg()
    add_rethink_config(cfg)
    cfg.merge_from_file(model_zoo.get_config_file(STOCK_CONFIG))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.BACKBONE.NAME = "build_rethink_resnet_fpn_backbone"
    cfg.MODEL.ROI_BOX_HEAD.NORM = ""  # e.g. a base file without head norms, never resolved
    with pytest.raises(ConfigError, match="MODEL.ROI_BOX_HEAD.NORM=''.*resolve_config"):
        d2_build_model(cfg)


def test_registered_builder_leaves_the_scratch_guard_to_training():
    """A scratch config with a trained model's weights builds: inference must load them."""
    cfg = our_cfg("R18", "GN")
    cfg.MODEL.WEIGHTS = "output/demo/model_final.pth"
    backbone = build_backbone(cfg, ShapeSpec(channels=3))
    assert all(p.requires_grad for p in backbone.parameters())
