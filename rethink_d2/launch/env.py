"""A scheduler's environment -> ``tools/train_net.py``'s launch flags, as a pure function.

train_net starts one process per GPU itself, so it runs **once per machine**. The variables read
(first set wins) are listed in docs/cluster.md; ``WORLD_SIZE``/``RANK`` count *machines*, as a
Kubeflow PyTorchJob without ``nprocPerNode`` sets them when every pod runs one launcher.
"""

import re

from ..utils.errors import ConfigError

# torch.distributed's conventional rendezvous port, used when nothing else decides it.
DEFAULT_MASTER_PORT = 29500
# The flags of tools/train_net.py that this module decides.
LAUNCH_FLAGS = ("--num-gpus", "--num-machines", "--machine-rank", "--dist-url")

_TORCH_NUM_MACHINES_VARS = ("NNODES", "PET_NNODES", "WORLD_SIZE")
_SLURM_NUM_MACHINES_VARS = ("SLURM_STEP_NUM_NODES", "SLURM_NNODES", "SLURM_JOB_NUM_NODES")
_TORCH_MACHINE_RANK_VARS = ("NODE_RANK", "PET_NODE_RANK", "RANK", "JOB_COMPLETION_INDEX")
_MASTER_ADDR_VARS = ("MASTER_ADDR", "PET_MASTER_ADDR")
# The step's node list first: the node ranks are the step's too.
_SLURM_NODELIST_VARS = ("SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURM_NODELIST")
_ONE_LAUNCHER_PER_NODE = (
    "run one launcher per node (#SBATCH --ntasks-per-node=1, or srun --ntasks-per-node=1): it "
    "starts one process per GPU itself"
)

# A Slurm host list: comma-separated hosts, each a product of literals and [01-03,07] ranges.
_RANGE = r"\s*\d+(?:-\d+)?\s*"
_HOST = rf"(?:[^\[\],]|\[{_RANGE}(?:,{_RANGE})*\])+"


def _first(environ, names):
    """(name, value) of the first of ``names`` set to a non-empty value, else None."""
    for name in names:
        value = environ.get(name, "").strip()
        if value:
            return name, value
    return None


def _as_int(name, value, minimum):
    """``value`` of variable ``name`` as an int >= minimum, or one clear ConfigError."""
    try:
        number = int(value)
    except ValueError:
        raise ConfigError(f"{name}={value!r} is not an integer; fix or unset it") from None
    if number < minimum:
        raise ConfigError(f"{name}={value!r} must be >= {minimum}; fix or unset it")
    return number


def _int_var(environ, names, minimum):
    """(name, int) of the first of ``names`` that is set, else (None, None)."""
    found = _first(environ, names)
    return (found[0], _as_int(*found, minimum)) if found else (None, None)


def _gpus_from_env(environ):
    """Processes per machine named by the environment, or None."""
    found = _first(environ, ("LOCAL_WORLD_SIZE", "PET_NPROC_PER_NODE", "SLURM_GPUS_ON_NODE"))
    # torchrun also accepts "auto" / "gpu" / "cpu" here: the caller's GPU count decides then.
    if found and found[1].lower() not in ("auto", "gpu", "cpu"):
        return _as_int(*found, 1)
    found = _first(environ, ("SLURM_GPUS_PER_NODE",))
    if found:  # "--gpus-per-node=[type:]N", e.g. "4" or "a100:4"
        return _as_int(found[0], found[1].rsplit(":", 1)[-1], 1)
    found = _first(environ, ("SLURM_JOB_GPUS",))
    if found:  # the job's GPU indices on this node, e.g. "0,1,2,3"
        return len([g for g in found[1].split(",") if g.strip()])
    return None


def _expand_ranges(ranges):
    """``"01-03,07"`` -> ``["01", "02", "03", "07"]`` (zero padding of the lower bound kept)."""
    out = []
    for part in ranges.split(","):
        low, _, high = part.strip().partition("-")
        if int(high or low) < int(low):
            raise ValueError
        out += [str(n).zfill(len(low)) for n in range(int(low), int(high or low) + 1)]
    return out


def expand_slurm_nodelist(nodelist):
    """
    Expand a Slurm host list as ``scontrol show hostnames`` does (ConfigError if it is not one):
    ``"node[01-03,07],gpu5"`` -> ``["node01", "node02", "node03", "node07", "gpu5"]``.
    """
    text = nodelist.strip()
    try:
        if not re.fullmatch(rf"{_HOST}(?:,{_HOST})*", text):
            raise ValueError
        hosts = []
        for item in re.findall(_HOST, text):
            expanded = [""]  # every bracket is a product: rack[1-2]-n[01-02] is 4 hosts
            for literal, ranges in re.findall(r"([^\[\]]+)|\[([^\]]*)\]", item.strip()):
                parts = [literal] if literal else _expand_ranges(ranges)
                expanded = [head + part for head in expanded for part in parts]
            hosts += expanded
        if not all(hosts):
            raise ValueError
        return hosts
    except ValueError:
        raise ConfigError(
            f"{nodelist!r} is not a Slurm host list (e.g. 'node[01-03,07],gpu5')"
        ) from None


def detect_scheduler(environ):
    """
    Returns:
        str: ``"torchrun/kubernetes"`` when a torch-style variable is set (they win over Slurm's),
        ``"slurm"`` inside a Slurm allocation, else ``"local"`` (for log lines).
    """
    if _first(environ, _MASTER_ADDR_VARS + _TORCH_NUM_MACHINES_VARS + _TORCH_MACHINE_RANK_VARS):
        return "torchrun/kubernetes"
    if _first(environ, ("SLURM_JOB_ID",) + _SLURM_NODELIST_VARS + _SLURM_NUM_MACHINES_VARS):
        return "slurm"
    return "local"


def check_slurm_layout(environ):
    """
    Raise a ConfigError when Slurm runs several tasks on one node (one task per GPU). Only
    Slurm's variables are read: one-task-per-GPU sbatch templates often export
    ``MASTER_ADDR``/``WORLD_SIZE``/``RANK`` too, and eight launchers would share a machine rank.
    """
    name, local_id = _int_var(environ, ("SLURM_LOCALID",), 0)
    if local_id:
        raise ConfigError(
            f"{name}={local_id}: Slurm started several tasks on this node (one per GPU?); "
            f"{_ONE_LAUNCHER_PER_NODE}"
        )
    # tasks per node of the step ("8(x2)" or "2,1"), then of the job's --ntasks-per-node
    found = _first(environ, ("SLURM_STEP_TASKS_PER_NODE", "SLURM_NTASKS_PER_NODE"))
    if found:
        counts = [re.fullmatch(r"\s*(\d+)\s*(\(x\d+\))?\s*", p) for p in found[1].split(",")]
        if not all(counts):
            raise ConfigError(
                f"{found[0]}={found[1]!r} is not a Slurm tasks-per-node list; fix or unset it"
            )
        if max(int(m.group(1)) for m in counts) > 1:
            raise ConfigError(
                f"{found[0]}={found[1]}: Slurm runs several tasks per node; "
                f"{_ONE_LAUNCHER_PER_NODE}"
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
    Return ``value`` of master address variable ``name`` if it is a host name or an IPv4/IPv6
    address (``fd00::1`` or ``[fd00::1]``); a ConfigError naming the fix if it has a port or scheme.
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


def launch_args_from_env(environ, gpus_per_node=None):
    """
    Turn a scheduler's environment into ``tools/train_net.py`` launch flags, e.g.
    ``["--num-gpus", "8", "--num-machines", "2", "--machine-rank", "1", "--dist-url",
    "tcp://node01:12345"]``. With one machine and no rendezvous variable, ``--dist-url`` is left
    out (one process) or ``auto`` (a free local port). ``gpus_per_node``: processes per machine
    when no variable names it (None: 1). A ConfigError names a malformed or contradictory variable.
    """
    check_slurm_layout(environ)
    worker = _first(environ, ("LOCAL_RANK", "TORCHELASTIC_RUN_ID"))  # set by torchrun
    if worker:
        raise ConfigError(
            f"{worker[0]} is set: this looks like a process started by torchrun. rethink-d2 "
            f"starts one process per GPU itself; run it once per machine (without torchrun)"
        )
    found = _first(environ, _TORCH_NUM_MACHINES_VARS + _SLURM_NUM_MACHINES_VARS)
    num_machines = 1
    if found:
        name, value = found
        low, colon, high = value.partition(":")  # torchrun's elastic "N:N" is accepted
        if colon and low != high:
            raise ConfigError(
                f"{name}={value!r}: elastic ranges are not supported, Detectron2's launcher needs "
                f"a fixed number of machines (e.g. {name}={high})"
            )
        num_machines = _as_int(name, low, 1)
    slurm_nodes = _first(environ, _SLURM_NUM_MACHINES_VARS)
    if found and found[0] in _TORCH_NUM_MACHINES_VARS and slurm_nodes:
        if num_machines != _as_int(*slurm_nodes, 1):
            raise ConfigError(
                f"{found[0]}={found[1]} but Slurm runs this step on {slurm_nodes[1]} node(s) "
                f"({slurm_nodes[0]}): rethink-d2 reads {found[0]} as the number of machines (one "
                f"launcher per node); unset it or set it to {slurm_nodes[1]}"
            )
    name, machine_rank = _int_var(environ, _TORCH_MACHINE_RANK_VARS + ("SLURM_NODEID",), 0)
    if machine_rank and machine_rank >= num_machines:
        raise ConfigError(
            f"{name}={machine_rank} but there are {num_machines} machine(s): the machine "
            f"rank must be in [0, {num_machines}); check the job's node count"
        )
    num_gpus = _gpus_from_env(environ) or gpus_per_node or 1
    args = ["--num-gpus", str(num_gpus), "--num-machines", str(num_machines)]
    args += ["--machine-rank", str(machine_rank or 0)]

    found = _first(environ, _MASTER_ADDR_VARS)
    host = check_master_addr(*found) if found else None
    nodelist = _first(environ, _SLURM_NODELIST_VARS)
    if host is None and nodelist:
        host = expand_slurm_nodelist(nodelist[1])[0]
    name, port = _int_var(environ, ("MASTER_PORT", "PET_MASTER_PORT"), 1)
    if port and port > 65535:
        raise ConfigError(f"{name}={port} is not a TCP port (1-65535)")
    if port is None:
        _, job_id = _int_var(environ, ("SLURM_JOB_ID",), 0)
        if job_id is not None:  # the same on every node of the job, below the ephemeral range
            port = 10000 + job_id % 20000

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


def _dist_url(host, port):
    if ":" in host and not host.startswith("["):  # IPv6 literal
        host = f"[{host}]"
    return f"tcp://{host}:{port}"
