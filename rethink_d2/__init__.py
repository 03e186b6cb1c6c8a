"""rethink-d2: training detectors from random initialization (He, Girshick & Dollar, ICCV 2019).

``import rethink_d2`` registers its backbones, datasets and samplers with Detectron2's registries;
it never changes Detectron2's default config.
"""

__version__ = "0.1.0"

from .config import add_rethink_config
from .resolve import resolve_config

# registration side effects; model_zoo: paths of the shipped configs
from . import data, model_zoo, modeling  # noqa: F401

__all__ = ["__version__", "add_rethink_config", "resolve_config"]
