"""Process-group plumbing for clean multi-process runs: agreement, port check, failure messages."""

import re
import socket
from urllib.parse import urlparse

import torch
import torch.distributed as dist
from detectron2.utils import comm

from ..utils.errors import ConfigError

__all__ = [
    "DIST_TIMEOUT_ENV_VAR",
    "any_rank",
    "check_dist_port_free",
    "explain_worker_failure",
]

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
    device = "cpu"
    if dist.get_backend() == "nccl":
        device = torch.device("cuda", torch.cuda.current_device())
    tensor = torch.tensor([int(bool(flag))], dtype=torch.int32, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item())


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
