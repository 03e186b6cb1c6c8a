"""Multi-process plumbing: agreement between ranks, launch checks, one-line failure messages."""

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

logger = logging.getLogger(__name__)

# Default of train_net's --dist-timeout (seconds), e.g. set in a cluster job's environment.
DIST_TIMEOUT_ENV_VAR = "RETHINK_D2_DIST_TIMEOUT"


class StepVote:
    """
    Per-iteration flags that every rank agrees on in ONE small ``all_reduce`` (max over ranks).

    The trainer calls :meth:`vote` with its flags (device tensors: no extra host sync); hooks add
    theirs with :meth:`add_source` and read the verdict with :meth:`agreed`.
    """

    def __init__(self):
        self._sources = {}
        self._iteration = None
        self._result = {}

    def add_source(self, name, flag_fn):
        """Add ``flag_fn()`` (this rank's bool) as flag ``name`` to every following vote."""
        self._sources[name] = flag_fn

    def remove_source(self, name):
        self._sources.pop(name, None)

    def vote(self, iteration, **flags):
        """OR ``flags`` (bools or tensors) and the sources over the ranks; a collective."""
        values = dict(flags)
        values.update((name, fn()) for name, fn in self._sources.items())
        # NCCL reduces tensors on the current GPU only
        nccl = comm.get_world_size() > 1 and dist.get_backend() == "nccl"
        device = "cuda" if nccl else "cpu"
        tensor = torch.stack(
            [torch.as_tensor(v, device=device).detach().to(torch.int32) for v in values.values()]
        )
        if comm.get_world_size() > 1:
            dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        self._result = {name: bool(v) for name, v in zip(values, tensor.tolist())}
        self._iteration = iteration
        return dict(self._result)

    def agreed(self, name, iteration):
        """The agreed value of flag ``name`` at ``iteration``, or None if no such vote was taken."""
        return self._result.get(name) if iteration == self._iteration else None


def check_dist_port_free(dist_url):
    """Raise ConfigError when the port of a ``tcp://`` ``dist_url`` is taken on this machine
    (call it on machine rank 0, where torch.distributed's store binds it, before launching)."""
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
    """One line explaining a training process's traceback when the cause is the process group;
    None otherwise (the traceback is then the best report)."""
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
# Values that give no GPU: hidden on purpose (CUDA_VISIBLE_DEVICES="" or -1,
# NVIDIA_VISIBLE_DEVICES=void/none), and for counts also 0 ("0", "gpu:0", "a100:0").
_NO_GPU_LIST = re.compile(r"|-1|void|none|NoDevFiles", re.IGNORECASE)
_NO_GPU_COUNT = re.compile(r"|([\w-]+:)*0", re.IGNORECASE)


def gpu_request(device, world_size=1, device_on_command_line=False, environ=None):
    """Why a run asked for GPUs (e.g. ``"CUDA_VISIBLE_DEVICES=0,1"``), or None for a CPU device or
    a plain single-process run that nothing asked GPUs for (it may fall back to the CPU)."""
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
    """The device to train on: ``device``, or "cpu" (with a warning) for a CUDA config that sees
    no GPU in a plain single-process run; ConfigError when the run asked for GPUs (see
    :func:`gpu_request`) and none is visible."""
    if not str(device).startswith("cuda") or torch.cuda.is_available():
        return device
    reason = gpu_request(device, world_size, device_on_command_line, environ)
    if reason is None:
        logger.warning("No GPU is visible: MODEL.DEVICE %s -> cpu", device)
        return "cpu"
    cuda = torch.version.cuda
    build = "is a CPU-only build" if cuda is None else f"built for CUDA {cuda}"
    nvidia = os.path.exists("/dev/nvidiactl")
    devices = "/dev/nvidiactl present" if nvidia else "no /dev/nvidia* device files"
    raise ConfigError(
        f"{reason} asks for GPUs, but PyTorch sees none (torch {torch.__version__} {build}, "
        f"torch.cuda.device_count()={torch.cuda.device_count()}, {devices}): check "
        f"nvidia-smi and the driver (CUDA 13 builds of PyTorch need driver >= 580), run Docker "
        f"with --gpus all and Apptainer/Singularity with --nv; to train on the CPU on purpose, "
        f"pass MODEL.DEVICE cpu"
    )


def check_launch(num_gpus, num_machines, dist_url, environ=None, visible_gpus=None):
    """
    Check the launch flags before starting any process: ConfigError for more processes than
    visible GPUs (``visible_gpus``, from ``torch.cuda`` when None), a ``--dist-url`` that is not
    ``tcp://HOST:PORT`` (or ``file://``, ``env://``, ``auto`` on one machine), or ``MASTER_ADDR``
    holding ``host:port``.
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
        valid = parsed.hostname and parsed.port is not None and parsed.path in ("", "/")
    except ValueError:
        valid = False
    if not valid:
        raise ConfigError(
            f"--dist-url {dist_url!r} is not tcp://HOST:PORT (one host and a numeric port, e.g. "
            f"tcp://10.0.0.1:29500)"
        )


def check_output_dir(path):
    """Create ``OUTPUT_DIR`` and check that it is writable; ConfigError (saying what to change)
    otherwise."""
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
