"""Plumbing for clean multi-process runs: agreement between ranks, checks of the launch (GPUs,
rendezvous address, output folder) before any process starts, failure messages."""

import logging
import os
import re
import socket
import tempfile
from urllib.parse import urlparse

import torch
import torch.distributed as dist
from detectron2.utils import comm

from ..launch.env import check_master_addr
from ..utils.errors import ConfigError

__all__ = [
    "DIST_TIMEOUT_ENV_VAR",
    "StepVote",
    "any_rank",
    "check_dist_port_free",
    "check_launch",
    "check_output_dir",
    "choose_device",
    "explain_worker_failure",
]

logger = logging.getLogger(__name__)

# Default of train_net's --dist-timeout (seconds), e.g. set in a cluster job's environment.
DIST_TIMEOUT_ENV_VAR = "RETHINK_D2_DIST_TIMEOUT"


def any_rank(flag):
    """
    Whether ``flag`` is true on any rank; a collective (one 1-element ``all_reduce``).

    Args:
        flag (bool): this rank's value.

    Returns:
        bool: the OR over all ranks (``flag`` itself in a single process).
    """
    if comm.get_world_size() == 1:
        return bool(flag)
    tensor = torch.tensor([int(bool(flag))], dtype=torch.int32, device=_collective_device())
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item())


class StepVote:
    """
    Per-iteration flags that every rank agrees on in ONE small ``all_reduce`` (max over ranks).

    The non-finite loss check and the preemption check each need every rank to agree, at every
    iteration. Instead of one collective each, both travel in one tensor: the trainer calls
    :meth:`vote` once per iteration with its own flags (e.g. a 0-dim tensor computed on the
    device, so no extra host synchronization), hooks add theirs with :meth:`add_source`, and
    read the verdict with :meth:`agreed`. The only host synchronization is reading the reduced
    tensor (a single ``tolist()``).
    """

    def __init__(self):
        self._sources = {}
        self._iteration = None
        self._result = {}

    def add_source(self, name, flag_fn):
        """
        Add a flag to every following vote.

        Args:
            name (str): the flag's name, for :meth:`agreed`.
            flag_fn (callable): returns this rank's value (bool) when the vote is taken.
        """
        self._sources[name] = flag_fn

    def remove_source(self, name):
        """
        Args:
            name (str): a name given to :meth:`add_source` (unknown names are ignored).
        """
        self._sources.pop(name, None)

    def vote(self, iteration, **flags):
        """
        Agree on ``flags`` and on the registered sources; a collective on every rank.

        Args:
            iteration (int): the current iteration (:meth:`agreed` answers for it only).
            flags (bool or Tensor): this rank's flags; tensors may live on any device.

        Returns:
            dict[str, bool]: every flag, OR-ed over the ranks.
        """
        values = dict(flags)
        values.update((name, fn()) for name, fn in self._sources.items())
        device = _collective_device()
        tensor = torch.stack(
            [
                v.detach().to(device=device, dtype=torch.int32).reshape(())
                if torch.is_tensor(v)
                else torch.full((), int(bool(v)), dtype=torch.int32, device=device)
                for v in values.values()
            ]
        )
        if comm.get_world_size() > 1:
            dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        self._result = {name: bool(v) for name, v in zip(values, tensor.tolist())}
        self._iteration = iteration
        return dict(self._result)

    def agreed(self, name, iteration):
        """
        Args:
            name (str): a flag of the vote.
            iteration (int): the iteration asked about.

        Returns:
            bool or None: the agreed value, or None when no vote with ``name`` was taken at
            ``iteration`` (the caller must then agree by itself, e.g. with :func:`any_rank`).
        """
        if iteration != self._iteration:
            return None
        return self._result.get(name)


def _collective_device():
    """Where the tensors of a collective must live: the current GPU with NCCL, else the CPU."""
    if comm.get_world_size() > 1 and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def check_dist_port_free(dist_url):
    """
    Fail fast, with one clear message, when the rendezvous port of rank 0 is taken.

    Call it on machine rank 0 only, before starting the processes: torch.distributed's store
    binds this port on every interface there.

    Args:
        dist_url (str): ``tcp://HOST:PORT``; other schemes (``file://``, ``env://``) and
            ``auto`` are not checked.

    Raises:
        ConfigError: the port is in use on this machine.
    """
    if not dist_url or not dist_url.startswith("tcp://"):
        return
    port = urlparse(dist_url).port
    if not port:
        return
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("", port))
        except OSError as e:
            raise ConfigError(
                f"port {port} of --dist-url {dist_url} is already in use on this machine "
                f"({e.strerror}; another run?): choose a free port (--dist-url or MASTER_PORT)"
            ) from None


# A failure is about the process group only if torch.distributed is in its traceback.
_DISTRIBUTED = re.compile(r"torch[./]distributed|ProcessGroup|gloo|nccl|c10d", re.IGNORECASE)
_TIMEOUT_PATTERNS = re.compile(
    r"DistStoreError|timed out|Timed out|TimeoutError|clients joined|Socket Timeout",
)
_PEER_GONE_PATTERNS = re.compile(
    r"Connection closed by peer|Connection reset by peer|Broken pipe|ECONNRESET",
)
_ADDRESS_IN_USE = re.compile(r"address already in use|EADDRINUSE", re.IGNORECASE)


def explain_worker_failure(traceback_text, dist_url, timeout_seconds):
    """
    Turn a training process's traceback into one line when the cause is the process group.

    Args:
        traceback_text (str): what ``torch.multiprocessing`` reports for the failed process.
        dist_url (str): the run's ``--dist-url``.
        timeout_seconds (float): the run's ``--dist-timeout``.

    Returns:
        str or None: the message, or None when the failure is not about the process group
        (the traceback is then the best report).
    """
    if not _DISTRIBUTED.search(traceback_text):
        return None
    if _ADDRESS_IN_USE.search(traceback_text):
        return (
            f"the rendezvous port of --dist-url {dist_url} is already in use (another run?): "
            f"choose a free port (--dist-url or MASTER_PORT)"
        )
    if _PEER_GONE_PATTERNS.search(traceback_text):
        return (
            "another training process stopped (its own log says why), so this one cannot go on; "
            "fix that error and restart every machine"
        )
    if _TIMEOUT_PATTERNS.search(traceback_text):
        return (
            f"timed out after {timeout_seconds:g} s waiting for the other training processes at "
            f"{dist_url}: check that every machine was started with the same --num-machines and "
            f"--dist-url, that rank 0's host and port are reachable, and the logs of the other "
            f"machines (wait longer with --dist-timeout or ${DIST_TIMEOUT_ENV_VAR})"
        )
    return None


# Variables through which a scheduler or container runtime hands GPUs to a job: device lists
# and GPU counts ("[type:]N").
_GPU_LIST_VARS = (
    "CUDA_VISIBLE_DEVICES",
    "NVIDIA_VISIBLE_DEVICES",
    "SLURM_JOB_GPUS",
    "SLURM_STEP_GPUS",
)
_GPU_COUNT_VARS = ("SLURM_GPUS", "SLURM_GPUS_ON_NODE", "SLURM_GPUS_PER_NODE", "SLURM_GPUS_PER_TASK")
GPU_REQUEST_VARS = _GPU_LIST_VARS + _GPU_COUNT_VARS
# Values that give no GPU: hidden on purpose (CUDA_VISIBLE_DEVICES="" or -1,
# NVIDIA_VISIBLE_DEVICES=void/none), and for counts also 0 ("0", "gpu:0", "a100:0").
_NO_GPU_LIST = re.compile(r"|-1|void|none|NoDevFiles", re.IGNORECASE)
_NO_GPU_COUNT = re.compile(r"|([\w-]+:)*0", re.IGNORECASE)


def gpu_request(device, world_size=1, device_on_command_line=False, environ=None):
    """
    Why a run asked for GPUs, if it did (the interactive CPU fallback is for what remains).

    Args:
        device (str): ``MODEL.DEVICE``.
        world_size (int or None): number of training processes (None: one).
        device_on_command_line (bool): ``MODEL.DEVICE`` was given as a command-line override.
        environ (Mapping[str, str] or None): the environment (``os.environ`` when None).

    Returns:
        str or None: e.g. ``"CUDA_VISIBLE_DEVICES=0,1"``, ``"2 training processes"`` or
        ``"MODEL.DEVICE cuda on the command line"``; None for a CPU device or a plain
        single-process run that nothing asked GPUs for.
    """
    if not str(device).startswith("cuda"):
        return None
    environ = os.environ if environ is None else environ
    for names, no_gpu in ((_GPU_LIST_VARS, _NO_GPU_LIST), (_GPU_COUNT_VARS, _NO_GPU_COUNT)):
        for name in names:
            value = environ.get(name)
            if value is not None and not no_gpu.fullmatch(value.strip()):
                return f"{name}={value}"
    if device_on_command_line:
        return f"MODEL.DEVICE {device} on the command line"
    if (world_size or 1) > 1:
        return f"{world_size} training processes with MODEL.DEVICE {device}"
    return None


def choose_device(device, world_size=1, device_on_command_line=False, environ=None):
    """
    The device a run trains on: ``device``, or "cpu" for a CUDA config that sees no GPU in a
    plain single-process run (with a warning). A run that asked for GPUs never silently trains
    on the CPU.

    Args: as :func:`gpu_request`.

    Returns:
        str: the device to write into ``MODEL.DEVICE``.

    Raises:
        ConfigError: the run asked for GPUs (scheduler or container variables, several
            processes, ``MODEL.DEVICE cuda`` on the command line) and none is visible; the
            message says what PyTorch sees and what to check.
    """
    if not str(device).startswith("cuda") or torch.cuda.is_available():
        return device
    reason = gpu_request(device, world_size, device_on_command_line, environ)
    if reason is None:
        logger.warning("No GPU is visible: MODEL.DEVICE %s -> cpu", device)
        return "cpu"
    raise ConfigError(
        f"{reason} asks for GPUs, but PyTorch sees none ({_what_is_visible()}): check "
        f"nvidia-smi and the driver (CUDA 13 builds of PyTorch need driver >= 580), run Docker "
        f"with --gpus all and Apptainer/Singularity with --nv; to train on the CPU on purpose, "
        f"pass MODEL.DEVICE cpu"
    )


def _what_is_visible():
    """What PyTorch and the system show of GPUs, for the message of a failed GPU request."""
    if torch.version.cuda is None:
        build = f"torch {torch.__version__} is a CPU-only build"
    else:
        build = f"torch {torch.__version__} built for CUDA {torch.version.cuda}"
    devices = "no /dev/nvidia* device files" if not os.path.exists("/dev/nvidiactl") else (
        "/dev/nvidiactl present"
    )
    return f"{build}, torch.cuda.device_count()={torch.cuda.device_count()}, {devices}"


def check_launch(num_gpus, num_machines, dist_url, environ=None, visible_gpus=None):
    """
    Check the launch flags before starting any process, so that a bad one ends with one line
    instead of an assertion or a traceback in every training process.

    Args:
        num_gpus (int): ``--num-gpus``, training processes on this machine.
        num_machines (int): ``--num-machines``.
        dist_url (str): ``--dist-url``.
        environ (Mapping[str, str] or None): the environment (``os.environ`` when None).
        visible_gpus (int or None): GPUs PyTorch sees (asked from ``torch.cuda`` when None).

    Raises:
        ConfigError: more processes than visible GPUs (Detectron2's ``launch`` asserts), a
            ``--dist-url`` that is not ``tcp://HOST:PORT`` (or ``file://``, ``env://``,
            ``auto`` on one machine), or ``MASTER_ADDR`` holding ``host:port``.
    """
    environ = os.environ if environ is None else environ
    if visible_gpus is None:
        visible_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if visible_gpus and num_gpus > visible_gpus:
        shown = environ.get("CUDA_VISIBLE_DEVICES")
        shown = f", CUDA_VISIBLE_DEVICES={shown}" if shown is not None else ""
        raise ConfigError(
            f"--num-gpus {num_gpus} starts {num_gpus} training processes on this machine, but "
            f"it has {visible_gpus} visible GPU(s){shown}: pass --num-gpus {visible_gpus} or "
            f"make more GPUs visible (one process per GPU)"
        )
    if num_gpus * num_machines <= 1:
        return
    for name in ("MASTER_ADDR", "PET_MASTER_ADDR"):
        if environ.get(name, "").strip():
            check_master_addr(name, environ[name].strip())
    _check_dist_url(dist_url, num_machines)


def _check_dist_url(dist_url, num_machines):
    if dist_url == "auto":
        if num_machines > 1:
            raise ConfigError(
                "--dist-url auto only works on one machine: pass --dist-url tcp://HOST:PORT with "
                "the address of machine rank 0 (the same on every machine)"
            )
        return
    scheme, sep, rest = str(dist_url).partition("://")
    if not sep:
        raise ConfigError(
            f"--dist-url {dist_url!r} has no scheme: write it as tcp://HOST:PORT (e.g. "
            f"tcp://{dist_url if ':' in str(dist_url) else '10.0.0.1:29500'}), the address of "
            f"machine rank 0"
        )
    if scheme in ("file", "env"):
        return
    if scheme != "tcp":
        raise ConfigError(
            f"--dist-url {dist_url!r}: {scheme}:// is not supported, write tcp://HOST:PORT (or "
            f"file:///shared/path, env://)"
        )
    try:
        parsed = urlparse(dist_url)
        port = parsed.port
    except ValueError:
        port = None
        parsed = None
    if parsed is None or not parsed.hostname or port is None or parsed.path not in ("", "/"):
        raise ConfigError(
            f"--dist-url {dist_url!r} is not tcp://HOST:PORT (one host and a numeric port, e.g. "
            f"tcp://10.0.0.1:29500)"
        )


def check_output_dir(path):
    """
    Create ``OUTPUT_DIR`` and check that files can be written into it, before training starts.

    Args:
        path (str): ``OUTPUT_DIR``.

    Raises:
        ConfigError: the folder cannot be created or written (what the system said, and what to
            change).
    """
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        user = f"uid {os.getuid()}" if hasattr(os, "getuid") else "this user"
        raise ConfigError(
            f"OUTPUT_DIR {path!r} cannot be written ({e.strerror or e}): pass a writable "
            f"OUTPUT_DIR, or give {user} write access; in a container, create the host folder "
            f"before mounting it (mkdir -p), else Docker creates it owned by root"
        ) from None
