"""Training engine: the Trainer, the command-line set-up, and the hooks they use."""
from .defaults import build_config, rethink_argument_parser
from .trainer import Trainer, wrap_model_for_distributed

__all__ = ["Trainer", "build_config", "rethink_argument_parser", "wrap_model_for_distributed"]
