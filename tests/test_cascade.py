"""The Mask R-CNN -> Cascade R-CNN switch of the enhanced scratch runs, on a tiny model."""

import os
import subprocess
import sys

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.structures import Boxes

import rethink_d2  # noqa: F401  (registers the backbone)
from rethink_d2 import add_rethink_config, model_zoo, resolve_config
from rethink_d2.engine.cascade import convert_checkpoint, mask_rcnn_to_cascade
from rethink_d2.modeling import build_model
from rethink_d2.utils.errors import ConfigError

from conftest import QUICKSTART, REPO, TINY_OPTS, run_train_net

CONVERT = os.path.join(REPO, "tools", "convert_to_cascade.py")
CASCADE_OPTS = [
    "MODEL.ROI_HEADS.NAME", "CascadeROIHeads",
    "MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG", "True",
]  # fmt: skip


def tiny_cfg(*opts):
    cfg = get_cfg()
    add_rethink_config(cfg)
    cfg.merge_from_file(QUICKSTART)
    cfg.merge_from_list(list(TINY_OPTS) + ["MODEL.DEVICE", "cpu", *opts])
    return resolve_config(cfg, world_size=1)


@pytest.fixture(scope="module")
def mask_model():
    torch.manual_seed(0)
    model = build_model(tiny_cfg())
    # trained heads are not at their init: make the class-specific regressors differ
    with torch.no_grad():
        model.roi_heads.box_predictor.bbox_pred.weight.normal_(0, 0.05)
        model.roi_heads.box_predictor.bbox_pred.bias.normal_(0, 0.5)
    return model.eval()


@pytest.fixture(scope="module")
def cascade_model(mask_model):
    cfg = tiny_cfg(*CASCADE_OPTS)
    model = build_model(cfg)
    state = mask_rcnn_to_cascade(
        mask_model.state_dict(),
        tuple(cfg.MODEL.ROI_BOX_HEAD.BBOX_REG_WEIGHTS),
        tuple(tuple(w) for w in cfg.MODEL.ROI_BOX_CASCADE_HEAD.BBOX_REG_WEIGHTS),
    )
    model.load_state_dict(state, strict=True)  # every cascade tensor, with the right shape
    return model.eval()


def test_converted_weights_fill_the_cascade_model_exactly(mask_model, cascade_model):
    cascade_state = cascade_model.state_dict()
    for key, value in mask_model.state_dict().items():
        if not key.startswith(("roi_heads.box_head.", "roi_heads.box_predictor.")):
            assert torch.equal(cascade_state[key], value), key  # backbone, RPN, mask head
    for stage in range(3):
        head = cascade_model.roi_heads.box_head[stage]
        for key, value in mask_model.roi_heads.box_head.state_dict().items():
            assert torch.equal(head.state_dict()[key], value), (stage, key)


def test_every_stage_starts_by_predicting_the_mask_rcnn_boxes(mask_model, cascade_model):
    """Same class scores; class-agnostic boxes = Mask R-CNN's class-mean boxes, at every stage."""
    torch.manual_seed(1)
    pooled = torch.randn(6, 64, 7, 7)
    proposals = Boxes(torch.tensor([[4.0, 4.0, 40.0, 30.0]] * 3 + [[10.0, 20.0, 60.0, 62.0]] * 3))
    with torch.no_grad():
        feats = mask_model.roi_heads.box_head(pooled)
        scores, deltas = mask_model.roi_heads.box_predictor(feats)
        mean_deltas = deltas.reshape(6, -1, 4).mean(dim=1)
        expected = mask_model.roi_heads.box_predictor.box2box_transform.apply_deltas(
            mean_deltas, proposals.tensor
        )
        for stage in range(3):
            heads = cascade_model.roi_heads
            s_scores, s_deltas = heads.box_predictor[stage](heads.box_head[stage](pooled))
            assert s_deltas.shape == (6, 4)
            assert torch.allclose(s_scores, scores, atol=1e-6)
            boxes = heads.box_predictor[stage].box2box_transform.apply_deltas(
                s_deltas, proposals.tensor
            )
            assert torch.allclose(boxes, expected, atol=1e-4), stage
    weights = [heads.box_predictor[s].box2box_transform.weights for s in range(3)]
    assert len(set(weights)) == 3  # the stages really decode differently


def test_converting_twice_or_a_bad_file_is_one_clear_error(cascade_model, tmp_path):
    with pytest.raises(ConfigError, match="already has cascade heads"):
        mask_rcnn_to_cascade(cascade_model.state_dict())
    with pytest.raises(ConfigError, match="does not exist"):
        convert_checkpoint(str(tmp_path / "missing.pth"), str(tmp_path / "out.pth"))
    torch.save({"weights": {}}, tmp_path / "odd.pth")
    with pytest.raises(ConfigError, match="no 'model' entry"):
        convert_checkpoint(str(tmp_path / "odd.pth"), str(tmp_path / "out.pth"))


def test_shipped_phases_chain_into_the_9x_schedule():
    """phase 1 (Mask R-CNN) + phase 2 (cascade) = the 9x run, with its drops at 750k, 790k."""

    def load(name):
        cfg = get_cfg()
        add_rethink_config(cfg)
        cfg.merge_from_file(model_zoo.get_config_file(name))
        return resolve_config(cfg, world_size=1)

    for model in ("R101", "X152"):
        full = load(f"enhanced/scratch_{model}_GN_9x_ms.yaml")
        one = load(f"enhanced/scratch_{model}_GN_9x_ms_cascade_phase1.yaml")
        two = load(f"enhanced/scratch_{model}_GN_9x_ms_cascade.yaml")
        tta = load(f"enhanced/scratch_{model}_GN_9x_ms_cascade_tta.yaml")
        assert one.SOLVER.MAX_ITER + two.SOLVER.MAX_ITER == full.SOLVER.MAX_ITER
        assert two.SOLVER.MAX_ITER == 270000  # the paper: cascade for the final 270k
        assert tuple(one.SOLVER.STEPS) == ()
        shifted = tuple(s + one.SOLVER.MAX_ITER for s in two.SOLVER.STEPS)
        assert shifted == tuple(full.SOLVER.STEPS)
        assert two.SOLVER.BASE_LR == one.SOLVER.BASE_LR == full.SOLVER.BASE_LR
        assert two.SOLVER.WARMUP_FACTOR == 1.0  # continuing: no second warm-up
        assert one.MODEL.ROI_HEADS.NAME == "StandardROIHeads"
        assert two.MODEL.ROI_HEADS.NAME == "CascadeROIHeads"
        # the default paths of train_net and the converter connect the three steps
        assert two.MODEL.WEIGHTS == os.path.join(one.OUTPUT_DIR, "model_cascade_init.pth")
        assert tta.MODEL.WEIGHTS == os.path.join(two.OUTPUT_DIR, "model_final.pth")


def test_convert_tool_and_phase_two_training(mask_model, tmp_path):
    """Phase 1 checkpoint -> tools/convert_to_cascade.py -> 2 iterations of cascade training."""
    src = tmp_path / "phase1" / "model_final.pth"
    src.parent.mkdir()
    torch.save({"model": mask_model.state_dict(), "iteration": 539999}, src)
    proc = subprocess.run(
        [sys.executable, CONVERT, str(src)], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    converted = src.parent / "model_cascade_init.pth"
    assert converted.is_file() and "iteration 539999" in proc.stdout

    bad = subprocess.run(
        [sys.executable, CONVERT, str(src), "--config", QUICKSTART],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode == 2
    errors = [line for line in bad.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "not 'CascadeROIHeads'" in errors[0], bad.stderr
    assert "Traceback" not in bad.stderr

    out = tmp_path / "phase2"
    proc = run_train_net(
        ["--config", QUICKSTART, *TINY_OPTS, *CASCADE_OPTS,
         "MODEL.WEIGHTS", str(converted), "RETHINK.SCRATCH_GUARD", "False",
         "SOLVER.MAX_ITER", "2", "SOLVER.WARMUP_FACTOR", "1.0", "OUTPUT_DIR", str(out)],
        timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = (out / "log.txt").read_text()
    assert "model_cascade_init.pth" in log
    assert "not found in the checkpoint" not in log  # every cascade tensor was loaded
    assert "Skip loading parameter" not in log  # ... with the right shape
    assert (out / "model_final.pth").is_file()
