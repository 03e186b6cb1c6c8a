"""Issue 10 end to end: own COCO data via --dataset, Detectron2's own inference API on a trained
run, tools/predict.py, one output directory per config and auto-resume of the same run only."""
import importlib.util
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from detectron2.config import get_cfg
from detectron2.engine import DefaultPredictor
from PIL import Image

import rethink_d2
from conftest import QUICKSTART, REPO, TINY_OPTS, run_train_net
from rethink_d2.data.shapes import ensure_shapes_dataset
from rethink_d2.engine import build_config
from rethink_d2.utils.errors import ConfigError

NUM_IMAGES = 6
PREDICT = os.path.join(REPO, "tools", "predict.py")


def write_coco_dataset(folder, num_images=NUM_IMAGES):
    """A COCO instances dataset of ``num_images`` images: a json and an image folder."""
    paths = ensure_shapes_dataset("val")
    with open(paths["json_file"]) as f:
        data = json.load(f)
    data["images"] = data["images"][:num_images]
    ids = {image["id"] for image in data["images"]}
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] in ids]
    image_root = os.path.join(folder, "images")
    os.makedirs(image_root)
    for image in data["images"]:
        shutil.copy(os.path.join(paths["image_root"], image["file_name"]), image_root)
    json_file = os.path.join(folder, "instances.json")
    with open(json_file, "w") as f:
        json.dump(data, f)
    return json_file, image_root, data


def one_error_line(proc):
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("rethink-d2: error:")]
    assert len(errors) == 1, proc.stderr[-3000:]
    return errors[0]


def files_under(folder):
    return sorted(os.path.join(d, n) for d, _, names in os.walk(folder) for n in names)


@pytest.fixture(scope="module")
def own_run(tmp_path_factory):
    """Train the quickstart model from scratch on own COCO-format data with one command."""
    root = tmp_path_factory.mktemp("own")
    json_file, image_root, data = write_coco_dataset(str(root / "data"))
    out = str(root / "run")
    proc = run_train_net(
        ["--config", QUICKSTART, "--dataset", "mine", json_file, image_root, *TINY_OPTS,
         "DATASETS.TRAIN", "('mine',)", "SOLVER.MAX_ITER", "2", "OUTPUT_DIR", out]
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"root": root, "json": json_file, "images": image_root, "out": out, "data": data}


@pytest.mark.slow
def test_run_keeps_its_dataset_and_reads_the_classes_from_the_json(own_run):
    cfg = rethink_d2.add_rethink_config(get_cfg())
    cfg.merge_from_file(os.path.join(own_run["out"], "config.yaml"))
    assert cfg.RETHINK.DATASETS.COCO_INSTANCES == [["mine", own_run["json"], own_run["images"]]]
    assert cfg.MODEL.ROI_HEADS.NUM_CLASSES == len(own_run["data"]["categories"])
    assert os.path.isfile(os.path.join(own_run["out"], "run_fingerprint.json"))


@pytest.mark.slow
def test_eval_only_and_resume_from_the_runs_config(own_run):
    config = os.path.join(own_run["out"], "config.yaml")
    evaluated = run_train_net(
        ["--config", config, "--eval-only", "DATASETS.TEST", "('mine',)",
         "DATALOADER.NUM_WORKERS", "0"]
    )
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert "Final mine bbox AP" in evaluated.stdout + evaluated.stderr
    resumed = run_train_net(["--config", config, "SOLVER.MAX_ITER", "2"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Auto-resume" in resumed.stdout + resumed.stderr


@pytest.mark.slow
def test_detectron2_default_predictor_on_the_trained_run(own_run):
    """Detectron2's own inference API with the run's config.yaml and model_final.pth."""
    cfg = rethink_d2.add_rethink_config(get_cfg())
    cfg.merge_from_file(os.path.join(own_run["out"], "config.yaml"))
    cfg.MODEL.WEIGHTS = os.path.join(own_run["out"], "model_final.pth")
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
    outputs = DefaultPredictor(cfg)(np.zeros((64, 64, 3), np.uint8))
    assert type(outputs["instances"]).__name__ == "Instances"
    assert outputs["instances"].image_size == (64, 64)


@pytest.mark.slow
def test_predict_writes_one_png_per_image(own_run, tmp_path):
    out = tmp_path / "pred"
    proc = subprocess.run(
        [sys.executable, PREDICT, "--config", os.path.join(own_run["out"], "config.yaml"),
         "--input", own_run["images"], "--output", str(out), "--confidence-threshold", "0.0",
         "--scale", "2"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
        env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore"),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(os.listdir(out)) == sorted(
        os.path.splitext(i["file_name"])[0] + ".png" for i in own_run["data"]["images"]
    )
    first = own_run["data"]["images"][0]
    drawn = Image.open(out / (os.path.splitext(first["file_name"])[0] + ".png"))
    assert drawn.size == (2 * first["width"], 2 * first["height"])


@pytest.mark.slow
def test_another_config_in_the_same_output_dir_stops_with_the_differing_keys(own_run):
    before = files_under(own_run["out"])
    proc = run_train_net(
        ["--config", QUICKSTART, "--dataset", "mine", own_run["json"], own_run["images"],
         *TINY_OPTS, "DATASETS.TRAIN", "('mine',)", "SOLVER.MAX_ITER", "2",
         "MODEL.RESNETS.DEPTH", "34", "OUTPUT_DIR", own_run["out"]]
    )
    line = one_error_line(proc)
    assert "holds a checkpoint of another run" in line and "MODEL.RESNETS.DEPTH" in line
    assert "--resume" in line and "OUTPUT_DIR" in line
    assert files_under(own_run["out"]) == before


def test_subset_of_own_data_trains(tmp_path):
    from rethink_d2.engine import Trainer

    json_file, image_root, _ = write_coco_dataset(str(tmp_path / "data"))
    opts = [*TINY_OPTS, "DATASETS.TRAIN", "('mine_half@0.5',)", "SOLVER.MAX_ITER", "1",
            "OUTPUT_DIR", str(tmp_path / "run"), "MODEL.DEVICE", "cpu"]
    cfg = build_config(QUICKSTART, opts, datasets=[["mine_half", json_file, image_root]])
    trainer = Trainer(cfg)
    trainer.train()
    assert trainer.iter == 1 and os.path.isfile(tmp_path / "run" / "model_final.pth")
    assert len(rethink_d2.data.get_subset_record("mine_half@0.5")["image_ids"]) == NUM_IMAGES // 2


def test_two_configs_get_two_output_dirs():
    first = build_config(QUICKSTART, for_training=False)
    second = build_config(
        rethink_d2.model_zoo.get_config_file("scratch_R50_GN_3x.yaml"), for_training=False
    )
    assert first.OUTPUT_DIR == os.path.join("output", "quickstart", "scratch_R18_GN_shapes")
    assert second.OUTPUT_DIR == os.path.join("output", "scratch_R50_GN_3x")
    given = build_config(QUICKSTART, ["OUTPUT_DIR", "elsewhere"], for_training=False)
    assert given.OUTPUT_DIR == "elsewhere"


def test_command_line_class_count_must_agree_with_the_json(tmp_path):
    json_file, image_root, data = write_coco_dataset(str(tmp_path / "data"))
    opts = ["DATASETS.TRAIN", "('mine_classes',)", "MODEL.ROI_HEADS.NUM_CLASSES"]
    dataset = [["mine_classes", json_file, image_root]]
    count = len(data["categories"])
    assert build_config(QUICKSTART, opts + [str(count)], datasets=dataset).MODEL.ROI_HEADS.NUM_CLASSES == count
    with pytest.raises(ConfigError, match=f"NUM_CLASSES {count + 1} on the command line disagrees"):
        build_config(QUICKSTART, opts + [str(count + 1)], datasets=dataset)


def _break_missing_json(json_file, image_root):
    return os.path.join(os.path.dirname(json_file), "nope.json"), image_root


def _break_missing_folder(json_file, image_root):
    return json_file, image_root + "_nope"


def _break_not_coco(json_file, image_root):
    with open(json_file, "w") as f:
        json.dump({"images": []}, f)
    return json_file, image_root


def _break_missing_images(json_file, image_root):
    names = sorted(os.listdir(image_root))
    for name in names[:2]:
        os.remove(os.path.join(image_root, name))
    return json_file, image_root


@pytest.mark.slow
@pytest.mark.parametrize(
    "damage, expected",
    [
        (_break_missing_json, "nope.json' does not exist"),
        (_break_missing_folder, "_nope' does not exist"),
        (_break_not_coco, "is not a COCO instances file"),
        (_break_missing_images, f"2 of the {NUM_IMAGES} images named in"),
    ],
)
def test_bad_own_data_is_one_line_and_writes_nothing(tmp_path, damage, expected):
    json_file, image_root = damage(*write_coco_dataset(str(tmp_path / "data"))[:2])
    out = tmp_path / "run"
    proc = run_train_net(
        ["--config", QUICKSTART, "--dataset", "broken", json_file, image_root, *TINY_OPTS,
         "DATASETS.TRAIN", "('broken',)", "OUTPUT_DIR", str(out)]
    )
    assert expected in one_error_line(proc)
    assert not out.exists()


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--confidence-threshold", "1.5"], "--confidence-threshold must be in [0, 1]"),
        (["--scale", "0"], "--scale must be > 0"),
        (["--limit", "0"], "--limit must be >= 1"),
    ],
)
def test_predict_bad_flag_is_one_line_and_draws_nothing(tmp_path, capsys, flags, message):
    spec = importlib.util.spec_from_file_location("predict", PREDICT)
    predict = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(predict)
    out = tmp_path / "pred"
    argv = ["--config", QUICKSTART, "--input", "rethink_shapes_val", "--output", str(out), *flags]
    assert predict.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("rethink-d2: error:") and message in err[0]
    assert not out.exists()
