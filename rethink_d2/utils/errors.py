"""Exceptions that carry one clear, user-facing line (what is wrong and how to fix it)."""

import sys


class RethinkError(Exception):
    """Base class of errors that the entry points print as one line, without traceback."""


class ConfigError(RethinkError, ValueError):
    """A config value is invalid or contradicts another one; the message names the key to change."""


class DatasetError(RethinkError, ValueError):
    """A dataset name, subset spec or dataset file is invalid or missing."""


class TrainingError(RethinkError, RuntimeError):
    """Training cannot continue (e.g. non-finite loss); the last good checkpoint is kept."""


# Exit code of every entry point for a user error (bad flag, config, data): never worth a restart.
EXIT_USER_ERROR = 2


def report_user_error(error):
    """Print ``rethink-d2: error: <error>`` on stderr and return :data:`EXIT_USER_ERROR`."""
    print(f"rethink-d2: error: {error}", file=sys.stderr, flush=True)
    return EXIT_USER_ERROR
