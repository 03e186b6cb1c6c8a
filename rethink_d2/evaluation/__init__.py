"""Evaluators: Detectron2's COCOEvaluator with a fast path that needs no ``detectron2._C``."""

from .coco import FastCOCOEvaluator, evaluate_predictions_faster, fast_coco_backend

__all__ = ["FastCOCOEvaluator", "evaluate_predictions_faster", "fast_coco_backend"]
