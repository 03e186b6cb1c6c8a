"""
Run ``tools/train_net.py`` once on this machine with launch flags taken from the scheduler.

    python -m rethink_d2.launch --config configs/scratch_R50_GN_6x.yaml OUTPUT_DIR /out/run1
    python -m rethink_d2.launch --dry-run --config FILE     # print the command, run nothing

Flags given explicitly (``--num-gpus 4``) win over the environment. The process is replaced by
train_net (``exec``), so signals from the scheduler reach the trainer directly.
``$RETHINK_D2_TRAIN_NET`` points at another train_net script (default: the repository's
``tools/train_net.py``, next to the ``rethink_d2`` package).
"""

import argparse
import os
import shlex
import sys

from ..utils.errors import ConfigError
from .env import LAUNCH_FLAGS, detect_scheduler, launch_args_from_env

TRAIN_NET_ENV_VAR = "RETHINK_D2_TRAIN_NET"
EXIT_USER_ERROR = 2


def find_train_net(environ):
    """
    Args:
        environ (Mapping[str, str]): the environment.

    Returns:
        str: path of the train_net script to run.

    Raises:
        ConfigError: when the script does not exist.
    """
    path = environ.get(TRAIN_NET_ENV_VAR) or os.path.join(
        os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
        "tools",
        "train_net.py",
    )
    if not os.path.isfile(path):
        raise ConfigError(
            f"train_net script {path!r} not found (rethink-d2 installed without its repository?): "
            f"set {TRAIN_NET_ENV_VAR}=/path/to/tools/train_net.py"
        )
    return path


def _given_flags(args):
    """The launch flags present in ``args`` (as ``--flag value`` or ``--flag=value``)."""
    return {flag for flag in LAUNCH_FLAGS for a in args if a == flag or a.startswith(flag + "=")}


def merge_launch_args(mapped, user_args):
    """
    Put the environment's launch flags in front of the user's arguments, minus those the user gave.

    They go in front because train_net's trailing ``KEY VALUE`` overrides swallow everything
    after them.

    Args:
        mapped (list[str]): from :func:`launch_args_from_env` (``--flag value`` pairs).
        user_args (list[str]): train_net arguments from the command line.

    Returns:
        list[str]
    """
    given = _given_flags(user_args)
    pairs = zip(mapped[::2], mapped[1::2])
    return [item for flag, value in pairs if flag not in given for item in (flag, value)] + list(
        user_args
    )


def _visible_gpus():
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def build_command(user_args, environ, gpus_per_node=None):
    """
    Args:
        user_args (list[str]): train_net arguments.
        environ (Mapping[str, str]): the environment.
        gpus_per_node (int or None): processes per machine when the environment names none.

    Returns:
        list[str]: the full command (``python train_net.py ...``).
    """
    mapped = launch_args_from_env(environ, gpus_per_node=gpus_per_node)
    return [sys.executable, find_train_net(environ)] + merge_launch_args(mapped, user_args)


def main(argv=None):
    """Parse the launcher's own options, map the environment, exec train_net."""
    parser = argparse.ArgumentParser(
        prog="python -m rethink_d2.launch",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        add_help=False,
        allow_abbrev=False,
    )
    parser.add_argument("--dry-run", action="store_true", help="print the command and exit")
    parser.add_argument(
        "--gpus-per-node",
        type=int,
        default=None,
        help="processes per machine when the scheduler does not say (default: visible GPUs, "
        "at least 1)",
    )
    parser.add_argument("--launcher-help", action="help", help="show this help and exit")
    own, user_args = parser.parse_known_args(argv)
    environ = dict(os.environ)
    try:
        gpus = own.gpus_per_node if own.gpus_per_node is not None else _visible_gpus()
        command = build_command(user_args, environ, gpus_per_node=gpus or None)
    except ConfigError as e:
        print(f"rethink-d2: error: {e}", file=sys.stderr, flush=True)
        return EXIT_USER_ERROR
    line = shlex.join(command)
    if own.dry_run:
        print(line, flush=True)
        return 0
    print(f"rethink-d2 launch ({detect_scheduler(environ)}): {line}", file=sys.stderr, flush=True)
    os.execv(command[0], command)


if __name__ == "__main__":
    sys.exit(main())
