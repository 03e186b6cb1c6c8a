"""COCO AP with faster-coco-eval vs pycocotools on a synthetic val2017-sized set.

Generates, in memory and from a fixed seed, a COCO instances set the size of val2017 (5,000
images of 480x640, ~37,000 instances, 80 categories with COCO's ids, polygon masks, crowd
annotations included) and model-like results (jittered boxes and polygons, misses, duplicates,
wrong classes, false positives; ~15 results per image, each with a box and an RLE mask). Then
evaluates ``bbox`` and ``segm`` exactly as Detectron2's ``COCOEvaluator`` does (``loadRes``,
maxDets [1, 10, 100], masks without boxes) with

* pycocotools' ``COCOeval`` (what Detectron2 runs without ``detectron2._C``), and
* ``rethink_d2.evaluation.evaluate_predictions_faster`` (faster-coco-eval's ``COCOeval_faster``),

and prints, per task, the largest difference of the 12 summary numbers and of the precision
array, the wall time of each (``loadRes`` + evaluate + accumulate + summarize; the faster one
includes indexing the ground truth), and their ratio.

Usage::

    python benchmarks/eval_speed.py                  # val2017 size: ~5 min on 2 busy cores
    python benchmarks/eval_speed.py --images 500     # quicker
"""

import argparse
import contextlib
import io
import time

import numpy as np
import pycocotools.mask as mask_util
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from rethink_d2.evaluation import evaluate_predictions_faster

# COCO's 80 category ids (1..90 with gaps)
COCO_CATEGORY_IDS = [i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)]
HEIGHT, WIDTH = 480, 640


def _polygon(rng, x0, y0, w, h):
    """A star-shaped polygon (8-12 vertices) inscribed in the box."""
    n = rng.randint(8, 13)
    angles = np.sort(rng.uniform(0, 2 * np.pi, n))
    radius = rng.uniform(0.7, 1.0, n)
    xs = x0 + w / 2 + np.cos(angles) * radius * w / 2
    ys = y0 + h / 2 + np.sin(angles) * radius * h / 2
    xs, ys = np.clip(xs, 0, WIDTH - 1), np.clip(ys, 0, HEIGHT - 1)
    return np.stack([xs, ys], 1).ravel().tolist()


def _box(rng):
    """A box with COCO-like sizes: many small, some large."""
    w = float(np.clip(np.exp(rng.normal(3.8, 1.0)), 4, WIDTH - 2))
    h = float(np.clip(w * np.exp(rng.normal(0, 0.5)), 4, HEIGHT - 2))
    x0, y0 = rng.uniform(0, WIDTH - w), rng.uniform(0, HEIGHT - h)
    return x0, y0, w, h


def make_dataset(num_images, instances_per_image, seed=0):
    """
    Args:
        num_images (int): images in the set.
        instances_per_image (float): mean number of instances per image (Poisson).
        seed (int): seed of the generator.

    Returns:
        tuple[dict, list[dict]]: the COCO ground-truth dict and the results list.
    """
    rng = np.random.RandomState(seed)
    images, annotations, results = [], [], []
    for image_id in range(1, num_images + 1):
        images.append(
            {"id": image_id, "height": HEIGHT, "width": WIDTH, "file_name": f"{image_id}.jpg"}
        )
        for _ in range(rng.poisson(instances_per_image)):
            x0, y0, w, h = _box(rng)
            category = int(rng.choice(COCO_CATEGORY_IDS))
            poly = _polygon(rng, x0, y0, w, h)
            rle = mask_util.frPyObjects([poly], HEIGHT, WIDTH)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category,
                    "bbox": [x0, y0, w, h],
                    "segmentation": [poly],
                    "area": float(mask_util.area(mask_util.merge(rle))),
                    "iscrowd": int(rng.rand() < 0.01),
                }
            )
            for _ in range(rng.choice([0, 1, 1, 1, 2])):  # misses and duplicates
                s = 0.1 * rng.rand()
                box = [
                    x0 + rng.normal(0, s * w),
                    y0 + rng.normal(0, s * h),
                    w * (1 + rng.normal(0, s)),
                    h * (1 + rng.normal(0, s)),
                ]
                wrong = rng.rand() < 0.1
                cat = int(rng.choice(COCO_CATEGORY_IDS)) if wrong else category
                shifted = np.asarray(poly).reshape(-1, 2) + [box[0] - x0, box[1] - y0]
                shifted += rng.normal(0, s * min(w, h), shifted.shape)
                results.append(_result(rng, image_id, cat, box, shifted))
        for _ in range(rng.poisson(8)):  # false positives
            x0, y0, w, h = _box(rng)
            poly = np.asarray(_polygon(rng, x0, y0, w, h)).reshape(-1, 2)
            cat = int(rng.choice(COCO_CATEGORY_IDS))
            results.append(_result(rng, image_id, cat, [x0, y0, w, h], poly))
    categories = [{"id": i, "name": f"c{i}", "supercategory": "s"} for i in COCO_CATEGORY_IDS]
    gt = {"images": images, "annotations": annotations, "categories": categories}
    return gt, results


def _result(rng, image_id, category, box, polygon):
    x0, y0, w, h = box
    w, h = max(w, 1.0), max(h, 1.0)
    x0, y0 = float(np.clip(x0, 0, WIDTH - w)), float(np.clip(y0, 0, HEIGHT - h))
    polygon = np.clip(polygon, 0, [WIDTH - 1, HEIGHT - 1]).ravel().tolist()
    rle = mask_util.merge(mask_util.frPyObjects([polygon], HEIGHT, WIDTH))
    rle["counts"] = rle["counts"].decode("ascii")
    return {
        "image_id": image_id,
        "category_id": category,
        "bbox": [x0, y0, w, h],
        "score": float(rng.rand()),
        "segmentation": rle,
    }


def run_pycocotools(gt_dict, results, iou_type):
    coco_gt = COCO()
    coco_gt.dataset = gt_dict
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt.createIndex()
        start = time.perf_counter()
        dt = [dict(r) for r in results]
        if iou_type == "segm":
            for r in dt:
                r.pop("bbox")
        coco_eval = COCOeval(coco_gt, coco_gt.loadRes(dt), iou_type)
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    return coco_eval, time.perf_counter() - start


def run_faster(gt_dict, results, iou_type):
    from faster_coco_eval import COCO as FasterCOCO

    with contextlib.redirect_stdout(io.StringIO()):
        start = time.perf_counter()
        coco_gt = FasterCOCO(gt_dict)
        coco_eval = evaluate_predictions_faster(coco_gt, results, iou_type)
    return coco_eval, time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=5000, help="val2017: 5000")
    parser.add_argument("--instances-per-image", type=float, default=7.36, help="val2017: 7.36")
    parser.add_argument("--tasks", nargs="+", default=["bbox", "segm"])
    args = parser.parse_args()

    start = time.perf_counter()
    gt, results = make_dataset(args.images, args.instances_per_image)
    print(
        f"synthetic set: {len(gt['images'])} images, {len(gt['annotations'])} instances, "
        f"{len(gt['categories'])} categories, {len(results)} results "
        f"(generated in {time.perf_counter() - start:.0f} s)"
    )
    print(
        f"{'task':<6}{'AP pycocotools':>16}{'AP faster':>12}{'max |d stats|':>15}"
        f"{'max |d prec|':>14}{'pycocotools s':>15}{'faster s':>10}{'ratio':>8}"
    )
    for task in args.tasks:
        reference, t_ref = run_pycocotools(gt, results, task)
        fast, t_fast = run_faster(gt, results, task)
        d_stats = float(np.max(np.abs(np.asarray(fast.stats) - np.asarray(reference.stats))))
        d_prec = float(np.max(np.abs(fast.eval["precision"] - reference.eval["precision"])))
        print(
            f"{task:<6}{reference.stats[0]:>16.6f}{fast.stats[0]:>12.6f}{d_stats:>15.2e}"
            f"{d_prec:>14.2e}{t_ref:>15.1f}{t_fast:>10.1f}{t_ref / t_fast:>7.1f}x"
        )


if __name__ == "__main__":
    main()
