"""Map the environment of a cluster scheduler to ``tools/train_net.py``'s launch flags.

``tools/train_net.py`` starts one training process per GPU itself (Detectron2's ``launch``), so
a scheduler runs it **once per machine** and the only thing to work out is
``--num-gpus --num-machines --machine-rank --dist-url``. This module does that as a pure
function of an environment mapping, so every scheduler's variables can be tested as a table.

Variables read, first match wins (``PET_*`` are the names Kubeflow's PyTorchJob sets for
torchrun's options; ``WORLD_SIZE``/``RANK`` are read as *machines* / *machine rank*, which is
what a PyTorchJob without ``nprocPerNode`` sets when every pod runs one launcher):

=================  ===========================================================================
flag               variables
=================  ===========================================================================
--num-machines     NNODES, PET_NNODES, WORLD_SIZE, SLURM_STEP_NUM_NODES, SLURM_NNODES,
                   SLURM_JOB_NUM_NODES
--machine-rank     NODE_RANK, PET_NODE_RANK, RANK, JOB_COMPLETION_INDEX (Kubernetes Indexed
                   Job), SLURM_NODEID
--num-gpus         LOCAL_WORLD_SIZE, PET_NPROC_PER_NODE, SLURM_GPUS_ON_NODE,
                   SLURM_GPUS_PER_NODE ("[type:]N"), SLURM_JOB_GPUS (id list), else the
                   caller's ``gpus_per_node`` (the GPUs this machine sees)
--dist-url host    MASTER_ADDR, PET_MASTER_ADDR (a host, never ``host:port``), first host of
                   SLURM_STEP_NODELIST / SLURM_JOB_NODELIST / SLURM_NODELIST (parsed here, no
                   ``scontrol`` needed; the step's list first, because the node ranks are the
                   step's too)
--dist-url port    MASTER_PORT, PET_MASTER_PORT, ``10000 + SLURM_JOB_ID % 20000`` (the same on
                   every node of a job, below Linux's ephemeral range), else 29500
=================  ===========================================================================

Slurm must run **one task per node**: a one-task-per-GPU layout (``SLURM_LOCALID`` > 0, more
than one task per node in ``SLURM_STEP_TASKS_PER_NODE`` / ``SLURM_NTASKS_PER_NODE``, or more
``SLURM_NTASKS`` than nodes) is refused whatever else is exported, because sbatch templates often
export ``MASTER_ADDR``/``WORLD_SIZE``/``RANK`` for it and eight launchers would then share one
machine rank.
"""

import re

from ..utils.errors import ConfigError

__all__ = [
    "DEFAULT_MASTER_PORT",
    "LAUNCH_FLAGS",
    "check_master_addr",
    "check_slurm_layout",
    "detect_scheduler",
    "expand_slurm_nodelist",
    "launch_args_from_env",
]

# torch.distributed's conventional rendezvous port, used when nothing else decides it.
DEFAULT_MASTER_PORT = 29500
# Slurm jobs derive their port from the job id: 10000 + id % 20000 (all nodes agree).
_SLURM_PORT_BASE, _SLURM_PORT_SPAN = 10000, 20000

# The flags of tools/train_net.py that this module decides.
LAUNCH_FLAGS = ("--num-gpus", "--num-machines", "--machine-rank", "--dist-url")

_TORCH_NUM_MACHINES_VARS = ("NNODES", "PET_NNODES", "WORLD_SIZE")
_SLURM_NUM_MACHINES_VARS = ("SLURM_STEP_NUM_NODES", "SLURM_NNODES", "SLURM_JOB_NUM_NODES")
_NUM_MACHINES_VARS = _TORCH_NUM_MACHINES_VARS + _SLURM_NUM_MACHINES_VARS
_TORCH_MACHINE_RANK_VARS = ("NODE_RANK", "PET_NODE_RANK", "RANK", "JOB_COMPLETION_INDEX")
_MACHINE_RANK_VARS = _TORCH_MACHINE_RANK_VARS + ("SLURM_NODEID",)
_NPROC_VARS = ("LOCAL_WORLD_SIZE", "PET_NPROC_PER_NODE", "SLURM_GPUS_ON_NODE")
_MASTER_ADDR_VARS = ("MASTER_ADDR", "PET_MASTER_ADDR")
_MASTER_PORT_VARS = ("MASTER_PORT", "PET_MASTER_PORT")
_SLURM_NODELIST_VARS = ("SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURM_NODELIST")
# Tasks per node of the step ("8(x2)" or "2,1"), then of the job's --ntasks-per-node.
_SLURM_TASKS_PER_NODE_VARS = ("SLURM_STEP_TASKS_PER_NODE", "SLURM_NTASKS_PER_NODE")
_ONE_LAUNCHER_PER_NODE = (
    "run one launcher per node (#SBATCH --ntasks-per-node=1, or srun --ntasks-per-node=1): it "
    "starts one process per GPU itself"
)
# Set inside a process that torchrun (torch.distributed.run) started.
_TORCHRUN_WORKER_VARS = ("LOCAL_RANK", "TORCHELASTIC_RUN_ID")


def _first(environ, names):
    """(name, value) of the first variable of ``names`` set to a non-empty value, else None."""
    for name in names:
        value = environ.get(name, "").strip()
        if value:
            return name, value
    return None


def _as_int(name, value, minimum):
    """Parse ``value`` of variable ``name`` as an int >= minimum, or raise one clear ConfigError."""
    try:
        number = int(value)
    except ValueError:
        raise ConfigError(f"{name}={value!r} is not an integer; fix or unset it") from None
    if number < minimum:
        raise ConfigError(f"{name}={value!r} must be >= {minimum}; fix or unset it")
    return number


def _parse_nnodes(name, value):
    """``N`` or torchrun's elastic ``N:N``; a real range (``1:4``) is not supported."""
    if ":" in value:
        low, _, high = value.partition(":")
        if low != high:
            raise ConfigError(
                f"{name}={value!r}: elastic ranges are not supported, Detectron2's launcher needs "
                f"a fixed number of machines (e.g. {name}={high})"
            )
        value = low
    return _as_int(name, value, 1)


def _gpus_from_env(environ):
    """Processes per machine named by the environment, or None when it names none."""
    found = _first(environ, _NPROC_VARS)
    if found:
        name, value = found
        # torchrun also accepts "auto" / "gpu" / "cpu" here: let the caller's GPU count decide.
        if value.lower() not in ("auto", "gpu", "cpu"):
            return _as_int(name, value, 1)
    found = _first(environ, ("SLURM_GPUS_PER_NODE",))
    if found:  # "--gpus-per-node=[type:]N", e.g. "4" or "a100:4"
        name, value = found
        return _as_int(name, value.rsplit(":", 1)[-1], 1)
    found = _first(environ, ("SLURM_JOB_GPUS",))
    if found:  # the job's GPU indices on this node, e.g. "0,1,2,3"
        return len([g for g in found[1].split(",") if g.strip()])
    return None


def _split_top_level(text):
    """Split a Slurm host list at the commas that are not inside brackets."""
    parts, depth, start = [], 0, 0
    for i, char in enumerate(text):
        if char == "[":
            depth += 1
            if depth > 1:
                raise ValueError("nested brackets")
        elif char == "]":
            depth -= 1
            if depth < 0:
                raise ValueError("unbalanced ']'")
        elif char == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    if depth:
        raise ValueError("unbalanced '['")
    parts.append(text[start:])
    return parts


def _expand_ranges(ranges):
    """``"01-03,07"`` -> ``["01", "02", "03", "07"]`` (zero padding of the lower bound kept)."""
    out = []
    for part in ranges.split(","):
        low, sep, high = part.strip().partition("-")
        if not low.isdigit() or (sep and not high.isdigit()):
            raise ValueError(f"bad range {part!r}")
        if not sep:
            out.append(low)
            continue
        if int(high) < int(low):
            raise ValueError(f"decreasing range {part!r}")
        out.extend(str(n).zfill(len(low)) for n in range(int(low), int(high) + 1))
    return out


def _expand_item(item):
    """Expand one host expression, e.g. ``rack[1-2]-n[01-02]`` (every bracket is a product)."""
    match = re.match(r"^([^\[\]]*)\[([^\[\]]*)\](.*)$", item)
    if not match:
        if "[" in item or "]" in item:
            raise ValueError(f"unbalanced brackets in {item!r}")
        return [item]
    prefix, ranges, rest = match.groups()
    tails = _expand_item(rest)
    return [prefix + number + tail for number in _expand_ranges(ranges) for tail in tails]


def expand_slurm_nodelist(nodelist):
    """
    Expand a Slurm host list the way ``scontrol show hostnames`` does, without calling it.

    Args:
        nodelist (str): e.g. ``"node[01-03,07],gpu5"`` (``$SLURM_JOB_NODELIST``).

    Returns:
        list[str]: host names in order, e.g. ``["node01", "node02", "node03", "node07", "gpu5"]``.

    Raises:
        ConfigError: when ``nodelist`` is not a Slurm host list.
    """
    try:
        items = [item.strip() for item in _split_top_level(nodelist.strip())]
        if not all(items):
            raise ValueError("empty host name")
        return [host for item in items for host in _expand_item(item)]
    except ValueError as e:
        raise ConfigError(f"{nodelist!r} is not a Slurm host list ({e})") from None


def detect_scheduler(environ):
    """
    Name the scheduler whose variables decide the launch, for log lines.

    Args:
        environ (Mapping[str, str]): e.g. ``os.environ``.

    Returns:
        str: ``"torchrun/kubernetes"`` when a torch-style variable is set (they win over Slurm's),
        ``"slurm"`` inside a Slurm allocation, else ``"local"``.
    """
    torch_style = _MASTER_ADDR_VARS + _TORCH_NUM_MACHINES_VARS + _TORCH_MACHINE_RANK_VARS
    if _first(environ, torch_style):
        return "torchrun/kubernetes"
    if _first(environ, ("SLURM_JOB_ID",) + _SLURM_NODELIST_VARS + _SLURM_NUM_MACHINES_VARS):
        return "slurm"
    return "local"


def _max_tasks_per_node(name, value):
    """Largest count of a Slurm tasks-per-node value: ``"8"``, ``"8(x2)"`` or ``"2,1(x3)"``."""
    counts = []
    for part in value.split(","):
        match = re.fullmatch(r"\s*(\d+)\s*(\(x\d+\))?\s*", part)
        if not match:
            raise ConfigError(
                f"{name}={value!r} is not a Slurm tasks-per-node list; fix or unset it"
            )
        counts.append(int(match.group(1)))
    return max(counts)


def check_slurm_layout(environ):
    """
    Refuse a Slurm step that runs several tasks on one node (one task per GPU).

    rethink-d2 starts one training process per GPU itself, so Slurm must start one launcher per
    node. This looks only at Slurm's own variables, so a template that also exports
    ``MASTER_ADDR``/``WORLD_SIZE``/``RANK`` (as one-task-per-GPU templates do) is caught too.

    Args:
        environ (Mapping[str, str]): the environment.

    Raises:
        ConfigError: naming the variable that shows several tasks per node, and the fix.
    """
    found = _first(environ, ("SLURM_LOCALID",))
    if found and _as_int(*found, 0) > 0:
        raise ConfigError(
            f"{found[0]}={found[1]}: Slurm started several tasks on this node (one per GPU?); "
            f"{_ONE_LAUNCHER_PER_NODE}"
        )
    found = _first(environ, _SLURM_TASKS_PER_NODE_VARS)
    if found and _max_tasks_per_node(*found) > 1:
        raise ConfigError(
            f"{found[0]}={found[1]}: Slurm runs several tasks per node; {_ONE_LAUNCHER_PER_NODE}"
        )
    tasks = _first(environ, ("SLURM_STEP_NUM_TASKS", "SLURM_NTASKS"))
    nodes = _first(environ, _SLURM_NUM_MACHINES_VARS)
    if tasks and nodes and _as_int(*tasks, 1) > _as_int(*nodes, 1):
        raise ConfigError(
            f"{tasks[0]}={tasks[1]} over {nodes[1]} node(s) ({nodes[0]}): "
            f"{_ONE_LAUNCHER_PER_NODE}"
        )


def check_master_addr(name, value):
    """
    Check that a master address variable holds a host only, not ``host:port`` or a URL.

    Args:
        name (str): the variable, e.g. ``"MASTER_ADDR"``.
        value (str): its value: a host name, an IPv4 address, or an IPv6 address (bare
            ``fd00::1`` or bracketed ``[fd00::1]``).

    Returns:
        str: ``value``.

    Raises:
        ConfigError: ``value`` holds a port or a scheme (the message gives the two variables to
            set instead).
    """
    rest = value.split("://", 1)[-1]
    if rest.startswith("["):  # bracketed IPv6, maybe followed by ":port"
        host, _, port = rest[1:].partition("]")
        port = port[1:] if port.startswith(":") else None
    elif rest.count(":") == 1:  # more than one ":" is a bare IPv6 address
        host, _, port = rest.partition(":")
    else:
        host, port = rest, None
    if "://" in value or port is not None:
        port_name = name.replace("ADDR", "PORT")
        fix = f"set {name}={host}" + (f" and {port_name}={port}" if port else "")
        raise ConfigError(
            f"{name}={value!r} must be a host name or IP address only, without a scheme or port: "
            f"{fix}"
        )
    return value


def _dist_url(host, port):
    if ":" in host and not host.startswith("["):  # IPv6 literal
        host = f"[{host}]"
    return f"tcp://{host}:{port}"


def launch_args_from_env(environ, gpus_per_node=None):
    """
    Turn a scheduler's environment into ``tools/train_net.py`` launch flags.

    See the module docstring for the variables read. With one machine and no rendezvous
    variable, ``--dist-url`` is left out (one process) or ``auto`` (a free local port).

    Args:
        environ (Mapping[str, str]): the environment, e.g. ``dict(os.environ)``.
        gpus_per_node (int or None): processes per machine when no variable names it (the
            number of GPUs this machine sees); None means 1.

    Returns:
        list[str]: e.g. ``["--num-gpus", "8", "--num-machines", "2", "--machine-rank", "1",
        "--dist-url", "tcp://node01:12345"]``.

    Raises:
        ConfigError: a variable is malformed or contradicts another one (the message names it),
            Slurm runs several tasks per node, the launcher runs inside torchrun, a master
            address holds a port, or several machines have no master address.
    """
    check_slurm_layout(environ)
    worker = _first(environ, _TORCHRUN_WORKER_VARS)
    if worker:
        raise ConfigError(
            f"{worker[0]} is set: this looks like a process started by torchrun. rethink-d2 "
            f"starts one process per GPU itself; run it once per machine (without torchrun)"
        )
    found = _first(environ, _NUM_MACHINES_VARS)
    num_machines = _parse_nnodes(*found) if found else 1
    slurm_nodes = _first(environ, _SLURM_NUM_MACHINES_VARS)
    if found and found[0] in _TORCH_NUM_MACHINES_VARS and slurm_nodes:
        if num_machines != _as_int(*slurm_nodes, 1):
            raise ConfigError(
                f"{found[0]}={found[1]} but Slurm runs this step on {slurm_nodes[1]} node(s) "
                f"({slurm_nodes[0]}): rethink-d2 reads {found[0]} as the number of machines (one "
                f"launcher per node); unset it or set it to {slurm_nodes[1]}"
            )
    found = _first(environ, _MACHINE_RANK_VARS)
    machine_rank = _as_int(*found, 0) if found else 0
    if machine_rank >= num_machines:
        raise ConfigError(
            f"{found[0]}={machine_rank} but there are {num_machines} machine(s): the machine "
            f"rank must be in [0, {num_machines}); check the job's node count"
        )

    num_gpus = _gpus_from_env(environ) or gpus_per_node or 1
    args = ["--num-gpus", str(num_gpus), "--num-machines", str(num_machines)]
    args += ["--machine-rank", str(machine_rank)]

    found = _first(environ, _MASTER_ADDR_VARS)
    host = check_master_addr(*found) if found else None
    if host is None:
        nodelist = _first(environ, _SLURM_NODELIST_VARS)
        if nodelist:
            host = expand_slurm_nodelist(nodelist[1])[0]
    port_var = _first(environ, _MASTER_PORT_VARS)
    if port_var:
        port = _as_int(*port_var, 1)
        if port > 65535:
            raise ConfigError(f"{port_var[0]}={port} is not a TCP port (1-65535)")
    elif _first(environ, ("SLURM_JOB_ID",)):
        job_id = _as_int(*_first(environ, ("SLURM_JOB_ID",)), 0)
        port = _SLURM_PORT_BASE + job_id % _SLURM_PORT_SPAN
    else:
        port = None

    if num_machines > 1:
        if host is None:
            raise ConfigError(
                f"{num_machines} machines but no master address: set MASTER_ADDR (and "
                f"MASTER_PORT) to the host of machine rank 0, or run inside a Slurm allocation"
            )
        args += ["--dist-url", _dist_url(host, port or DEFAULT_MASTER_PORT)]
    elif num_gpus > 1:
        args += ["--dist-url", _dist_url(host or "127.0.0.1", port) if port else "auto"]
    return args
