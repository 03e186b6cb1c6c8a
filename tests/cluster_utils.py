"""Helpers of the cluster tests: a tiny model, train_net subprocesses, ports, polling."""

import os
import socket
import subprocess
import sys
import time

import torch.distributed as dist
from detectron2.engine import launch

from conftest import QUICKSTART, REPO, TINY_OPTS, TRAIN_NET

# TINY_OPTS plus a narrower backbone (R50 layout at 1/8 width: 4.4M parameters, 35 MB checkpoints)
# and no mask head: about 0.1 CPU-second per iteration.
CLUSTER_OPTS = TINY_OPTS + [
    "MODEL.MASK_ON", "False",
    "MODEL.RESNETS.DEPTH", "50",
    "MODEL.RESNETS.WIDTH_PER_GROUP", "32",
    "MODEL.RESNETS.STEM_OUT_CHANNELS", "32",
    "MODEL.FPN.OUT_CHANNELS", "32",
    "MODEL.ROI_BOX_HEAD.NUM_CONV", "1",
    "MODEL.ROI_BOX_HEAD.CONV_DIM", "32",
    "MODEL.ROI_BOX_HEAD.FC_DIM", "64",
    "DATASETS.TEST", "()",
    "SEED", "7",
]  # fmt: skip


def launch_gloo(worker, num_processes, args):
    """
    Run ``worker(*args)`` in ``num_processes`` gloo processes with Detectron2's ``launch``.

    Each process leaves the process group when its worker returns and then exits at once: gloo's
    threads can abort the interpreter's teardown ("terminate called without an active
    exception", pytorch/pytorch#190489), which would fail a test whose work is done.
    """
    launch(
        _leave_group_after,
        num_processes,
        dist_url=f"tcp://127.0.0.1:{free_port()}",
        args=(worker, *args),
    )


def _leave_group_after(worker, *args):
    worker(*args)
    dist.barrier()
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def free_port():
    """A TCP port that is free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def subprocess_env(**extra):
    """The test session's environment (RETHINK_D2_DATA included), one thread, no warnings."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    env.update({k: str(v) for k, v in extra.items()})
    return env


def start_train_net(
    output_dir, opts=(), flags=(), script=TRAIN_NET, log_name="stdout.txt", env=None
):
    """
    Start ``tools/train_net.py`` (or ``script``) on the quickstart config + CLUSTER_OPTS, in a
    session of its own (``os.killpg(proc.pid, sig)`` signals it with all its children, as Slurm
    does).

    Returns:
        (subprocess.Popen, str): the process and the file its stdout+stderr go to.
    """
    os.makedirs(output_dir, exist_ok=True)
    log_path = os.path.join(output_dir, log_name)
    command = [sys.executable, script, "--config", QUICKSTART, *flags]
    command += [*CLUSTER_OPTS, "OUTPUT_DIR", output_dir, *opts]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            command,
            cwd=REPO,
            env=subprocess_env(**(env or {})),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return proc, log_path


def wait(proc, log_path, timeout=300):
    """Wait for ``proc``; returns (exit code, its output)."""
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError(f"timed out; output:\n{read(log_path)[-3000:]}") from None
    return code, read(log_path)


def read(path):
    with open(path) as f:
        return f.read()


def wait_until(predicate, timeout, procs=(), what="condition"):
    """Poll ``predicate`` every 50 ms; fail if a process of ``procs`` exits first."""
    deadline = time.monotonic() + timeout
    while not predicate():
        for proc in procs:
            assert proc.poll() is None, f"process exited ({proc.returncode}) before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def tagged_checkpoint(output_dir):
    """Basename named by OUTPUT_DIR/last_checkpoint, or "" when there is none yet."""
    try:
        with open(os.path.join(output_dir, "last_checkpoint")) as f:
            return f.read().strip()
    except OSError:
        return ""


def errors_of(output):
    """The one-line errors of train_net (``rethink-d2: error: ...``)."""
    return [line for line in output.splitlines() if line.startswith("rethink-d2: error:")]
