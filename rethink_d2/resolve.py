"""What only run time knows: the last step from a config to the run's Detectron2 keys.

Every shipped config already states its recipe literally (norms, schedule, pixel statistics), so
plain Detectron2 (``merge_from_file`` + ``DefaultTrainer`` / ``DefaultPredictor``) runs it as
named, and ``resolve_config`` changes nothing in it. It re-derives those keys when a run changes
what they depend on -- ``RETHINK.NORM`` on another device (the SyncBN implementation),
``SOLVER.IMS_PER_BATCH`` or ``RETHINK.SCHEDULE.SPEC`` on the command line -- and registers the
datasets the config names (subsets such as ``coco_2017_train@10k``, ``RETHINK.DATASETS``).

It is a pure cfg -> cfg transform in the shape of Detectron2's
``DefaultTrainer.auto_scale_workers``, applied once before the config is frozen, so every value
it derives is visible in the ``config.yaml`` a run dumps and in ``--print-config``.
"""
import logging

from detectron2.data import DatasetCatalog

from .data.coco_datasets import register_coco_datasets
from .data.subsets import register_subset_datasets
from .modeling.norms import apply_norm_config
from .modeling.pretrained import apply_pretrained_format
from .solver.schedule import resolve_schedule
from .utils.errors import DatasetError

logger = logging.getLogger(__name__)


def resolve_config(cfg, world_size=None):
    """
    Derive Detectron2's keys from the ``RETHINK`` sub-node.

    Args:
        cfg (CfgNode): an unfrozen config that went through ``add_rethink_config``.
        world_size (int or None): accepted for compatibility and unused: the SyncBN
            implementation depends on ``MODEL.DEVICE`` only.

    Returns:
        CfgNode: a new, resolved config (``cfg`` itself is not modified). Resolving is
        idempotent: a run's dumped ``config.yaml`` resolves to itself.

    Raises:
        ConfigError / DatasetError: with one line that names the key to change.

    The scratch guard is not applied here (a trained model is loaded with a scratch config):
    it runs where training starts, see :func:`rethink_d2.modeling.check_scratch_config`.
    """
    cfg = cfg.clone()
    cfg.defrost()
    cfg = apply_pretrained_format(cfg)
    cfg = apply_norm_config(cfg)
    cfg = resolve_schedule(cfg)
    register_coco_datasets(cfg)
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
