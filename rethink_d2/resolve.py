"""The one place where a config with ``RETHINK`` keys becomes a plain Detectron2 config.

``resolve_config`` is a pure cfg -> cfg transform in the shape of Detectron2's
``DefaultTrainer.auto_scale_workers``: it is applied once, before the config is frozen, and every
value it derives (norms, schedule, LR, pixel statistics, subset datasets) is therefore visible in
the ``config.yaml`` a run dumps and in ``tools/train_net.py --print-config``.
"""
import logging

from detectron2.data import DatasetCatalog

from .data.subsets import register_subset_datasets
from .modeling.norms import apply_norm_config
from .modeling.pretrained import apply_pretrained_format
from .modeling.scratch import check_scratch_config
from .solver.schedule import resolve_schedule
from .utils.errors import DatasetError

logger = logging.getLogger(__name__)


def resolve_config(cfg, world_size=None):
    """
    Derive Detectron2's keys from the ``RETHINK`` sub-node.

    Args:
        cfg (CfgNode): an unfrozen config that went through ``add_rethink_config``.
        world_size (int or None): number of training processes; ``None`` asks
            ``detectron2.utils.comm``. It decides which SyncBN implementation is used.

    Returns:
        CfgNode: a new, resolved config (``cfg`` itself is not modified). Resolving is
        idempotent: a run's dumped ``config.yaml`` resolves to itself.

    Raises:
        ConfigError / DatasetError: with one line that names the key to change.
    """
    cfg = cfg.clone()
    cfg.defrost()
    cfg = apply_pretrained_format(cfg)
    cfg = apply_norm_config(cfg, world_size=world_size)
    check_scratch_config(cfg)
    cfg = resolve_schedule(cfg)
    register_subset_datasets(cfg)
    check_datasets_registered(cfg)
    return cfg


def check_datasets_registered(cfg):
    """
    Raise a one-line DatasetError when DATASETS.TRAIN/TEST names an unregistered dataset.

    Detectron2 would raise a KeyError listing every registered name, only once the data loader
    is built (after the model); this fails before anything is built.

    Args:
        cfg (CfgNode): config whose subset names are already registered.
    """
    registered = set(DatasetCatalog.list())
    for split in ("TRAIN", "TEST"):
        for name in cfg.DATASETS[split]:
            if name not in registered:
                raise DatasetError(
                    f"DATASETS.{split} names {name!r}, which is not a registered dataset: fix the "
                    f"name (e.g. coco_2017_train, coco_2017_train@10k, rethink_shapes_train) or "
                    f"register it with detectron2.data.DatasetCatalog.register before training"
                )
