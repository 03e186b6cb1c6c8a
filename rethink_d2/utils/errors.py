"""Exceptions that carry one clear, user-facing line (what is wrong and how to fix it)."""


class RethinkError(Exception):
    """Base class of errors that ``tools/train_net.py`` prints as one line, without traceback."""


class ConfigError(RethinkError, ValueError):
    """A config value is invalid or contradicts another one; the message names the key to change."""


class DatasetError(RethinkError, ValueError):
    """A dataset name, subset spec or dataset file is invalid or missing."""


class TrainingError(RethinkError, RuntimeError):
    """Training cannot continue (e.g. non-finite loss); the last good checkpoint is kept."""
