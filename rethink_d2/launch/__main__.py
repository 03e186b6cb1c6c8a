"""
Run ``tools/train_net.py`` once on this machine with launch flags taken from the scheduler.

    python -m rethink_d2.launch --config configs/scratch_R50_GN_6x.yaml OUTPUT_DIR /out/run1
    python -m rethink_d2.launch --dry-run --config FILE     # print the command, run nothing

Flags given explicitly (``--num-gpus 4``) win over the environment. The process is replaced by
train_net (``exec``), so signals from the scheduler reach the trainer directly.
``$RETHINK_D2_TRAIN_NET`` points at another train_net script (default: the repository's
``tools/train_net.py``, next to the ``rethink_d2`` package).

``$RETHINK_D2_RETRY_EXIT_CODE`` (e.g. 143) is for schedulers that decide restarts by exit code
ranges, such as Kubeflow's ``restartPolicy: ExitCode`` (codes 128-255 are restarted, 1-127 are
not): the launcher then runs train_net as a child, forwards SIGTERM/SIGUSR1 to it, keeps exit
codes 0 and 2 (user error: never restart) and reports every other one (75 = preempted after a
checkpoint, crashes, deaths by signal) as this code.
"""

import argparse
import os
import shlex
import signal
import subprocess
import sys

from ..utils.errors import EXIT_USER_ERROR, ConfigError, report_user_error
from .env import LAUNCH_FLAGS, detect_scheduler, launch_args_from_env

TRAIN_NET_ENV_VAR = "RETHINK_D2_TRAIN_NET"
RETRY_EXIT_CODE_ENV_VAR = "RETHINK_D2_RETRY_EXIT_CODE"
# Signals the schedulers send before they kill (see rethink_d2.engine.preemption).
FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


def find_train_net(environ):
    """Path of the train_net script to run; ConfigError when it does not exist."""
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


def retry_exit_code(environ):
    """
    ``$RETHINK_D2_RETRY_EXIT_CODE`` as an int, or None when it is unset or empty.

    Raises:
        ConfigError: the value is not an exit code in [1, 255] other than 2.
    """
    value = environ.get(RETRY_EXIT_CODE_ENV_VAR, "").strip()
    if not value:
        return None
    if not value.isdigit() or not 1 <= int(value) <= 255 or int(value) == EXIT_USER_ERROR:
        raise ConfigError(
            f"{RETRY_EXIT_CODE_ENV_VAR}={value!r} must be an exit code in [1, 255] other than "
            f"{EXIT_USER_ERROR} (e.g. 143 for Kubeflow's restartPolicy: ExitCode), or unset"
        )
    return int(value)


def reported_exit_code(returncode, retry_code):
    """
    The exit code the launcher reports for train_net's ``Popen.returncode``: 0 and 2 (user
    error) unchanged; any other becomes ``retry_code`` when it is not None, else stays (a death
    by signal N becomes ``128 + N``, as in a shell).
    """
    if returncode in (0, EXIT_USER_ERROR):
        return returncode
    if retry_code is not None:
        return retry_code
    return 128 - returncode if returncode < 0 else returncode


def run_with_retry_code(command, retry_code):
    """Run ``command`` as a child, forwarding the preemption signals; return the code to report."""
    child = subprocess.Popen(command)
    previous = {
        sig: signal.signal(sig, lambda s, f: child.send_signal(s)) for sig in FORWARDED_SIGNALS
    }
    try:
        returncode = child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    code = reported_exit_code(returncode, retry_code)
    if code != returncode:
        print(
            f"rethink-d2 launch: train_net exited with {returncode}; reporting {code} "
            f"({RETRY_EXIT_CODE_ENV_VAR}) so that the scheduler restarts it",
            file=sys.stderr,
            flush=True,
        )
    return code


def merge_launch_args(mapped, user_args):
    """
    The environment's launch flags ``mapped`` minus those in ``user_args`` (as ``--flag value``
    or ``--flag=value``), followed by ``user_args``. They go in front because train_net's
    trailing ``KEY VALUE`` overrides swallow everything after them.
    """
    given = {f for f in LAUNCH_FLAGS for a in user_args if a == f or a.startswith(f + "=")}
    pairs = zip(mapped[::2], mapped[1::2])
    return [item for flag, value in pairs if flag not in given for item in (flag, value)] + list(
        user_args
    )


def _visible_gpus():
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


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
        retry_code = retry_exit_code(environ)
        gpus = own.gpus_per_node if own.gpus_per_node is not None else _visible_gpus()
        mapped = launch_args_from_env(environ, gpus_per_node=gpus or None)
        command = [sys.executable, find_train_net(environ)] + merge_launch_args(mapped, user_args)
    except ConfigError as e:
        return report_user_error(e)
    line = shlex.join(command)
    if own.dry_run:
        print(line, flush=True)
        return 0
    print(f"rethink-d2 launch ({detect_scheduler(environ)}): {line}", file=sys.stderr, flush=True)
    if retry_code is not None:
        return run_with_retry_code(command, retry_code)
    os.execv(command[0], command)


if __name__ == "__main__":
    sys.exit(main())
