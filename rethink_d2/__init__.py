"""rethink-d2: training detectors from random initialization (He, Girshick & Dollar, ICCV 2019).

``import rethink_d2`` registers this package's components with Detectron2's registries
(backbones, datasets, samplers) and makes ``rethink_d2.model_zoo`` available; it never changes
Detectron2's default config.
"""
__version__ = "0.1.0"

# config
from .config import add_rethink_config
from .resolve import resolve_config

# registration side effects: backbones, built-in datasets, samplers; paths of shipped configs
from . import data, model_zoo, modeling  # noqa: F401

__all__ = ["__version__", "add_rethink_config", "resolve_config"]
