"""Exceptions that carry one clear, user-facing line (what is wrong and how to fix it)."""

import sys


class RethinkError(Exception):
    """Base class of errors that ``tools/train_net.py`` prints as one line, without traceback."""


class ConfigError(RethinkError, ValueError):
    """A config value is invalid or contradicts another one; the message names the key to change."""


class DatasetError(RethinkError, ValueError):
    """A dataset name, subset spec or dataset file is invalid or missing."""


class TrainingError(RethinkError, RuntimeError):
    """Training cannot continue (e.g. non-finite loss); the last good checkpoint is kept."""


# Exit code of every entry point for a user error (bad flag, config, data): never worth a restart.
EXIT_USER_ERROR = 2


def report_user_error(error):
    """
    Print ``error`` as the one line a user sees, ``rethink-d2: error: <error>``, on stderr.

    Every entry point (``tools/*.py``, ``python -m rethink_d2.launch``, ``python -m
    rethink_d2.solver``) reports user errors through this function.

    Args:
        error (Exception or str): what is wrong and how to fix it.

    Returns:
        int: :data:`EXIT_USER_ERROR`, the exit code to end with.
    """
    print(f"rethink-d2: error: {error}", file=sys.stderr, flush=True)
    return EXIT_USER_ERROR
