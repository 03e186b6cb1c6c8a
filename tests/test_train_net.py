"""End-to-end tests of tools/train_net.py: flags, bad input, train -> resume -> eval, 2 processes."""
import os

import pytest
import yaml

from conftest import QUICKSTART, TINY_OPTS, read_metrics, run_train_net


def test_help_documents_every_flag():
    proc = run_train_net(["--help"], timeout=120)
    assert proc.returncode == 0, proc.stderr
    for flag in [
        "--config",
        "--config-file",
        "--num-gpus",
        "--num-machines",
        "--machine-rank",
        "--dist-url",
        "--resume",
        "--eval-only",
        "--print-config",
    ]:
        assert flag in proc.stdout, flag


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--config", "configs/does_not_exist.yaml"], "does not exist"),
        ([], "no config given"),
        (["--config", QUICKSTART, "MODEL.NOT_A_KEY", "1"], "MODEL.NOT_A_KEY"),
        (["--config", QUICKSTART, "SOLVER.MAX_ITER"], "KEY VALUE"),
        (["--config", QUICKSTART, "SOLVER.MAX_ITER", "5", "--resume"], "before the KEY VALUE"),
    ],
)
def test_bad_input_is_one_clear_line(args, expected):
    proc = run_train_net(args, timeout=120)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("rethink-d2: error:")]
    assert len(errors) == 1, proc.stderr
    assert expected in errors[0]
    assert "Traceback" not in proc.stderr


def test_missing_dataset_is_one_clear_line(tmp_path):
    proc = run_train_net(
        ["--config", QUICKSTART, *TINY_OPTS, "DATASETS.TRAIN", "('no_such_dataset',)",
         "OUTPUT_DIR", str(tmp_path)],
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "no_such_dataset" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_print_config_resolves_without_training(tmp_path):
    proc = run_train_net(
        ["--config", QUICKSTART, "--print-config", "SOLVER.BASE_LR", "0.123",
         "OUTPUT_DIR", str(tmp_path / "never")],
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    cfg = yaml.safe_load(proc.stdout)
    assert cfg["SOLVER"]["BASE_LR"] == pytest.approx(0.123)
    assert cfg["MODEL"]["DEVICE"] == "cuda"  # as configured: what a GPU machine would run
    assert not (tmp_path / "never").exists()


def test_print_config_of_a_multi_gpu_run_needs_no_gpu():
    proc = run_train_net(
        ["--config", "configs/scratch_R50_SyncBN_3x.yaml", "--num-gpus", "8", "--print-config"],
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    cfg = yaml.safe_load(proc.stdout)
    assert cfg["MODEL"]["DEVICE"] == "cuda" and cfg["MODEL"]["RESNETS"]["NORM"] == "SyncBN"


def test_train_resume_and_evaluate(tmp_path):
    out = str(tmp_path / "run")
    opts = [*TINY_OPTS, "OUTPUT_DIR", out]

    first = run_train_net(["--config", QUICKSTART, *opts, "SOLVER.MAX_ITER", "4"])
    assert first.returncode == 0, first.stderr[-3000:]
    for name in ["metrics.json", "last_checkpoint", "model_final.pth", "config.yaml"]:
        assert os.path.exists(os.path.join(out, name)), name
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(out))
    log = first.stdout + first.stderr
    assert "eta:" in log and "total_loss:" in log  # progress: iteration, ETA and losses
    assert max(r["iteration"] for r in read_metrics(out) if "total_loss" in r) == 3

    resumed = run_train_net(["--config", QUICKSTART, "--resume", *opts, "SOLVER.MAX_ITER", "6"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "[Checkpointer] Loading from" in resumed.stdout
    # The second run starts after the checkpoint of iteration 3, not at 0.
    assert "Starting training from iteration 4" in resumed.stdout
    iterations = [r["iteration"] for r in read_metrics(out) if "total_loss" in r]
    assert iterations == [3, 5]

    evaluated = run_train_net(
        ["--config", QUICKSTART, "--eval-only", *opts, "DATASETS.TEST", "('rethink_shapes_val',)"]
    )
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    log = evaluated.stdout + evaluated.stderr
    assert "Final rethink_shapes_val bbox AP" in log
    assert "Final rethink_shapes_val segm AP" in log


def test_two_cpu_processes(tmp_path):
    out = str(tmp_path / "ddp")
    proc = run_train_net(
        ["--config", QUICKSTART, "--num-gpus", "2", *TINY_OPTS,
         "SOLVER.MAX_ITER", "3", "OUTPUT_DIR", out],
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    cfg = yaml.safe_load(open(os.path.join(out, "config.yaml")))
    assert cfg["SOLVER"]["IMS_PER_BATCH"] == 2
    assert max(r["iteration"] for r in read_metrics(out) if "total_loss" in r) == 2
    assert os.path.exists(os.path.join(out, "model_final.pth"))



def test_amp_on_cpu_falls_back_to_fp32_with_a_warning(tmp_path):
    """Detectron2's AMPTrainer is CUDA-only: a GPU config with AMP still trains on a CPU."""
    out = str(tmp_path / "amp")
    proc = run_train_net(
        ["--config", QUICKSTART, *TINY_OPTS, "SOLVER.AMP.ENABLED", "True",
         "SOLVER.MAX_ITER", "2", "OUTPUT_DIR", out],
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "SOLVER.AMP.ENABLED needs a GPU" in proc.stderr
    assert yaml.safe_load(open(os.path.join(out, "config.yaml")))["SOLVER"]["AMP"]["ENABLED"] is False
    assert os.path.exists(os.path.join(out, "model_final.pth"))


def test_trainer_refuses_amp_without_cuda():
    from detectron2.config import get_cfg

    from rethink_d2 import add_rethink_config
    from rethink_d2.engine import Trainer
    from rethink_d2.utils.errors import ConfigError

    cfg = add_rethink_config(get_cfg())
    cfg.merge_from_file(QUICKSTART)
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "SOLVER.AMP.ENABLED", "True"])
    with pytest.raises(ConfigError, match="SOLVER.AMP.ENABLED"):
        Trainer(cfg)
