"""Runs never mix: one output directory per config, and auto-resume only of the same run.

With no ``OUTPUT_DIR`` given, a run writes to ``output/<config path without .yaml>``. The first
training start writes ``OUTPUT_DIR/run_fingerprint.json`` (the resolved config minus
:data:`RESUME_FREE_KEYS`); auto-resume continues a checkpoint only when it matches.
"""

import json
import os

from detectron2.utils import comm

from ..utils.errors import ConfigError
from ..utils.files import atomic_write
from .checkpoint import CHECKPOINT_TAG

FINGERPRINT_FILE = "run_fingerprint.json"
# Keys (and key prefixes) that a resumed run may change without becoming another run.
RESUME_FREE_KEYS = (
    "OUTPUT_DIR",
    "MODEL.DEVICE",
    "MODEL.WEIGHTS",
    "DATALOADER.NUM_WORKERS",
    "SOLVER.CHECKPOINT_PERIOD",
    "DATASETS.TEST",  # evaluation settings do not change what is trained
    "TEST",
    "VIS_PERIOD",
    "CUDNN_BENCHMARK",
    "RETHINK.AUTO_RESUME",
    "RETHINK.CHECKPOINTS_TO_KEEP",
    "RETHINK.PLOT_LEARNING_CURVE",
    "RETHINK.DATASETS.COCO_INSTANCES",  # data may move to another path
)
# Differing keys named in the error message.
_SHOWN_KEYS = 4


def default_output_dir(config_file, configs_root):
    """``output/<config_file's path under configs_root, or its file name, without .yaml>``."""
    path = os.path.realpath(config_file)
    root = os.path.realpath(configs_root)
    if os.path.commonpath([path, root]) == root:
        name = os.path.relpath(path, root)
    else:
        name = os.path.basename(path)
    return os.path.join("output", os.path.splitext(name)[0])


def has_checkpoint(output_dir):
    """Whether ``output_dir`` holds a checkpoint to resume (Detectron2's tag file)."""
    return os.path.isfile(os.path.join(output_dir, CHECKPOINT_TAG))


def _flatten(node, prefix=""):
    flat = {}
    for key, value in node.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value
    return flat


def run_fingerprint(cfg):
    """Every key of the resolved ``cfg`` (dotted) except :data:`RESUME_FREE_KEYS`."""
    return {
        key: value
        for key, value in _flatten(cfg).items()
        if not any(key == free or key.startswith(free + ".") for free in RESUME_FREE_KEYS)
    }


def write_run_fingerprint(cfg):
    """Write ``OUTPUT_DIR/run_fingerprint.json`` for ``cfg`` (main process only)."""
    if comm.is_main_process():
        os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
        text = json.dumps(run_fingerprint(cfg), indent=1, sort_keys=True, default=str)
        path = os.path.join(cfg.OUTPUT_DIR, FINGERPRINT_FILE)
        atomic_write(path, lambda f: f.write(text), binary=False)


def check_same_run(cfg, has_checkpoint):
    """Raise ConfigError, naming the keys that differ, when ``OUTPUT_DIR`` holds a checkpoint
    (``has_checkpoint``) that another config wrote."""
    if not has_checkpoint:
        return
    way_out = (
        "give this run another OUTPUT_DIR, or pass --resume (resume_or_load(resume=True)) to "
        "continue that checkpoint anyway"
    )
    path = os.path.join(cfg.OUTPUT_DIR, FINGERPRINT_FILE)
    if not os.path.isfile(path):
        raise ConfigError(
            f"OUTPUT_DIR {cfg.OUTPUT_DIR!r} holds a checkpoint without {FINGERPRINT_FILE}, so it "
            f"cannot be told to be this run's: {way_out}"
        )
    with open(path) as f:
        saved = json.load(f)
    current = json.loads(json.dumps(run_fingerprint(cfg), default=str))
    differ = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
    if differ:
        shown = ", ".join(
            f"{k} ({saved.get(k)!r} there, {current.get(k)!r} here)" for k in differ[:_SHOWN_KEYS]
        )
        more = f" and {len(differ) - _SHOWN_KEYS} more" if len(differ) > _SHOWN_KEYS else ""
        raise ConfigError(
            f"OUTPUT_DIR {cfg.OUTPUT_DIR!r} holds a checkpoint of another run: {shown}{more} "
            f"differ; {way_out}"
        )
