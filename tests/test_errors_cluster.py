"""Launch and cluster mistakes end with one line, exit code 2 and no traceback.

Most cases run ``launch_cli`` (what ``tools/train_net.py`` runs) in this process, since they
stop before any training process starts; one case per kind also runs the real script.
"""

import logging

import pytest
import torch
from detectron2.engine import HookBase, TrainerBase

from cluster_utils import errors_of, free_port
from conftest import QUICKSTART, TINY_OPTS, run_train_net
from rethink_d2.engine import rethink_argument_parser
from rethink_d2.engine.defaults import build_config, launch_cli
from rethink_d2.engine.distributed import check_launch, choose_device, gpu_request
from rethink_d2.engine.nonfinite import install_one_line_error_filter
from rethink_d2.utils.errors import EXIT_USER_ERROR, ConfigError, TrainingError

# TINY_OPTS without its MODEL.DEVICE cpu: the quickstart config asks for Detectron2's "cuda".
CUDA_OPTS = [o for pair in zip(TINY_OPTS[::2], TINY_OPTS[1::2]) if pair[0] != "MODEL.DEVICE"
             for o in pair]  # fmt: skip


def never_called(args):
    raise AssertionError("training started although the launch is invalid")


def run_cli(capsys, argv):
    """launch_cli on ``argv``; returns (exit code, the one error line, all of stderr)."""
    args = rethink_argument_parser().parse_args(argv)
    with pytest.raises(SystemExit) as stopped:
        launch_cli(never_called, args)
    stderr = capsys.readouterr().err
    errors = errors_of(stderr)
    assert len(errors) == 1, stderr
    assert "Traceback" not in stderr
    return stopped.value.code, errors[0], stderr


@pytest.fixture
def no_gpu_env(monkeypatch):
    """No scheduler or container GPU variable set (whatever the machine running the tests has)."""
    for name in ("CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES", "SLURM_GPUS", "SLURM_JOB_GPUS",
                 "SLURM_GPUS_ON_NODE", "SLURM_GPUS_PER_NODE", "SLURM_GPUS_PER_TASK",
                 "SLURM_STEP_GPUS", "MASTER_ADDR", "PET_MASTER_ADDR"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


# ---------------------------------------------------------------------------------------------
# no silent CPU training
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "env, world_size, on_command_line, reason",
    [
        ({"CUDA_VISIBLE_DEVICES": "0,1"}, 1, False, "CUDA_VISIBLE_DEVICES=0,1"),
        ({"NVIDIA_VISIBLE_DEVICES": "all"}, 1, False, "NVIDIA_VISIBLE_DEVICES=all"),
        ({"SLURM_GPUS_ON_NODE": "4"}, 1, False, "SLURM_GPUS_ON_NODE=4"),
        ({"CUDA_VISIBLE_DEVICES": "0"}, 1, False, "CUDA_VISIBLE_DEVICES=0"),
        ({"SLURM_GPUS_PER_NODE": "a100:2"}, 1, False, "SLURM_GPUS_PER_NODE=a100:2"),
        ({}, 2, False, "2 training processes"),
        ({}, 1, True, "MODEL.DEVICE cuda on the command line"),
    ],
)
def test_a_run_that_asked_for_gpus_does_not_fall_back(env, world_size, on_command_line, reason):
    assert gpu_request("cuda", world_size, on_command_line, env).startswith(reason)
    with pytest.raises(ConfigError) as error:
        choose_device("cuda", world_size, on_command_line, env)
    message = str(error.value)
    assert message.startswith(reason) and "PyTorch sees none" in message
    for hint in ("driver >= 580", "--gpus all", "--nv", "MODEL.DEVICE cpu", "device_count()=0"):
        assert hint in message


@pytest.mark.parametrize(
    "env",
    [
        {},
        {"CUDA_VISIBLE_DEVICES": ""},  # GPUs hidden on purpose
        {"CUDA_VISIBLE_DEVICES": "-1"},
        {"NVIDIA_VISIBLE_DEVICES": "void"},
        {"SLURM_GPUS_ON_NODE": "0"},
        {"SLURM_GPUS_PER_NODE": "gpu:0"},
    ],
)
def test_a_plain_single_process_run_falls_back_to_the_cpu_with_a_warning(env, caplog):
    with caplog.at_level(logging.WARNING, logger="rethink_d2.engine.distributed"):
        assert choose_device("cuda", 1, False, env) == "cpu"
    assert "No GPU is visible: MODEL.DEVICE cuda -> cpu" in caplog.text
    assert choose_device("cpu", 4, True, {"CUDA_VISIBLE_DEVICES": "0"}) == "cpu"


def test_build_config_keeps_the_interactive_fallback(no_gpu_env):
    assert build_config(QUICKSTART, CUDA_OPTS).MODEL.DEVICE == "cpu"


@pytest.mark.parametrize(
    "flags, opts, env",
    [
        ([], [], {"CUDA_VISIBLE_DEVICES": "0"}),
        (["--num-gpus", "2"], [], {}),
        ([], ["MODEL.DEVICE", "cuda"], {}),
    ],
)
def test_train_net_stops_when_gpus_were_asked_for(
    flags, opts, env, no_gpu_env, monkeypatch, capsys
):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    code, error, _ = run_cli(capsys, ["--config", QUICKSTART, *flags, *CUDA_OPTS, *opts])
    assert code == EXIT_USER_ERROR
    assert "asks for GPUs, but PyTorch sees none" in error


@pytest.mark.slow
def test_train_net_script_stops_with_one_line_when_gpus_were_asked_for(tmp_path):
    proc = run_train_net(
        ["--config", QUICKSTART, *CUDA_OPTS, "OUTPUT_DIR", str(tmp_path / "out")],
        env={"CUDA_VISIBLE_DEVICES": "0"},
        timeout=300,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == EXIT_USER_ERROR, output[-3000:]
    (error,) = errors_of(proc.stderr)
    assert error.startswith("rethink-d2: error: CUDA_VISIBLE_DEVICES=0 asks for GPUs")
    assert "Traceback" not in output


# ---------------------------------------------------------------------------------------------
# launch flags and environment
# ---------------------------------------------------------------------------------------------
def test_more_processes_than_visible_gpus(no_gpu_env, monkeypatch, capsys):
    # Detectron2's launch would fail with a bare assert in every training process.
    with pytest.raises(ConfigError, match="pass --num-gpus 2"):
        check_launch(8, 1, "auto", {"CUDA_VISIBLE_DEVICES": "0,1"}, visible_gpus=2)
    check_launch(2, 1, "auto", {}, visible_gpus=2)
    check_launch(8, 1, "auto", {}, visible_gpus=0)  # no GPU at all: gloo processes on the CPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    code, error, _ = run_cli(capsys, ["--config", QUICKSTART, "--num-gpus", "4", *TINY_OPTS])
    assert code == EXIT_USER_ERROR
    assert "--num-gpus 4 starts 4 training processes" in error and "2 visible GPU(s)" in error


@pytest.mark.parametrize(
    "dist_url, num_machines, expected",
    [
        ("127.0.0.1:29500", 1, "has no scheme: write it as tcp://HOST:PORT (e.g. tcp://127.0.0.1"),
        ("tcp://127.0.0.1", 1, "is not tcp://HOST:PORT"),
        ("tcp://node1:port", 2, "is not tcp://HOST:PORT"),
        ("http://node1:29500", 2, "http:// is not supported"),
        ("auto", 2, "--dist-url auto only works on one machine"),
    ],
)
def test_bad_dist_url(dist_url, num_machines, expected, no_gpu_env, capsys):
    with pytest.raises(ConfigError, match="--dist-url"):
        check_launch(2, num_machines, dist_url, {})
    argv = ["--config", QUICKSTART, "--num-gpus", "2", "--num-machines", str(num_machines)]
    code, error, _ = run_cli(capsys, [*argv, "--dist-url", dist_url, *TINY_OPTS])
    assert code == EXIT_USER_ERROR and expected in error


def test_good_dist_urls_pass():
    for dist_url in ("tcp://10.0.0.1:29500", "tcp://[fd00::1]:29500", "env://", "file:///s/f"):
        check_launch(1, 2, dist_url, {})
    check_launch(2, 1, "auto", {})
    check_launch(1, 1, "10.0.0.1:29500", {})  # one process: Detectron2 ignores --dist-url


@pytest.mark.slow
def test_train_net_script_refuses_a_dist_url_without_scheme(tmp_path):
    proc = run_train_net(
        ["--config", QUICKSTART, "--num-gpus", "2", "--dist-url", f"127.0.0.1:{free_port()}",
         *TINY_OPTS, "OUTPUT_DIR", str(tmp_path / "out")],
        timeout=300,
    )  # fmt: skip
    output = proc.stdout + proc.stderr
    assert proc.returncode == EXIT_USER_ERROR, output[-3000:]
    (error,) = errors_of(proc.stderr)
    assert "has no scheme: write it as tcp://HOST:PORT" in error
    assert "Traceback" not in output


def test_master_addr_with_a_port(no_gpu_env, monkeypatch, capsys):
    monkeypatch.setenv("MASTER_ADDR", "node1:29500")
    code, error, _ = run_cli(
        capsys, ["--config", QUICKSTART, "--num-gpus", "2", "--dist-url", "env://", *TINY_OPTS]
    )
    assert code == EXIT_USER_ERROR
    assert "MASTER_ADDR='node1:29500'" in error and "MASTER_ADDR=node1 and MASTER_PORT=29500" in (
        error
    )


def test_unwritable_output_dir(tmp_path, no_gpu_env, capsys):
    # a path below a regular file cannot be created, whoever runs the tests (root included)
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    out = str(blocker / "run")
    code, error, _ = run_cli(capsys, ["--config", QUICKSTART, *TINY_OPTS, "OUTPUT_DIR", out])
    assert code == EXIT_USER_ERROR
    assert f"OUTPUT_DIR {out!r} cannot be written (Not a directory)" in error
    assert "mkdir -p" in error


# ---------------------------------------------------------------------------------------------
# errors during training: no traceback from Detectron2's training loop
# ---------------------------------------------------------------------------------------------
class RaiseAt(HookBase):
    def __init__(self, error):
        self.error = error

    def after_step(self):
        if self.trainer.iter == 1:
            raise self.error


class NoStep(TrainerBase):
    def run_step(self):
        pass


@pytest.mark.parametrize(
    "error, logged",
    [(TrainingError("non-finite loss at iteration 1"), False), (RuntimeError("a bug"), True)],
)
def test_training_loop_logs_no_traceback_for_user_errors(error, logged, caplog):
    install_one_line_error_filter()
    install_one_line_error_filter()  # idempotent
    trainer = NoStep()
    trainer.register_hooks([RaiseAt(error)])
    with caplog.at_level(logging.ERROR, logger="detectron2.engine.train_loop"):
        with pytest.raises(type(error)):
            trainer.train(0, 3)
    # by module: Detectron2's colorful log formatter renames records to "d2.engine.train_loop"
    records = [r for r in caplog.records if r.module == "train_loop"]
    assert bool(records) == logged
    filters = logging.getLogger("detectron2.engine.train_loop").filters
    assert len([f for f in filters if type(f).__name__ == "_OneLineErrorFilter"]) == 1
