"""Scheduler environment -> train_net launch flags (rethink_d2.launch), table-driven.

Pure functions of an environment mapping; no real Slurm or Kubernetes is involved.
"""

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from conftest import REPO
from rethink_d2.launch import expand_slurm_nodelist, launch_args_from_env
from rethink_d2.launch.__main__ import (
    RETRY_EXIT_CODE_ENV_VAR,
    main as launch_main,
    merge_launch_args,
    reported_exit_code,
    retry_exit_code,
)
from rethink_d2.engine.preemption import PREEMPTED_EXIT_CODE
from rethink_d2.utils.errors import ConfigError


def flags(num_gpus, num_machines, machine_rank, dist_url=None):
    out = ["--num-gpus", str(num_gpus), "--num-machines", str(num_machines)]
    out += ["--machine-rank", str(machine_rank)]
    return out + (["--dist-url", dist_url] if dist_url else [])


SLURM_2x4 = {
    "SLURM_JOB_ID": "4242",
    "SLURM_NNODES": "2",
    "SLURM_NODEID": "1",
    "SLURM_NTASKS": "2",
    "SLURM_JOB_NODELIST": "gpu-a[07-08]",
    "SLURM_GPUS_ON_NODE": "4",
}

# (case id, environment, gpus_per_node fallback, expected flags)
CASES = [
    ("nothing: one local process", {}, None, flags(1, 1, 0)),
    ("nothing, 8 visible GPUs: free local port", {}, 8, flags(8, 1, 0, "auto")),
    (
        "torchrun style",
        {
            "MASTER_ADDR": "10.1.2.3",
            "MASTER_PORT": "23456",
            "NNODES": "4",
            "NODE_RANK": "2",
            "LOCAL_WORLD_SIZE": "8",
        },
        1,
        flags(8, 4, 2, "tcp://10.1.2.3:23456"),
    ),
    (
        "Kubeflow PyTorchJob: WORLD_SIZE/RANK count pods",
        {"MASTER_ADDR": "job-master-0", "MASTER_PORT": "23456", "WORLD_SIZE": "3", "RANK": "1"},
        2,
        flags(2, 3, 1, "tcp://job-master-0:23456"),
    ),
    (
        "Kubeflow PyTorchJob with nprocPerNode (PET_*)",
        {
            "PET_MASTER_ADDR": "job-master-0",
            "PET_MASTER_PORT": "29400",
            "PET_NNODES": "2",
            "PET_NODE_RANK": "1",
            "PET_NPROC_PER_NODE": "4",
        },
        1,
        flags(4, 2, 1, "tcp://job-master-0:29400"),
    ),
    (
        "PET_NPROC_PER_NODE=auto uses the visible GPUs; elastic N:N",
        {"MASTER_ADDR": "m", "PET_NNODES": "2:2", "NODE_RANK": "0", "PET_NPROC_PER_NODE": "auto"},
        8,
        flags(8, 2, 0, "tcp://m:29500"),
    ),
    (
        "Kubernetes Indexed Job",
        {"MASTER_ADDR": "train-0.train", "NNODES": "2", "JOB_COMPLETION_INDEX": "1"},
        8,
        flags(8, 2, 1, "tcp://train-0.train:29500"),
    ),
    (
        "Slurm: first host of the node list, port from the job id",
        SLURM_2x4,
        1,
        flags(4, 2, 1, "tcp://gpu-a07:14242"),
    ),
    (
        "Slurm: MASTER_ADDR / MASTER_PORT win over the node list",
        {**SLURM_2x4, "MASTER_ADDR": "10.0.0.9", "MASTER_PORT": "3000"},
        1,
        flags(4, 2, 1, "tcp://10.0.0.9:3000"),
    ),
    (
        "Slurm: --gpus-per-node=a100:8, old SLURM_NODELIST name",
        {
            "SLURM_JOB_ID": "99999",
            "SLURM_JOB_NUM_NODES": "3",
            "SLURM_NODEID": "0",
            "SLURM_NODELIST": "n[1-3]",
            "SLURM_GPUS_PER_NODE": "a100:8",
        },
        1,
        flags(8, 3, 0, "tcp://n1:29999"),
    ),
    (
        "Slurm: GPU ids of the job on this node",
        {
            "SLURM_JOB_ID": "7",
            "SLURM_NNODES": "1",
            "SLURM_NODEID": "0",
            "SLURM_NODELIST": "x",
            "SLURM_JOB_GPUS": "0,1,2",
        },
        1,
        flags(3, 1, 0, "tcp://x:10007"),
    ),
    (
        "Slurm sub-allocation: the step's node list, node count and rank, not the job's",
        {
            **SLURM_2x4,
            "SLURM_JOB_NODELIST": "gpu-a[01-08]",
            "SLURM_JOB_NUM_NODES": "8",
            "SLURM_STEP_NODELIST": "gpu-a[05-06]",
            "SLURM_STEP_NUM_NODES": "2",
        },
        1,
        flags(4, 2, 1, "tcp://gpu-a05:14242"),
    ),
    (
        "Slurm, one task per node, template exports MASTER_ADDR/WORLD_SIZE/RANK too",
        {
            **SLURM_2x4,
            "SLURM_LOCALID": "0",
            "SLURM_NTASKS_PER_NODE": "1",
            "SLURM_STEP_TASKS_PER_NODE": "1(x2)",
            "MASTER_ADDR": "gpu-a07",
            "WORLD_SIZE": "2",
            "RANK": "1",
        },
        1,
        flags(4, 2, 1, "tcp://gpu-a07:14242"),
    ),
    (
        "bracketed IPv6 master address",
        {"MASTER_ADDR": "[fd00::1]", "MASTER_PORT": "1234", "NNODES": "2", "NODE_RANK": "1"},
        1,
        flags(1, 2, 1, "tcp://[fd00::1]:1234"),
    ),
    (
        "IPv6 master address is bracketed",
        {"MASTER_ADDR": "fd00::1", "MASTER_PORT": "1234", "NNODES": "2", "NODE_RANK": "1"},
        1,
        flags(1, 2, 1, "tcp://[fd00::1]:1234"),
    ),
    (
        "empty variables count as unset",
        {"MASTER_ADDR": "", "NNODES": "", "NODE_RANK": ""},
        None,
        flags(1, 1, 0),
    ),
]


@pytest.mark.parametrize(
    "environ, gpus, expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_env_to_launch_flags(environ, gpus, expected):
    assert launch_args_from_env(environ, gpus_per_node=gpus) == expected


# A one-task-per-GPU sbatch template (--nodes=2 --ntasks-per-node=8) that exports the torch
# variables per task: without the Slurm check, 16 launchers would share 2 machine ranks.
SLURM_PER_GPU_TEMPLATE = {
    **SLURM_2x4,
    "SLURM_NTASKS": "16",
    "SLURM_LOCALID": "0",
    "SLURM_STEP_TASKS_PER_NODE": "8(x2)",
    "SLURM_NTASKS_PER_NODE": "8",
    "MASTER_ADDR": "gpu-a07",
    "MASTER_PORT": "29500",
    "WORLD_SIZE": "16",
    "RANK": "8",
    "LOCAL_RANK": "0",
}

# (case id, environment, words the one-line error must contain)
BAD = [
    ("not an integer", {"NNODES": "two"}, ["NNODES", "'two'", "not an integer"]),
    (
        "rank out of range",
        {"MASTER_ADDR": "m", "NNODES": "2", "NODE_RANK": "2"},
        ["NODE_RANK=2", "[0, 2)"],
    ),
    ("several machines, no master", {"NNODES": "2", "NODE_RANK": "1"}, ["MASTER_ADDR"]),
    ("elastic range", {"PET_NNODES": "1:4"}, ["PET_NNODES", "elastic"]),
    (
        "port out of range",
        {"MASTER_ADDR": "m", "MASTER_PORT": "70000", "NNODES": "2"},
        ["MASTER_PORT", "TCP port"],
    ),
    ("inside torchrun", {"LOCAL_RANK": "0", "MASTER_ADDR": "m"}, ["LOCAL_RANK", "torchrun"]),
    (
        "one Slurm task per GPU",
        {**SLURM_2x4, "SLURM_NTASKS": "8"},
        ["SLURM_NTASKS=8", "--ntasks-per-node=1"],
    ),
    (
        "bad Slurm node list",
        {**SLURM_2x4, "SLURM_JOB_NODELIST": "node[01-"},
        ["node[01-", "Slurm host list"],
    ),
    (
        "one task per GPU, template exports torch variables (task 3 of a node)",
        {**SLURM_PER_GPU_TEMPLATE, "SLURM_LOCALID": "3"},
        ["SLURM_LOCALID=3", "--ntasks-per-node=1"],
    ),
    (
        "one task per GPU, template exports torch variables (first task of a node)",
        SLURM_PER_GPU_TEMPLATE,
        ["SLURM_STEP_TASKS_PER_NODE=8(x2)", "--ntasks-per-node=1"],
    ),
    (
        "one task per GPU, only the job's --ntasks-per-node is known",
        {"SLURM_JOB_ID": "5", "SLURM_NTASKS_PER_NODE": "8", "MASTER_ADDR": "n1", "NNODES": "2"},
        ["SLURM_NTASKS_PER_NODE=8", "--ntasks-per-node=1"],
    ),
    (
        "bad Slurm tasks-per-node value",
        {"SLURM_JOB_ID": "5", "SLURM_STEP_TASKS_PER_NODE": "eight"},
        ["SLURM_STEP_TASKS_PER_NODE", "'eight'"],
    ),
    (
        "WORLD_SIZE counts GPUs while Slurm runs one task per node",
        {**SLURM_2x4, "MASTER_ADDR": "gpu-a07", "WORLD_SIZE": "8", "RANK": "1"},
        ["WORLD_SIZE=8", "2 node(s)", "set it to 2"],
    ),
    (
        "MASTER_ADDR holds host:port",
        {"MASTER_ADDR": "node0:29500", "NNODES": "2", "NODE_RANK": "1"},
        ["MASTER_ADDR='node0:29500'", "MASTER_ADDR=node0 and MASTER_PORT=29500"],
    ),
    (
        "PET_MASTER_ADDR holds [IPv6]:port",
        {"PET_MASTER_ADDR": "[fd00::1]:29400", "PET_NNODES": "2", "PET_NODE_RANK": "0"},
        ["PET_MASTER_ADDR=fd00::1 and PET_MASTER_PORT=29400"],
    ),
    (
        "MASTER_ADDR holds a URL",
        {"MASTER_ADDR": "tcp://node0", "NNODES": "2", "NODE_RANK": "1"},
        ["'tcp://node0'", "set MASTER_ADDR=node0"],
    ),
]


@pytest.mark.parametrize("environ, words", [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_env_is_one_clear_error(environ, words):
    with pytest.raises(ConfigError) as info:
        launch_args_from_env(environ)
    message = str(info.value)
    assert "\n" not in message
    for word in words:
        assert word in message


@pytest.mark.parametrize(
    "nodelist, hosts",
    [
        ("node[01-03,07],gpu5", ["node01", "node02", "node03", "node07", "gpu5"]),
        ("single", ["single"]),
        ("a[8-10]", ["a8", "a9", "a10"]),
        ("rack[1-2]-n[01-02]", ["rack1-n01", "rack1-n02", "rack2-n01", "rack2-n02"]),
        ("x-[009-011]-ib", ["x-009-ib", "x-010-ib", "x-011-ib"]),
    ],
)
def test_slurm_nodelist_expansion(nodelist, hosts):
    assert expand_slurm_nodelist(nodelist) == hosts


@pytest.mark.parametrize("nodelist", ["n[1-", "n]1[", "n[3-1]", "n[a-b]", "a,,b", "n[[1]]"])
def test_bad_slurm_nodelist(nodelist):
    with pytest.raises(ConfigError, match="Slurm host list"):
        expand_slurm_nodelist(nodelist)


def test_user_flags_win_and_go_before_overrides():
    mapped = flags(8, 2, 1, "tcp://m:1")
    user = ["--num-gpus=2", "--config", "c.yaml", "OUTPUT_DIR", "/out"]
    expected = ["--num-machines", "2", "--machine-rank", "1", "--dist-url", "tcp://m:1"]
    assert merge_launch_args(mapped, user) == expected + user


SCHEDULER_VARS = ("MASTER_ADDR", "MASTER_PORT", "NNODES", "NODE_RANK", "WORLD_SIZE", "RANK",
                  "LOCAL_RANK", "LOCAL_WORLD_SIZE", "JOB_COMPLETION_INDEX")  # fmt: skip


def _scheduler_env(env):
    """This process's environment without its own scheduler variables, plus ``env``."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "PET_"))}
    for name in SCHEDULER_VARS:
        full_env.pop(name, None)
    return dict(full_env, **env, PYTHONWARNINGS="ignore", RETHINK_D2_PYTHON=sys.executable)


def _launcher(args, env):
    return subprocess.run(
        [sys.executable, "-m", "rethink_d2.launch", *args],
        cwd=REPO,
        env=_scheduler_env(env),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_launcher_cli_and_docker_entrypoint_dry_run():
    env = dict(SLURM_2x4)
    user = ["--config", "c.yaml", "OUTPUT_DIR", "/out"]
    proc = _launcher(["--dry-run", *user], env)
    assert proc.returncode == 0, proc.stderr
    command = proc.stdout.split()
    assert command[1] == os.path.join(REPO, "tools", "train_net.py")
    assert command[2:] == flags(4, 2, 1, "tcp://gpu-a07:14242") + user
    # The image's entry point runs the same launcher (with this repository as the app dir).
    entry = subprocess.run(
        [os.path.join(REPO, "docker", "entrypoint.sh"), "--dry-run", *user],
        env=_scheduler_env(env),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert entry.returncode == 0, entry.stderr
    assert entry.stdout.split() == command


def test_launcher_cli_bad_env_exits_2_with_one_line():
    proc = _launcher(["--dry-run", "--config", "c.yaml"], {"NNODES": "2", "NODE_RANK": "0"})
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("rethink-d2: error:")]
    assert len(errors) == 1 and "MASTER_ADDR" in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.fixture
def clean_env(monkeypatch):
    """This process's environment without scheduler variables (restored after the test)."""
    for name in list(os.environ):
        if name.startswith(("SLURM_", "PET_")) or name in SCHEDULER_VARS:
            monkeypatch.delenv(name)
    return monkeypatch


@pytest.mark.parametrize(
    "env, word",
    [
        ({"MASTER_ADDR": "node0:29500", "NNODES": "2", "NODE_RANK": "0"}, "MASTER_PORT=29500"),
        ({**SLURM_PER_GPU_TEMPLATE, "SLURM_LOCALID": "5"}, "SLURM_LOCALID=5"),
        ({RETRY_EXIT_CODE_ENV_VAR: "2"}, RETRY_EXIT_CODE_ENV_VAR),
    ],
    ids=["host:port", "one task per GPU", "bad retry code"],
)
def test_launcher_main_bad_env_returns_2_with_one_line(clean_env, capsys, env, word):
    """The launcher's main() in this process (the subprocess test above covers the CLI)."""
    for name, value in env.items():
        clean_env.setenv(name, value)
    assert launch_main(["--dry-run", "--gpus-per-node", "1", "--config", "c.yaml"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    (line,) = captured.err.splitlines()
    assert line.startswith("rethink-d2: error:") and word in line, line


@pytest.mark.parametrize(
    "returncode, retry_code, expected",
    [
        (0, 143, 0),
        (2, 143, 2),  # user error: never restarted
        (PREEMPTED_EXIT_CODE, 143, 143),
        (1, 143, 143),
        (-9, 143, 143),  # killed by a signal
        (PREEMPTED_EXIT_CODE, None, PREEMPTED_EXIT_CODE),
        (-15, None, 143),  # as a shell reports it
    ],
)
def test_reported_exit_code(returncode, retry_code, expected):
    assert reported_exit_code(returncode, retry_code) == expected


def test_retry_exit_code_values():
    assert retry_exit_code({}) is None and retry_exit_code({RETRY_EXIT_CODE_ENV_VAR: ""}) is None
    assert retry_exit_code({RETRY_EXIT_CODE_ENV_VAR: "143"}) == 143
    for bad in ("0", "2", "256", "-1", "x"):
        with pytest.raises(ConfigError, match=RETRY_EXIT_CODE_ENV_VAR):
            retry_exit_code({RETRY_EXIT_CODE_ENV_VAR: bad})


# Stands in for tools/train_net.py: exits with its last argument, or with 75 on SIGTERM when it is
# "wait" (like a preempted run), after printing "ready".
FAKE_TRAIN_NET = textwrap.dedent("""
    import signal, sys, time
    if sys.argv[-1] == "wait":
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(75))
        print("ready", flush=True)
        time.sleep(60)
        sys.exit(1)
    sys.exit(int(sys.argv[-1]))
    """)


@pytest.fixture
def fake_train_net(tmp_path):
    path = tmp_path / "fake_train_net.py"
    path.write_text(FAKE_TRAIN_NET)
    return str(path)


@pytest.mark.parametrize("code, expected", [(PREEMPTED_EXIT_CODE, 143), (2, 2), (0, 0)])
def test_launcher_reports_retry_exit_code(clean_env, capsys, fake_train_net, code, expected):
    clean_env.setenv("RETHINK_D2_TRAIN_NET", fake_train_net)
    clean_env.setenv(RETRY_EXIT_CODE_ENV_VAR, "143")
    assert launch_main(["--gpus-per-node", "1", str(code)]) == expected
    mapped = f"train_net exited with {code}; reporting 143" in capsys.readouterr().err
    assert mapped == (expected != code)


def test_launcher_forwards_sigterm_when_it_maps_exit_codes(fake_train_net):
    env = {"RETHINK_D2_TRAIN_NET": fake_train_net, RETRY_EXIT_CODE_ENV_VAR: "143"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "rethink_d2.launch", "--gpus-per-node", "1", "wait"],
        cwd=REPO,
        env=_scheduler_env(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline().strip() == "ready"
        proc.send_signal(signal.SIGTERM)  # only the launcher, as Kubernetes signals PID 1
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 143, stderr
    assert f"train_net exited with {PREEMPTED_EXIT_CODE}; reporting 143" in stderr
