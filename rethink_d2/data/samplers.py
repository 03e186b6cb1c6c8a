"""PLACEHOLDER (subsets helper replaces this)."""
from detectron2.utils.registry import Registry

SAMPLER_REGISTRY = Registry("RETHINK_SAMPLER")


def build_train_sampler(cfg, dataset):
    """PLACEHOLDER."""
    raise NotImplementedError
