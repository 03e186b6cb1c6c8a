"""Cluster launch: scheduler environment (torchrun, Kubernetes, Slurm) -> train_net flags.

``python -m rethink_d2.launch [train_net args...]`` runs ``tools/train_net.py`` with
``--num-gpus --num-machines --machine-rank --dist-url`` taken from the environment; it is the
Docker image's entry point (see docs/cluster.md).
"""

from .env import (
    DEFAULT_MASTER_PORT,
    LAUNCH_FLAGS,
    check_master_addr,
    check_slurm_layout,
    detect_scheduler,
    expand_slurm_nodelist,
    launch_args_from_env,
)

__all__ = [
    "DEFAULT_MASTER_PORT",
    "LAUNCH_FLAGS",
    "check_master_addr",
    "check_slurm_layout",
    "detect_scheduler",
    "expand_slurm_nodelist",
    "launch_args_from_env",
]
