"""Config keys of rethink-d2, all under the ``RETHINK`` sub-node."""

from detectron2.config import CfgNode as CN


def add_rethink_config(cfg):
    """
    Add the ``RETHINK`` sub-node and its defaults to ``cfg`` (in place; returned for chaining).
    Detectron2's global default config (``get_cfg()``) is never modified.
    """
    _C = cfg
    _C.RETHINK = CN()
    # Norm of backbone, FPN and box/mask/keypoint heads: "GN", "SyncBN", "BN", or "" to keep
    # Detectron2's per-module NORM keys as written.
    _C.RETHINK.NORM = "GN"
    # Groups of every GroupNorm (Wu & He use 32); GN widths must be multiples of it and of 32.
    _C.RETHINK.GN_GROUPS = 32
    # Train from random initialization: nothing loaded, nothing frozen.
    _C.RETHINK.SCRATCH = True
    # Refuse settings that silently defeat scratch training (MODEL.WEIGHTS, FREEZE_AT, FrozenBN).
    _C.RETHINK.SCRATCH_GUARD = True
    # Zero-init the last norm's gamma in each residual block (hurts GN from scratch: off).
    _C.RETHINK.ZERO_INIT_RESIDUAL = False
    # Weight Standardization (Qiao et al.) on the ResNet convs (GN+WS); FPN and heads unchanged.
    _C.RETHINK.WEIGHT_STANDARDIZATION = False
    # Weights that pixel mean/std, INPUT.FORMAT and STRIDE_IN_1X1 must match: "auto" (from
    # MODEL.WEIGHTS), "scratch", "msra", "fair_caffe2", "fair", "torchvision", or "" to keep them
    # as written (see rethink_d2/modeling/pretrained.py).
    _C.RETHINK.PRETRAINED_FORMAT = "auto"

    # ---- schedule (see rethink_d2/solver/schedule.py) ----
    _C.RETHINK.SCHEDULE = CN()
    # "" keeps SOLVER as written; "6x" / "4.5x" (multiples of BASE_ITER), "220kit" (iterations
    # at REFERENCE_BATCH), "24ep" (epochs), "3.52Mimg" (images seen).
    _C.RETHINK.SCHEDULE.SPEC = ""
    # "tail": LR drops in the last TAILS iterations (the paper); "proportional": at FRACTIONS.
    _C.RETHINK.SCHEDULE.MODE = "tail"
    # Length of the 1x schedule, in iterations at REFERENCE_BATCH images per iteration.
    _C.RETHINK.SCHEDULE.BASE_ITER = 90000
    # Batch size the schedule and BASE_LR are written for (8 GPUs x 2 images).
    _C.RETHINK.SCHEDULE.REFERENCE_BATCH = 16
    # LR is multiplied by GAMMA at the last 60k and the last 20k iterations (at REFERENCE_BATCH).
    _C.RETHINK.SCHEDULE.TAILS = (60000, 20000)
    # Step positions as fractions of the length, for MODE "proportional" (Detectron2's 1x).
    _C.RETHINK.SCHEDULE.FRACTIONS = (2.0 / 3.0, 8.0 / 9.0)
    # LR decay factor at each step (the paper's 35k-image runs use 0.02).
    _C.RETHINK.SCHEDULE.GAMMA = 0.1
    # LR at REFERENCE_BATCH; scaled linearly to SOLVER.IMS_PER_BATCH.
    _C.RETHINK.SCHEDULE.BASE_LR = 0.02
    # Warm-up in iterations at REFERENCE_BATCH, scaled like the schedule; 0 keeps
    # SOLVER.WARMUP_ITERS as written (Detectron2's 9x batch-64 config keeps 1000).
    _C.RETHINK.SCHEDULE.WARMUP_ITERS = 0
    # TEST.EVAL_PERIOD in iterations at REFERENCE_BATCH, scaled (0: keep as written).
    _C.RETHINK.SCHEDULE.EVAL_PERIOD = 0
    # SOLVER.CHECKPOINT_PERIOD in iterations at REFERENCE_BATCH, scaled (0: keep as written).
    _C.RETHINK.SCHEDULE.CHECKPOINT_PERIOD = 0
    # Training images per epoch for "ep" specs (0: infer from "@10k"-style subset names).
    _C.RETHINK.SCHEDULE.DATASET_IMAGES = 0

    # ---- data subsets (see rethink_d2/data/subsets.py) ----
    _C.RETHINK.DATA = CN()
    # Seed of the subset draw; independent of the run's SEED.
    _C.RETHINK.DATA.SUBSET_SEED = 0
    # A subset manifest (JSON written by an earlier run) to reuse an exact subset.
    _C.RETHINK.DATA.SUBSET_MANIFEST = ""
    # Sampler-level subset ("10k", "0.1") for DATALOADER.SAMPLER_TRAIN "SubsetTrainingSampler".
    _C.RETHINK.DATA.SAMPLER_SUBSET = ""
    # Cache of subset COCO JSONs ("": $RETHINK_D2_CACHE/subsets, else <cache root>/subsets).
    _C.RETHINK.DATA.SUBSET_CACHE_DIR = ""

    # ---- your own COCO-format datasets (see rethink_d2/data/coco_datasets.py) ----
    _C.RETHINK.DATASETS = CN()
    # [[NAME, JSON, IMAGE_ROOT], ...] registered by resolve_config (tools/train_net.py --dataset);
    # NUM_CLASSES comes from the json of the ones in DATASETS.TRAIN.
    _C.RETHINK.DATASETS.COCO_INSTANCES = []

    # ---- engine (see rethink_d2/engine) ----
    # Resume automatically when OUTPUT_DIR already holds a checkpoint of this run (same config
    # fingerprint, see rethink_d2/engine/run_dir.py); a checkpoint of another run is refused.
    _C.RETHINK.AUTO_RESUME = True
    # Periodic checkpoints to keep (older ones are deleted; model_final is always kept).
    _C.RETHINK.CHECKPOINTS_TO_KEEP = 3
    # Log cumulative images / instances / pixels seen (the paper's Figure 2 axes).
    _C.RETHINK.LOG_DATA_SEEN = True
    # Draw loss and AP vs iteration into OUTPUT_DIR/learning_curve.png at the end of training.
    _C.RETHINK.PLOT_LEARNING_CURVE = True

    # ---- large-scale jitter and the LSJ recipe (see rethink_d2/data/augmentation.py) ----
    _C.RETHINK.INPUT = CN()
    # Train augmentation: "" keeps Detectron2's (ResizeShortestEdge + flip from INPUT.*), "LSJ"
    # is large-scale jitter (ResizeScale + FixedSizeCrop + flip, boxes recomputed from masks).
    _C.RETHINK.INPUT.AUGMENTATION = ""
    # LSJ output size: images are scaled, then cropped or padded to IMAGE_SIZE x IMAGE_SIZE.
    _C.RETHINK.INPUT.IMAGE_SIZE = 1024
    # LSJ scale range, as a factor of IMAGE_SIZE (Ghiasi et al. and Detectron2: 0.1 to 2.0).
    _C.RETHINK.INPUT.MIN_SCALE = 0.1
    # Upper end of the LSJ scale range.
    _C.RETHINK.INPUT.MAX_SCALE = 2.0
    # Send DDP gradients in fp16 (Detectron2's create_ddp_model(fp16_compression=True)).
    _C.RETHINK.DDP_FP16_COMPRESSION = False

    # ---- data order audit (see rethink_d2/data/build.py, TrainLoaderPosition) ----
    # Write the image ids of every batch each rank consumed to OUTPUT_DIR/ids_rank<R>.jsonl.
    _C.RETHINK.DATA.RECORD_IDS = False
    return cfg
