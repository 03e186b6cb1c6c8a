"""Small helpers around the evaluation results of a run (``tools/train_net.py``)."""

import logging
from collections import OrderedDict

from ..utils.errors import ConfigError

logger = logging.getLogger(__name__)


def require_weights_for_eval(cfg, checkpointer):
    """Raise ConfigError when ``--eval-only`` has neither MODEL.WEIGHTS nor a checkpoint."""
    if not cfg.MODEL.WEIGHTS and not checkpointer.has_checkpoint():
        raise ConfigError(
            f"--eval-only has nothing to evaluate: {cfg.OUTPUT_DIR} holds no last_checkpoint; "
            f"pass MODEL.WEIGHTS /path/to/model_final.pth or OUTPUT_DIR of a trained run"
        )


def results_by_dataset(results, dataset_names):
    """``{dataset: {task: metrics}}``: puts back the dataset level that Detectron2's
    ``DefaultTrainer.test`` drops for a single dataset."""
    if not results:
        return OrderedDict()
    if len(dataset_names) == 1 and dataset_names[0] not in results:
        return OrderedDict([(dataset_names[0], results)])
    return OrderedDict(results)


def log_results_summary(results):
    """Log one line per (dataset, task) with its AP, e.g. ``rethink_shapes_val bbox AP 71.3``."""
    for dataset, tasks in results.items():
        for task, metrics in tasks.items():
            if isinstance(metrics, dict) and "AP" in metrics:
                logger.info("Final %s %s AP %.1f", dataset, task, float(metrics["AP"]))
