"""The pre-trained counterpart path: torchvision checkpoints load into our backbone, exactly."""

import pytest
import torch
import torchvision
from detectron2 import model_zoo
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg

from rethink_d2 import add_rethink_config
from rethink_d2.modeling import (
    apply_norm_config,
    apply_pretrained_format,
    build_model,
    check_scratch_config,
    maybe_convert_torchvision_checkpoint,
)


class TorchvisionAwareCheckpointer(DetectionCheckpointer):
    """What the engine's checkpointer does: convert in ``_load_file``."""

    def _load_file(self, filename):
        return maybe_convert_torchvision_checkpoint(super()._load_file(filename))


def randomize_batch_norms(model, seed):
    """Give every BN non-trivial statistics and affine parameters, as a trained model has."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                n = module.num_features
                module.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(n, generator=generator) * 0.1)
                module.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)


def pretrained_cfg(depth, weights):
    cfg = get_cfg()
    add_rethink_config(cfg)
    cfg.merge_from_file(model_zoo.get_config_file("Base-RCNN-FPN.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.MASK_ON = True
    cfg.MODEL.WEIGHTS = weights
    cfg.MODEL.BACKBONE.NAME = "build_rethink_resnet_fpn_backbone"
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    cfg.MODEL.RESNETS.DEPTH = depth
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64 if depth < 50 else 256
    cfg.MODEL.ROI_BOX_HEAD.NAME = "FastRCNNConvFCHead"
    cfg.MODEL.ROI_BOX_HEAD.NUM_CONV = 4
    cfg.MODEL.ROI_BOX_HEAD.NUM_FC = 1
    cfg.RETHINK.NORM = "BN"  # torchvision's norm, so that every tensor has a place
    cfg.RETHINK.SCRATCH = False
    apply_pretrained_format(cfg)
    apply_norm_config(cfg)
    check_scratch_config(cfg)
    return cfg


@pytest.mark.parametrize("depth", [18, 50])
def test_torchvision_checkpoint_loads_exactly_into_our_backbone(tmp_path, depth):
    torch.manual_seed(depth)
    reference = getattr(torchvision.models, f"resnet{depth}")(weights=None).eval()
    randomize_batch_norms(reference, seed=depth)
    path = tmp_path / f"resnet{depth}-0123abcd.pth"  # torchvision's file naming
    torch.save(reference.state_dict(), path)

    cfg = pretrained_cfg(depth, str(path))
    # "auto" recognized torchvision weights: RGB input, torchvision's v1.5 stride placement
    assert cfg.INPUT.FORMAT == "RGB"
    assert cfg.MODEL.RESNETS.STRIDE_IN_1X1 is False
    assert list(cfg.MODEL.PIXEL_STD) == [58.395, 57.12, 57.375]
    model = build_model(cfg)
    TorchvisionAwareCheckpointer(model).load(cfg.MODEL.WEIGHTS)

    ours = model.backbone.bottom_up.state_dict()
    theirs = reference.state_dict()
    converted = maybe_convert_torchvision_checkpoint({"model": dict(theirs)})["model"]
    assert set(converted) == set(ours)  # every backbone tensor is covered, the classifier dropped
    for name, value in converted.items():
        assert torch.equal(ours[name], value), name

    # same function: the detector's ResNet computes torchvision's features
    bottom_up = model.backbone.bottom_up.eval()
    image = torch.rand(1, 3, 64, 64)
    expected = reference.layer4(
        reference.layer3(
            reference.layer2(
                reference.layer1(
                    reference.maxpool(reference.relu(reference.bn1(reference.conv1(image))))
                )
            )
        )
    )
    with torch.no_grad():
        assert torch.allclose(bottom_up(image)["res5"], expected, atol=1e-5)


def test_conversion_names_and_passthrough():
    state = {
        "conv1.weight": torch.zeros(1),
        "bn1.running_mean": torch.zeros(1),
        "layer1.0.conv1.weight": torch.zeros(1),
        "layer1.0.bn2.bias": torch.zeros(1),
        "layer2.0.downsample.0.weight": torch.zeros(1),
        "layer4.2.downsample.1.running_var": torch.zeros(1),
        "layer3.5.bn3.num_batches_tracked": torch.zeros(1),
        "fc.weight": torch.zeros(1),
        "bn1.weight": torch.zeros(1),
    }
    converted = maybe_convert_torchvision_checkpoint({"model": state, "extra": 1})
    assert converted["matching_heuristics"] is True and converted["extra"] == 1
    assert sorted(converted["model"]) == sorted(
        [
            "stem.conv1.weight",
            "stem.conv1.norm.running_mean",
            "res2.0.conv1.weight",
            "res2.0.conv2.norm.bias",
            "res3.0.shortcut.weight",
            "res5.2.shortcut.norm.running_var",
            "res4.5.conv3.norm.num_batches_tracked",
            "stem.conv1.norm.weight",
        ]
    )
    assert "conv1.weight" in state  # the input is not modified
    detectron2_checkpoint = {"model": {"backbone.bottom_up.stem.conv1.weight": torch.zeros(1)}}
    assert maybe_convert_torchvision_checkpoint(detectron2_checkpoint) is detectron2_checkpoint
    assert maybe_convert_torchvision_checkpoint({"model": {}}) == {"model": {}}
