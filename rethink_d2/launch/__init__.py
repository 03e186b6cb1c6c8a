"""Cluster launch: ``python -m rethink_d2.launch [train_net args...]`` runs ``tools/train_net.py``
with the launch flags of the scheduler's environment (the Docker entry point, docs/cluster.md)."""

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
