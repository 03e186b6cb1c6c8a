"""The rethink-d2 Trainer: Detectron2's ``DefaultTrainer`` with scratch-training defaults.

It resolves the config (:func:`rethink_d2.resolve_config`), builds rethink-d2's model and train
loader, wraps CPU models in DDP without ``device_ids`` (gloo), writes atomic rotated checkpoints,
counts the data seen, checkpoints and exits with code 75 on SIGTERM / SIGUSR1, stops every rank
on a non-finite loss and draws ``learning_curve.png`` when training ends.
"""

import logging
import os
import weakref
from collections import OrderedDict

from detectron2.engine import DefaultTrainer, TrainerBase
from detectron2.engine import create_ddp_model, hooks
from detectron2.evaluation import PascalVOCDetectionEvaluator
from detectron2.data import MetadataCatalog
from detectron2.modeling import GeneralizedRCNNWithTTA
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..data import build_train_loader
from ..data.build import TrainLoaderPosition
from ..evaluation import FastCOCOEvaluator
from ..modeling import build_model, check_scratch_config
from ..resolve import resolve_config
from ..utils.errors import ConfigError
from .checkpoint import Checkpointer
from .data_seen import DataSeenCounter, DataSeenHook
from .nonfinite import FiniteLossAMPTrainer, FiniteLossTrainer
from .preemption import PreemptionHook
from .results import results_by_dataset
from .run_dir import check_same_run, write_run_fingerprint

logger = logging.getLogger(__name__)


def _plot_learning_curve(trainer):
    """Draw ``OUTPUT_DIR/metrics.json`` into ``learning_curve.png``; a failure is only logged:
    the trained model matters more than its picture."""
    from ..utils.curves import plot_single_run

    out_png = os.path.join(trainer.cfg.OUTPUT_DIR, "learning_curve.png")
    try:
        plot_single_run(trainer.cfg.OUTPUT_DIR, out_png)
    except Exception as e:  # noqa: BLE001 -- see docstring
        logger.warning("Could not draw %s: %s", out_png, e)
    else:
        logger.info("Learning curve written to %s", out_png)


def wrap_model_for_distributed(model, fp16_compression=False):
    """
    Wrap ``model`` in DistributedDataParallel when more than one process trains; unlike
    Detectron2's ``create_ddp_model`` as-is, CPU modules get ``device_ids=None`` (gloo).

    Returns:
        nn.Module: ``model`` itself in a single process, else the DDP wrapper.
    """
    device_ids = [comm.get_local_rank()] if next(model.parameters()).is_cuda else None
    return create_ddp_model(
        model, broadcast_buffers=False, device_ids=device_ids, fp16_compression=fp16_compression
    )


class Trainer(DefaultTrainer):
    """``DefaultTrainer`` for scratch training (see the module docstring); ``cfg`` went through
    ``add_rethink_config`` and is resolved here if the caller did not resolve it."""

    def __init__(self, cfg):
        # DefaultTrainer.__init__ is not called because it wraps the model with
        # create_ddp_model(...) without device ids; everything else mirrors it.
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        cfg = resolve_config(cfg)
        check_scratch_config(cfg)  # here, where training starts; never when building a model
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        if cfg.SOLVER.AMP.ENABLED and not cfg.MODEL.DEVICE.startswith("cuda"):
            raise ConfigError(
                f"SOLVER.AMP.ENABLED needs MODEL.DEVICE cuda (Detectron2's AMPTrainer is "
                f"CUDA-only), got {cfg.MODEL.DEVICE!r}: set SOLVER.AMP.ENABLED False"
            )

        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        self.data_seen = DataSeenCounter(data_loader) if cfg.RETHINK.LOG_DATA_SEEN else None
        model = wrap_model_for_distributed(model, fp16_compression=cfg.RETHINK.DDP_FP16_COMPRESSION)
        trainer_class = FiniteLossAMPTrainer if cfg.SOLVER.AMP.ENABLED else FiniteLossTrainer
        self._trainer = trainer_class(model, self.data_seen or data_loader, optimizer)

        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = Checkpointer(
            model,
            cfg.OUTPUT_DIR,
            max_to_keep=cfg.RETHINK.CHECKPOINTS_TO_KEEP,
            trainer=weakref.proxy(self),
        )
        if isinstance(data_loader, TrainLoaderPosition):  # the data order across resumes
            self.checkpointer.add_checkpointable("data_position", data_loader)
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    def resume_or_load(self, resume=True):
        """
        Resume from ``OUTPUT_DIR`` if ``resume`` (``--resume``, even a checkpoint of another
        config) or if ``RETHINK.AUTO_RESUME`` finds a checkpoint there (ConfigError if it is of
        another config); else load ``MODEL.WEIGHTS``.
        """
        if not resume and self.cfg.RETHINK.AUTO_RESUME and self.checkpointer.has_checkpoint():
            check_same_run(self.cfg, has_checkpoint=True)
            logger.info(
                "Auto-resume: %s already holds a checkpoint of this run (%s); continuing it. "
                "Set RETHINK.AUTO_RESUME False or use a new OUTPUT_DIR to start over.",
                self.cfg.OUTPUT_DIR,
                self.checkpointer.get_checkpoint_file(),
            )
            resume = True
        super().resume_or_load(resume=resume)
        write_run_fingerprint(self.cfg)

    def build_hooks(self):
        """Detectron2's default hooks plus data-seen accounting, TTA, the learning curve and
        preemption."""
        ret = super().build_hooks()
        if self.data_seen is not None:
            # Right after the LR scheduler: at the same position on every rank (its all-gather
            # must line up with EvalHook's) and before the checkpointer, so checkpoints store
            # counts of the iteration they are saved at.
            scheduler_index = next(i for i, h in enumerate(ret) if isinstance(h, hooks.LRScheduler))
            ret.insert(
                scheduler_index + 1,
                DataSeenHook(self.data_seen, checkpoint_period=self.cfg.SOLVER.CHECKPOINT_PERIOD),
            )
            self.checkpointer.add_checkpointable("data_seen", self.data_seen)
        if self.cfg.TEST.AUG.ENABLED:
            ret.append(hooks.EvalHook(0, lambda: self.test_with_tta(self.cfg, self.model)))
        if comm.is_main_process() and self.cfg.RETHINK.PLOT_LEARNING_CURVE:
            # after PeriodicWriter: the last metrics are flushed
            ret.append(hooks.CallbackHook(after_train=_plot_learning_curve))
        # Last: its checkpoint holds the state after every other hook ran for the iteration.
        before_save = [self.data_seen.synchronize] if self.data_seen is not None else []
        ret.append(
            PreemptionHook(
                self.checkpointer, step_vote=self._trainer.step_vote, before_save=before_save
            )
        )
        return ret

    @classmethod
    def build_model(cls, cfg):
        """:func:`rethink_d2.modeling.build_model`."""
        model = build_model(cfg)
        logger.debug("Model:\n%s", model)
        return model

    @classmethod
    def build_train_loader(cls, cfg):
        """:func:`rethink_d2.data.build_train_loader`."""
        return build_train_loader(cfg)

    @property
    def last_eval_results(self):
        """Results of the latest evaluation during training (as ``DefaultTrainer.test``), or
        None."""
        return getattr(self, "_last_eval_results", None)

    @classmethod
    def test_with_tta(cls, cfg, model):
        """Evaluate ``model`` with test-time augmentation (``TEST.AUG``); results keyed
        ``"<dataset>_TTA"``."""
        logger.info("Running inference with test-time augmentation ...")
        model = GeneralizedRCNNWithTTA(cfg, model)
        evaluators = [
            cls.build_evaluator(
                cfg, name, output_folder=os.path.join(cfg.OUTPUT_DIR, "inference_TTA", name)
            )
            for name in cfg.DATASETS.TEST
        ]
        results = results_by_dataset(cls.test(cfg, model, evaluators), cfg.DATASETS.TEST)
        return OrderedDict((name + "_TTA", res) for name, res in results.items())

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        """:class:`rethink_d2.evaluation.FastCOCOEvaluator` or Pascal VOC's, by the dataset's
        ``evaluator_type`` metadata."""
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type", "coco")
        if evaluator_type == "coco":
            # Tasks come from the config, not from the predictions: a model that predicts
            # nothing yet (early in a scratch run) still reports segm/keypoint AP.
            tasks = (
                ("bbox",) + ("segm",) * cfg.MODEL.MASK_ON + ("keypoints",) * cfg.MODEL.KEYPOINT_ON
            )
            return FastCOCOEvaluator(dataset_name, tasks=tasks, output_dir=output_folder)
        if evaluator_type == "pascal_voc":
            return PascalVOCDetectionEvaluator(dataset_name)
        raise ConfigError(
            f"dataset {dataset_name!r} has evaluator_type {evaluator_type!r}; rethink-d2 "
            f"evaluates ['coco', 'pascal_voc']: remove it from DATASETS.TEST or set "
            f"TEST.EVAL_PERIOD 0"
        )
