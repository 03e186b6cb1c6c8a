"""``resolve_config``: the last step from a config to the run's Detectron2 keys."""

from detectron2.data import DatasetCatalog

from .data.coco_datasets import register_coco_datasets
from .data.samplers import check_sampler_config
from .data.subsets import register_subset_datasets
from .modeling.norms import apply_norm_config
from .modeling.pretrained import apply_pretrained_format
from .solver.schedule import resolve_schedule
from .utils.errors import DatasetError


def resolve_config(cfg, world_size=None):
    """
    Return a resolved copy of ``cfg``: Detectron2's keys derived from the ``RETHINK`` sub-node
    and the datasets it names registered.

    Shipped configs state their recipe literally, so this changes nothing in them unless a run
    changes what a key depends on (``RETHINK.NORM`` on another device, the batch size or
    schedule on the command line). Like ``DefaultTrainer.auto_scale_workers``, it runs once
    before freezing, so every derived value is in ``config.yaml``; it is idempotent.
    ``world_size`` is unused (kept for compatibility). The scratch guard is not run here (a
    trained model is loaded with a scratch config): see ``modeling.check_scratch_config``.
    """
    cfg = cfg.clone()
    cfg.defrost()
    cfg = apply_pretrained_format(cfg)
    cfg = apply_norm_config(cfg)
    cfg = resolve_schedule(cfg)
    register_coco_datasets(cfg)
    check_sampler_config(cfg)
    register_subset_datasets(cfg)
    # fail before anything is built, in one line (Detectron2 raises a KeyError listing every
    # registered name once the data loader is built, after the model)
    registered = set(DatasetCatalog.list())
    for split in ("TRAIN", "TEST"):
        for name in cfg.DATASETS[split]:
            if name not in registered:
                raise DatasetError(
                    f"DATASETS.{split} names {name!r}, which is not a registered dataset: fix the "
                    f"name (e.g. coco_2017_train, coco_2017_train@10k, rethink_shapes_train) or "
                    f"register it with detectron2.data.DatasetCatalog.register before training"
                )
    return cfg
