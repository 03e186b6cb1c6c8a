"""Runs never mix: one output directory per config, and auto-resume only of the same run.

* :func:`default_output_dir`: with no ``OUTPUT_DIR`` given, ``tools/train_net.py`` writes to
  ``output/<config path without .yaml>`` (relative to ``configs/`` for a shipped config), so two
  configs never share a directory by default.
* :func:`check_same_run` / :func:`write_run_fingerprint`: the first training start writes
  ``OUTPUT_DIR/run_fingerprint.json``, the resolved config minus the keys that may change on
  resume (:data:`RESUME_FREE_KEYS`). Auto-resume continues a checkpoint only when the fingerprint
  matches; otherwise it stops with one line naming the keys that differ.
"""
import json
import os

from detectron2.utils import comm

from ..utils.errors import ConfigError
from ..utils.files import atomic_write

__all__ = [
    "RESUME_FREE_KEYS",
    "FINGERPRINT_FILE",
    "default_output_dir",
    "is_default_output_dir",
    "has_checkpoint",
    "run_fingerprint",
    "write_run_fingerprint",
    "check_same_run",
]

# Detectron2's default OUTPUT_DIR: "not given".
_D2_DEFAULT_OUTPUT_DIR = "./output"
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
    """
    Args:
        config_file (str): the config a run was started with.
        configs_root (str): the shipped configs directory.

    Returns:
        str: ``output/<path of config_file under configs_root, without .yaml>``, or
        ``output/<file name without .yaml>`` for a config elsewhere.
    """
    path = os.path.realpath(config_file)
    root = os.path.realpath(configs_root)
    if os.path.commonpath([path, root]) == root:
        name = os.path.relpath(path, root)
    else:
        name = os.path.basename(path)
    return os.path.join("output", os.path.splitext(name)[0])


def is_default_output_dir(output_dir):
    """bool: whether ``output_dir`` is Detectron2's default, i.e. the user gave none."""
    return os.path.normpath(output_dir) == os.path.normpath(_D2_DEFAULT_OUTPUT_DIR)


def has_checkpoint(output_dir):
    """bool: whether ``output_dir`` holds a checkpoint to resume (Detectron2's tag file)."""
    return os.path.isfile(os.path.join(output_dir, "last_checkpoint"))


def _flatten(node, prefix=""):
    flat = {}
    for key, value in node.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value
    return flat


def run_fingerprint(cfg):
    """
    Args:
        cfg (CfgNode): a resolved config.

    Returns:
        dict[str, object]: every key of ``cfg`` (dotted) except :data:`RESUME_FREE_KEYS`, with
        JSON-comparable values.
    """
    return {
        key: value
        for key, value in _flatten(cfg).items()
        if not any(key == free or key.startswith(free + ".") for free in RESUME_FREE_KEYS)
    }


def _read_fingerprint(output_dir):
    path = os.path.join(output_dir, FINGERPRINT_FILE)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def write_run_fingerprint(cfg):
    """
    Write ``OUTPUT_DIR/run_fingerprint.json`` for ``cfg`` (main process only).

    Args:
        cfg (CfgNode): the resolved config of the run that is starting.
    """
    if comm.is_main_process():
        os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
        text = json.dumps(run_fingerprint(cfg), indent=1, sort_keys=True, default=str)
        path = os.path.join(cfg.OUTPUT_DIR, FINGERPRINT_FILE)
        atomic_write(path, lambda f: f.write(text), binary=False)


def check_same_run(cfg, has_checkpoint):
    """
    Refuse to auto-resume a checkpoint that another config wrote.

    Args:
        cfg (CfgNode): the resolved config of the run that is starting.
        has_checkpoint (bool): whether ``OUTPUT_DIR`` holds a checkpoint to resume.

    Raises:
        ConfigError: one line naming the keys that differ and the ways out.
    """
    if not has_checkpoint:
        return
    saved = _read_fingerprint(cfg.OUTPUT_DIR)
    way_out = (
        "give this run another OUTPUT_DIR, or pass --resume (resume_or_load(resume=True)) to "
        "continue that checkpoint anyway"
    )
    if saved is None:
        raise ConfigError(
            f"OUTPUT_DIR {cfg.OUTPUT_DIR!r} holds a checkpoint without {FINGERPRINT_FILE}, so it "
            f"cannot be told to be this run's: {way_out}"
        )
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
