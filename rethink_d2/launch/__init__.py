"""Cluster launch: scheduler environment (torchrun, Kubernetes, Slurm) -> train_net flags.

``python -m rethink_d2.launch [train_net args...]`` runs ``tools/train_net.py`` with
``--num-gpus --num-machines --machine-rank --dist-url`` taken from the environment; it is the
Docker image's entry point (see docs/cluster.md).
"""

from . import env
from .env import *  # noqa: F401,F403 (the public names of the launch environment)

__all__ = list(env.__all__)
