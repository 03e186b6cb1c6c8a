"""Schedules: one ``RETHINK.SCHEDULE.SPEC`` key ("6x", "220kit", "24ep", "3.52Mimg") resolved
into Detectron2's ``SOLVER`` keys with the paper's fixed LR tail and linear batch scaling."""

from .schedule import (
    Schedule,
    compute_schedule,
    count_training_images,
    parse_schedule_spec,
    resolve_schedule,
)
from .table import schedule_table

__all__ = [
    "Schedule",
    "compute_schedule",
    "resolve_schedule",
    "count_training_images",
    "parse_schedule_spec",
    "schedule_table",
]
