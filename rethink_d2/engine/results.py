"""Small helpers around evaluation results of a run."""
import logging
from collections import OrderedDict

from ..utils.errors import ConfigError

logger = logging.getLogger(__name__)


def require_weights_for_eval(cfg, checkpointer):
    """
    Make sure ``--eval-only`` has something to evaluate.

    Args:
        cfg (CfgNode): the run's config.
        checkpointer (Checkpointer): for the run's ``OUTPUT_DIR``.

    Raises:
        ConfigError: when neither MODEL.WEIGHTS nor a checkpoint in OUTPUT_DIR exists.
    """
    if not cfg.MODEL.WEIGHTS and not checkpointer.has_checkpoint():
        raise ConfigError(
            f"--eval-only has nothing to evaluate: {cfg.OUTPUT_DIR} holds no last_checkpoint; "
            f"pass MODEL.WEIGHTS /path/to/model_final.pth or OUTPUT_DIR of a trained run"
        )


def results_by_dataset(results, dataset_names):
    """
    Detectron2's ``DefaultTrainer.test`` flattens the results of a single dataset to
    ``{task: metrics}``; put the dataset level back.

    Args:
        results (dict or None): what ``test`` returned.
        dataset_names (list[str]): ``cfg.DATASETS.TEST``.

    Returns:
        OrderedDict: ``{dataset: {task: {metric: value}}}`` (empty when nothing was evaluated).
    """
    if not results:
        return OrderedDict()
    if len(dataset_names) == 1 and dataset_names[0] not in results:
        return OrderedDict([(dataset_names[0], results)])
    return OrderedDict(results)


def summarize_results(results):
    """
    Args:
        results (dict): ``{dataset: {task: {metric: value}}}``, see :func:`results_by_dataset`.

    Returns:
        list[tuple[str, str, float]]: (dataset, task, AP) for every task reporting an "AP".
    """
    rows = []
    for dataset, tasks in results.items():
        for task, metrics in tasks.items():
            if isinstance(metrics, dict) and "AP" in metrics:
                rows.append((dataset, task, float(metrics["AP"])))
    return rows


def log_results_summary(results):
    """Log one line per (dataset, task) with its AP, e.g. ``rethink_shapes_val bbox AP 71.3``."""
    for dataset, task, ap in summarize_results(results):
        logger.info("Final %s %s AP %.1f", dataset, task, ap)
