"""Schedules: one ``RETHINK.SCHEDULE.SPEC`` key ("6x", "220kit", "24ep", "3.52Mimg") resolved
into Detectron2's ``SOLVER`` keys with the paper's fixed LR tail and linear batch scaling."""

# resolving a spec (used by rethink_d2.resolve_config)
from .schedule import Schedule, compute_schedule, resolve_schedule

# helpers: spec parsing, images per epoch
from .schedule import count_training_images, parse_schedule_spec

# the docs/schedules.md table (python -m rethink_d2.solver)
from .table import schedule_table

__all__ = [
    "Schedule",
    "compute_schedule",
    "resolve_schedule",
    "count_training_images",
    "parse_schedule_spec",
    "schedule_table",
]
