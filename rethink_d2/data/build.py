"""PLACEHOLDER (subsets helper replaces this)."""
from detectron2.data import build_detection_train_loader


def build_train_loader(cfg):
    """PLACEHOLDER: Detectron2's loader until the subsets helper lands."""
    return build_detection_train_loader(cfg)
