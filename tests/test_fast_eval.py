"""FastCOCOEvaluator: the AP of faster-coco-eval equals pycocotools' on the built-in val set."""
import math

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import COCOEvaluator
from detectron2.evaluation.coco_evaluation import instances_to_coco_json
from detectron2.structures import Boxes, Instances
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from rethink_d2 import add_rethink_config
from rethink_d2.engine import Trainer
from rethink_d2.evaluation import FastCOCOEvaluator, evaluate_predictions_faster, fast_coco_backend

VAL = "rethink_shapes_val"


def perturbed_outputs(dataset, seed=0):
    """Model-like outputs from the ground truth: shifted masks and boxes, wrong classes, misses."""
    rng = np.random.RandomState(seed)
    num_classes = len(MetadataCatalog.get(VAL).thing_classes)
    inputs, outputs = [], []
    for record in dataset:
        h, w = record["height"], record["width"]
        boxes, masks, classes = [], [], []
        for ann in record["annotations"]:
            if rng.rand() < 0.1:
                continue  # a miss
            mask = mask_util.decode(ann["segmentation"]).astype(bool)
            dy, dx = rng.randint(-4, 5, size=2)
            mask = np.roll(mask, (dy, dx), axis=(0, 1))
            ys, xs = np.nonzero(mask)
            if len(xs) == 0:
                continue
            boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
            masks.append(mask)
            wrong = rng.rand() < 0.15
            classes.append(rng.randint(num_classes) if wrong else ann["category_id"])
        for _ in range(rng.randint(0, 4)):  # false positives
            x0, y0 = rng.randint(0, w - 20), rng.randint(0, h - 20)
            box = [x0, y0, x0 + rng.randint(8, 20), y0 + rng.randint(8, 20)]
            mask = np.zeros((h, w), dtype=bool)
            mask[box[1] : box[3], box[0] : box[2]] = True
            boxes.append(box)
            masks.append(mask)
            classes.append(rng.randint(num_classes))
        instances = Instances((h, w))
        instances.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
        instances.scores = torch.tensor(rng.rand(len(boxes)), dtype=torch.float32)
        instances.pred_classes = torch.tensor(classes, dtype=torch.int64)
        masks = np.stack(masks) if masks else np.zeros((0, h, w), bool)
        instances.pred_masks = torch.from_numpy(masks)
        inputs.append({"image_id": record["image_id"]})
        outputs.append({"instances": instances})
    return inputs, outputs


@pytest.fixture(scope="module")
def shapes_val_outputs():
    return perturbed_outputs(DatasetCatalog.get(VAL))


def evaluate(evaluator, inputs, outputs):
    evaluator.reset()
    evaluator.process(inputs, outputs)
    return evaluator.evaluate()


def assert_same_results(fast, reference):
    assert fast.keys() == reference.keys()
    for task in reference:
        assert fast[task].keys() == reference[task].keys()
        for key, value in reference[task].items():
            if math.isnan(value):
                assert math.isnan(fast[task][key]), (task, key)
            else:  # Detectron2 reports AP in percent: 1e-4 here is 1e-6 in AP
                assert fast[task][key] == pytest.approx(value, abs=1e-4), (task, key)


def test_backend_is_compiled():
    # the registry wheel has no detectron2._C, so faster-coco-eval must take over
    assert fast_coco_backend() in ("faster-coco-eval", "detectron2")
    assert fast_coco_backend(use_fast_impl=False) == "pycocotools"


def test_fast_evaluator_equals_pycocotools_on_shapes_val(shapes_val_outputs, tmp_path):
    inputs, outputs = shapes_val_outputs
    tasks = ("bbox", "segm")
    fast = FastCOCOEvaluator(VAL, tasks=tasks, distributed=False, output_dir=str(tmp_path))
    assert fast.backend == fast_coco_backend()
    reference = COCOEvaluator(VAL, tasks=tasks, distributed=False, use_fast_impl=False)
    fast_results = evaluate(fast, inputs, outputs)
    reference_results = evaluate(reference, inputs, outputs)
    assert_same_results(fast_results, reference_results)
    # a meaningful comparison: neither perfect nor empty, per-class APs included
    assert 5 < reference_results["bbox"]["AP"] < 95
    assert 5 < reference_results["segm"]["AP"] < 95
    assert any(k.startswith("AP-") for k in reference_results["bbox"])
    assert (tmp_path / "coco_instances_results.json").is_file()


def test_evaluate_predictions_faster_equals_cocoeval(shapes_val_outputs):
    inputs, outputs = shapes_val_outputs
    id_map = MetadataCatalog.get(VAL).thing_dataset_id_to_contiguous_id
    reverse = {v: k for k, v in id_map.items()}
    results = [
        dict(r, category_id=reverse[r["category_id"]])
        for i, o in zip(inputs, outputs)
        for r in instances_to_coco_json(o["instances"], i["image_id"])
    ]
    coco_gt = COCO(MetadataCatalog.get(VAL).json_file)
    for iou_type in ("bbox", "segm"):
        dt_input = [dict(r) for r in results]
        if iou_type == "segm":
            for r in dt_input:
                r.pop("bbox")
        reference = COCOeval(coco_gt, coco_gt.loadRes(dt_input), iou_type)
        reference.evaluate()
        reference.accumulate()
        reference.summarize()
        fast = evaluate_predictions_faster(coco_gt, results, iou_type)
        np.testing.assert_allclose(fast.stats, reference.stats, atol=1e-4, rtol=0)
        np.testing.assert_allclose(
            fast.eval["precision"], reference.eval["precision"], atol=1e-4, rtol=0
        )


def test_trainer_uses_the_fast_evaluator():
    cfg = add_rethink_config(get_cfg())
    evaluator = Trainer.build_evaluator(cfg, VAL, output_folder=None)
    assert isinstance(evaluator, FastCOCOEvaluator)
