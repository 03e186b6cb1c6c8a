#!/usr/bin/env python
"""
Draw a trained model's predictions (boxes, masks, keypoints, class names) on images.

    python tools/predict.py --config output/demo/config.yaml --input img.jpg more/ "pics/*.png" \\
        --output output/demo/predictions

--config is a run's config.yaml or a shipped config; --weights defaults to the last checkpoint
of the config's OUTPUT_DIR. Class names come from the dataset the model was trained on
(DATASETS.TRAIN[0]; own data given with --dataset or kept in the run's config.yaml). The model is
run with Detectron2's own DefaultPredictor and drawn with its Visualizer: one PNG per image.
"""

import warnings

warnings.filterwarnings(
    "ignore", message=".*torch.jit.script.*is deprecated", category=FutureWarning
)
warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)

import argparse  # noqa: E402
import glob
import os
import sys

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.detection_utils import read_image
from detectron2.engine import DefaultPredictor
from detectron2.utils.visualizer import Visualizer
from tqdm import tqdm

from rethink_d2.engine import build_config
from rethink_d2.engine.defaults import add_dataset_argument
from rethink_d2.engine.run_dir import has_checkpoint
from rethink_d2.utils.errors import ConfigError, RethinkError, report_user_error

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def build_parser():
    """The command line of this tool."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--config",
        "--config-file",
        dest="config_file",
        metavar="FILE",
        required=True,
        help="a run's config.yaml or a shipped config",
    )
    parser.add_argument(
        "--weights",
        metavar="FILE",
        help="model weights (default: the last checkpoint in the config's OUTPUT_DIR)",
    )
    parser.add_argument(
        "--input",
        nargs="+",
        required=True,
        metavar="PATH",
        help="image files, globs (quoted), folders, or registered dataset names "
        "(e.g. rethink_shapes_val: its images)",
    )
    parser.add_argument(
        "--limit", type=int, metavar="N", help="draw only the first N images of the input"
    )
    parser.add_argument(
        "--output", required=True, metavar="DIR", help="folder for the drawn PNGs (created)"
    )
    parser.add_argument(
        "--confidence-threshold",
        type=float,
        default=0.5,
        help="minimum score of a drawn detection (default: %(default)s)",
    )
    parser.add_argument(
        "--scale",
        type=float,
        default=1.0,
        help="size of the drawn PNGs relative to the input images (default: %(default)s)",
    )
    add_dataset_argument(parser)
    parser.add_argument(
        "opts",
        nargs=argparse.REMAINDER,
        metavar="KEY VALUE",
        help="config overrides, e.g. MODEL.DEVICE cpu",
    )
    return parser


def expand_inputs(paths):
    """
    The image files, in order and without duplicates, that ``paths`` name: files, glob
    patterns, folders or registered dataset names (so call it after ``build_config``).
    """
    found = []
    for path in paths:
        if not os.path.exists(path) and path in DatasetCatalog.list():
            found += [record["file_name"] for record in DatasetCatalog.get(path)]
        elif os.path.isdir(path):
            names = sorted(os.listdir(path))
            found += [os.path.join(path, n) for n in names if n.lower().endswith(IMAGE_EXTENSIONS)]
        elif os.path.isfile(path):
            found.append(path)
        else:
            matches = sorted(glob.glob(path))
            if not matches:
                raise ConfigError(
                    f"--input {path!r} is no file, folder, matching pattern or registered dataset"
                )
            found += [m for m in matches if os.path.isfile(m)]
    found = list(dict.fromkeys(found))
    if not found:
        raise ConfigError(
            f"--input {' '.join(paths)} holds no image ({', '.join(IMAGE_EXTENSIONS)})"
        )
    return found


def _weights(cfg, given):
    if given:
        if not os.path.isfile(given):
            raise ConfigError(f"--weights {given!r} does not exist (check the path)")
        return given
    if not has_checkpoint(cfg.OUTPUT_DIR):
        raise ConfigError(
            f"no trained weights: {cfg.OUTPUT_DIR} holds no last_checkpoint; pass --weights FILE "
            f"or the config.yaml of a trained run"
        )
    with open(os.path.join(cfg.OUTPUT_DIR, "last_checkpoint")) as f:
        return os.path.join(cfg.OUTPUT_DIR, f.read().strip())


def _output_names(images, output_dir):
    """One PNG per image; stems shared by images of different folders get a counter."""
    names, used = [], set()
    for image in images:
        stem = os.path.splitext(os.path.basename(image))[0]
        name, k = stem, 1
        while name in used:
            name, k = f"{stem}_{k}", k + 1
        used.add(name)
        names.append(os.path.join(output_dir, name + ".png"))
    return names


def main(argv=None):
    """Run the command line ``argv`` (None: ``sys.argv[1:]``); return the exit code."""
    args = build_parser().parse_args(argv)
    try:
        if not 0 <= args.confidence_threshold <= 1:
            raise ConfigError(
                f"--confidence-threshold must be in [0, 1], got {args.confidence_threshold}"
            )
        if args.scale <= 0:
            raise ConfigError(f"--scale must be > 0, got {args.scale}")
        if args.limit is not None and args.limit < 1:
            raise ConfigError(f"--limit must be >= 1, got {args.limit}")
        cfg = build_config(args.config_file, args.opts, for_training=False, datasets=args.datasets)
        images = expand_inputs(args.input)[: args.limit]
        weights = _weights(cfg, args.weights)
    except RethinkError as e:
        return report_user_error(e)
    cfg.defrost()
    cfg.MODEL.WEIGHTS = weights
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = args.confidence_threshold
    cfg.freeze()
    predictor = DefaultPredictor(cfg)
    metadata = MetadataCatalog.get(cfg.DATASETS.TRAIN[0] if cfg.DATASETS.TRAIN else "__unused")
    os.makedirs(args.output, exist_ok=True)
    for image_path, out_path in tqdm(
        list(zip(images, _output_names(images, args.output))), desc="predict", unit="image"
    ):
        image = read_image(image_path, format="BGR")
        instances = predictor(image)["instances"].to("cpu")
        visualizer = Visualizer(image[:, :, ::-1], metadata, scale=args.scale)
        drawn = visualizer.draw_instance_predictions(instances)
        drawn.save(out_path)
    print(f"wrote {len(images)} PNGs to {args.output} (weights: {weights})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
