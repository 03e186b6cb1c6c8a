"""Shared fixtures: a per-session data cache, the repository paths, and a train_net runner."""
import inspect
import json
import logging
import os
import subprocess
import sys
import tempfile

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_NET = os.path.join(REPO, "tools", "train_net.py")
QUICKSTART = os.path.join(REPO, "configs", "quickstart", "scratch_R18_GN_shapes.yaml")

# Overrides that shrink the quickstart model to a few seconds per run on 2 CPU cores.
TINY_OPTS = [
    "INPUT.MIN_SIZE_TRAIN", "(64,)",
    "INPUT.MAX_SIZE_TRAIN", "64",
    "INPUT.MIN_SIZE_TEST", "64",
    "INPUT.MAX_SIZE_TEST", "64",
    "SOLVER.IMS_PER_BATCH", "2",
    "SOLVER.WARMUP_ITERS", "2",
    "SOLVER.STEPS", "()",
    "SOLVER.CHECKPOINT_PERIOD", "2",
    "MODEL.RPN.BATCH_SIZE_PER_IMAGE", "32",
    "MODEL.RPN.POST_NMS_TOPK_TRAIN", "32",
    "MODEL.RPN.POST_NMS_TOPK_TEST", "32",
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "16",
    "TEST.DETECTIONS_PER_IMAGE", "20",
    "TEST.EVAL_PERIOD", "0",
    "DATASETS.TEST", "()",
    "DATALOADER.NUM_WORKERS", "0",
    "RETHINK.PLOT_LEARNING_CURVE", "False",
    # explicit: a CUDA config run by several processes without a GPU stops instead of falling back
    "MODEL.DEVICE", "cpu",
]


# The built-in datasets are generated once per test session into a directory of its own (set
# before any test module imports rethink_d2, which reads it when registering them), and subset
# caches go to another one, so tests never write into the user's ~/.cache.
# RETHINK_D2_TEST_DATA reuses a data directory across sessions.
os.environ["RETHINK_D2_DATA"] = os.environ.get("RETHINK_D2_TEST_DATA") or tempfile.mkdtemp(
    prefix="rethink_d2_test_data_"
)
os.environ["RETHINK_D2_CACHE"] = tempfile.mkdtemp(prefix="rethink_d2_test_cache_")


# A test whose body calls one of these starts other processes (train_net, tools, gloo workers):
# it is marked `slow` (still run by `make test`; `-m "not slow"` leaves them out).
_STARTS_PROCESSES = ("run_train_net(", "start_train_net(", "subprocess.", "launch_gloo(", "launch(")


def pytest_collection_modifyitems(items):
    for item in items:
        function = getattr(item, "function", None)
        source = inspect.getsource(function) if function is not None else ""
        if any(call in source for call in _STARTS_PROCESSES):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def _logs_reach_caplog():
    """Detectron2's setup_logger (run by in-process training) stops these loggers from
    propagating to the root logger, where caplog listens, and sets their level: every test
    starts with both restored."""
    for name in ("detectron2", "rethink_d2", "fvcore"):
        logging.getLogger(name).propagate = True
        logging.getLogger(name).setLevel(logging.NOTSET)


@pytest.fixture(autouse=True)
def _few_threads():
    """Tests share 2 cores; one intra-op thread each keeps runs predictable."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def read_metrics(output_dir):
    """The records of ``<output_dir>/metrics.json`` (one dict per line), in order."""
    with open(os.path.join(output_dir, "metrics.json")) as f:
        return [json.loads(line) for line in f if line.strip()]


def run_train_net(args, timeout=600, env=None):
    """
    Run tools/train_net.py in a subprocess.

    Returns:
        subprocess.CompletedProcess with text stdout/stderr.
    """
    full_env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, TRAIN_NET, *args],
        cwd=REPO,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
