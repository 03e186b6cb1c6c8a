"""COCO evaluation at compiled speed without Detectron2's compiled extension.

Detectron2's ``COCOEvaluator`` computes AP with ``COCOeval_opt`` from ``detectron2._C``; wheels
without it fall back to pure-Python pycocotools (minutes per val2017 evaluation, 54 times in a 6x
run). :class:`FastCOCOEvaluator` then uses ``faster-coco-eval`` (same algorithm and results,
C++) for ``bbox`` and ``segm``; keypoints and a custom ``max_dets_per_image`` stay on
Detectron2's path. See docs/lsj.md.
"""

import itertools
import json
import os

from detectron2.evaluation import COCOEvaluator
from detectron2.evaluation import coco_evaluation as d2_coco_evaluation
from detectron2.utils.file_io import PathManager

# COCOeval's default maxDets; the only setting under which faster-coco-eval is used.
_DEFAULT_MAX_DETS = [1, 10, 100]


def fast_coco_backend(use_fast_impl=True):
    """
    Returns:
        str: what computes COCO box/mask AP here: ``"pycocotools"`` (always when
        ``use_fast_impl`` is False, as in ``COCOEvaluator``), ``"detectron2"``
        (``COCOeval_opt``) or ``"faster-coco-eval"``.
    """
    if not use_fast_impl:
        return "pycocotools"
    if d2_coco_evaluation.COCOeval_opt is not d2_coco_evaluation.COCOeval:
        return "detectron2"
    try:
        import faster_coco_eval  # noqa: F401
    except ImportError:
        return "pycocotools"
    return "faster-coco-eval"


def evaluate_predictions_faster(coco_gt, coco_results, iou_type, img_ids=None):
    """
    COCO AP of ``coco_results`` (COCO-format, dataset category ids; not modified) with
    faster-coco-eval, as Detectron2's ``_evaluate_predictions_on_coco`` computes it.

    Args:
        coco_gt (pycocotools.coco.COCO or faster_coco_eval.COCO): ground truth.
        iou_type (str): ``"bbox"`` or ``"segm"``.
        img_ids (list[int] or None): evaluate only these images.

    Returns:
        faster_coco_eval.COCOeval_faster: summarized, laid out as pycocotools' ``COCOeval``.
    """
    from faster_coco_eval import COCO, COCOeval_faster

    assert iou_type in ("bbox", "segm"), iou_type
    assert len(coco_results) > 0
    if not isinstance(coco_gt, COCO):
        coco_gt = COCO(coco_gt.dataset)
    # loadRes adds fields to the dicts it is given; for masks, drop the box so that the area
    # used for small/medium/large is the mask's, as Detectron2 does.
    drop = ("bbox",) if iou_type == "segm" else ()
    coco_results = [{k: v for k, v in r.items() if k not in drop} for r in coco_results]
    coco_dt = coco_gt.loadRes(coco_results)
    coco_eval = COCOeval_faster(coco_gt, coco_dt, iou_type, print_function=print)
    coco_eval.params.maxDets = list(_DEFAULT_MAX_DETS)
    if img_ids is not None:
        coco_eval.params.imgIds = img_ids
    coco_eval.evaluate()
    coco_eval.accumulate()
    coco_eval.summarize()
    return coco_eval


class FastCOCOEvaluator(COCOEvaluator):
    """
    Detectron2's ``COCOEvaluator`` (same arguments and results) that uses faster-coco-eval when
    ``detectron2._C`` is missing; ``self.backend`` is :func:`fast_coco_backend`'s answer.
    """

    def __init__(self, dataset_name, *args, use_fast_impl=True, **kwargs):
        super().__init__(dataset_name, *args, use_fast_impl=use_fast_impl, **kwargs)
        self.backend = fast_coco_backend(use_fast_impl)
        self._faster_gt = None

    def _faster_coco_gt(self):
        # the ground truth indexed once by faster-coco-eval, shared by the bbox and segm tasks
        if self._faster_gt is None:
            from faster_coco_eval import COCO

            self._faster_gt = COCO(self._coco_api.dataset)
        return self._faster_gt

    def _eval_predictions(self, predictions, img_ids=None):
        coco_results = list(itertools.chain(*[x["instances"] for x in predictions]))
        tasks = self._tasks or self._tasks_from_predictions(coco_results)
        if (
            self.backend != "faster-coco-eval"
            or "keypoints" in tasks
            or list(self._max_dets_per_image) != _DEFAULT_MAX_DETS
        ):
            return super()._eval_predictions(predictions, img_ids=img_ids)

        # contiguous training ids -> the dataset's category ids, as COCOEvaluator does
        id_map = self._metadata.get("thing_dataset_id_to_contiguous_id")
        if id_map is not None:
            reverse = {v: k for k, v in id_map.items()}
            for result in coco_results:
                category_id = result["category_id"]
                assert category_id in reverse, (
                    f"a prediction has class {category_id}, but the dataset only has "
                    f"{len(reverse)} classes"
                )
                result["category_id"] = reverse[category_id]

        if self._output_dir:
            file_path = os.path.join(self._output_dir, "coco_instances_results.json")
            self._logger.info(f"Saving results to {file_path}")
            with PathManager.open(file_path, "w") as f:
                f.write(json.dumps(coco_results))
        if not self._do_evaluation:
            self._logger.info("Annotations are not available for evaluation.")
            return

        self._logger.info("Evaluating predictions with faster-coco-eval ...")
        for task in sorted(tasks):
            coco_eval = (
                evaluate_predictions_faster(
                    self._faster_coco_gt(), coco_results, task, img_ids=img_ids
                )
                if coco_results
                else None  # as COCOEvaluator: no AP from empty results
            )
            self._results[task] = self._derive_coco_results(
                coco_eval, task, class_names=self._metadata.get("thing_classes")
            )
