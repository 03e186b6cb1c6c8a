"""tools/plot_curves.py and rethink_d2.utils.curves: metrics.json -> AP curves, table, PNG."""

import importlib.util
import json
import math
import os
import re

import numpy as np
import pytest
from PIL import Image

from rethink_d2.data.shapes import ensure_shapes_dataset
from rethink_d2.utils.curves import (
    best_ap,
    first_match_iteration,
    load_metrics,
    plot_comparison,
    plot_single_run,
)
from rethink_d2.utils.errors import ConfigError

from conftest import QUICKSTART, REPO, TINY_OPTS, run_train_net

_spec = importlib.util.spec_from_file_location(
    "plot_curves", os.path.join(REPO, "tools", "plot_curves.py")
)
plot_curves = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(plot_curves)


def write_run(path, records, ims_per_batch=2, steps=(40,), max_iter=60, scratch=True):
    """A run directory as Detectron2 leaves it: metrics.json (JSON lines) and config.yaml."""
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "metrics.json"), "w") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")  # NaN is written as Detectron2 does
    if ims_per_batch is not None:
        with open(os.path.join(path, "config.yaml"), "w") as f:
            f.write(
                f"SOLVER:\n  IMS_PER_BATCH: {ims_per_batch}\n  STEPS: {list(steps)}\n"
                f"  MAX_ITER: {max_iter}\nRETHINK:\n  SCRATCH: {str(scratch).lower()}\n"
            )
    return str(path)


# Detectron2 writes evaluation records when its writer next flushes: after later iterations.
SCRATCH_RECORDS = [
    {"iteration": 19, "total_loss": 3.0, "data_seen/images": 40.0, "lr": 0.02},
    {"iteration": 39, "total_loss": 2.5, "data_seen/images": 80.0, "lr": 0.02},
    {"iteration": 19, "bbox/AP": 10.0, "segm/AP": 8.0},
    {"iteration": 59, "total_loss": 2.0, "data_seen/images": 120.0, "lr": 0.002},
    {"iteration": 39, "bbox/AP": 20.0, "segm/AP": float("nan")},
    {"iteration": 59, "bbox/AP": 20.0, "segm/AP": 12.0},
]
PRETRAINED_RECORDS = [
    {"iteration": 19, "total_loss": 1.0},
    {"iteration": 19, "bbox/AP": 18.0, "segm/AP": 15.0},
    {"iteration": 39, "total_loss": 0.9},
    {"iteration": 39, "bbox/AP": 19.5, "segm/AP": 14.0},
]


@pytest.fixture
def runs(tmp_path):
    scratch = load_metrics(write_run(tmp_path / "scratch", SCRATCH_RECORDS))
    pretrained = load_metrics(
        write_run(tmp_path / "pretrained", PRETRAINED_RECORDS, steps=(30,), max_iter=40,
                  scratch=False)
    )  # fmt: skip
    return scratch, pretrained


def test_load_metrics_merges_records_and_drops_nan(runs):
    scratch, _ = runs
    assert scratch.ap_curve("bbox") == [(19, 10.0), (39, 20.0), (59, 20.0)]
    assert scratch.ap_curve("segm") == [(19, 8.0), (59, 12.0)]  # NaN: no detections, no point
    assert scratch.ap_curve("keypoints") == []
    assert scratch.ap_tasks() == ["bbox", "segm"]
    assert scratch.loss_curve() == [(19, 3.0), (39, 2.5), (59, 2.0)]
    assert (scratch.ims_per_batch, scratch.steps, scratch.max_iter, scratch.scratch) == (
        2,
        (40,),
        60,
        True,
    )


def test_best_ap_and_first_match():
    curve = [(19, 10.0), (39, 20.0), (59, 20.0)]
    assert best_ap(curve) == (20.0, 39)  # a tie keeps the first iteration reaching it
    assert best_ap([]) is None
    assert first_match_iteration(curve, 25.0, tolerance=5.0) == 39
    assert first_match_iteration(curve, 25.0, tolerance=0.0) is None
    assert first_match_iteration(curve, 10.0, tolerance=0.0) == 19


def test_images_seen_logged_interpolated_or_from_the_batch(tmp_path, runs):
    scratch, pretrained = runs
    assert scratch.images_seen(39) == 80.0  # logged data_seen/images
    assert scratch.images_seen(29) == 60.0  # between two records
    assert scratch.images_seen(9) == 20.0  # before the first record: proportional
    assert pretrained.images_seen(39) == 80.0  # no data_seen: (iteration + 1) * IMS_PER_BATCH
    bare = load_metrics(write_run(tmp_path / "bare", PRETRAINED_RECORDS, ims_per_batch=None))
    with pytest.raises(ConfigError, match="IMS_PER_BATCH"):
        bare.images_seen(19)


def test_a_resumed_run_keeps_the_later_values(tmp_path):
    records = SCRATCH_RECORDS + [{"iteration": 39, "bbox/AP": 21.0}]  # redone after resuming
    run = load_metrics(write_run(tmp_path / "resumed", records))
    assert run.ap_curve("bbox") == [(19, 10.0), (39, 21.0), (59, 20.0)]


def test_reference_is_the_pretrained_run_unless_named(runs):
    scratch, pretrained = runs
    assert plot_curves.pick_reference([scratch, pretrained]) is pretrained
    assert plot_curves.pick_reference([scratch, pretrained], "scratch") is scratch
    with pytest.raises(ConfigError, match="not one of the run labels"):
        plot_curves.pick_reference([scratch, pretrained], "nope")


def test_comparison_table(runs):
    scratch, pretrained = runs
    rows = plot_curves.comparison_rows([scratch, pretrained], pretrained, 0.5, ["bbox", "segm"])
    by_key = {(r["task"], r["label"]): r for r in rows}
    assert by_key["bbox", "scratch"] == dict(
        task="bbox", label="scratch", best_ap=20.0, best_iter=39, match_iter=39
    )
    assert by_key["bbox", "pretrained"]["match_iter"] is None
    assert by_key["segm", "scratch"]["match_iter"] is None  # 12 < 15 - 0.5
    text = plot_curves.format_rows(rows, "pretrained", 0.5)
    assert "matches pretrained best-0.5 at iter" in text
    assert re.search(r"bbox\s+scratch\s+20\.00\s+39\s+39", text)
    assert re.search(r"segm\s+pretrained\s+15\.00\s+19\s+\(reference\)", text)


def assert_png(path, min_size):
    assert os.path.isfile(path)
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size[0] >= min_size[0] and image.size[1] >= min_size[1]
        pixels = np.asarray(image.convert("L"), dtype=np.float32)
    assert pixels.std() > 5  # something is drawn


def test_plots_from_synthetic_runs(tmp_path, runs):
    out = tmp_path / "sub" / "curves.png"
    assert plot_comparison(list(runs), str(out)) == ["bbox", "segm"]
    assert_png(out, (1000, 600))  # 2 rows (box, mask) x 2 columns (iterations, images)
    single = tmp_path / "single.png"
    plot_single_run(runs[0].run_dir, str(single))
    assert_png(single, (1000, 300))  # loss and AP panels


@pytest.mark.parametrize(
    "argv, message",
    [
        (["{missing}", "{scratch}"], "has no metrics.json"),
        (["{noap}", "{noap2}"], "TEST.EVAL_PERIOD"),
        (["{scratch}", "{pretrained}", "--reference", "nope"], "not one of the run labels"),
    ],
)
def test_cli_user_errors_are_one_line(tmp_path, capsys, argv, message):
    dirs = dict(
        missing=str(tmp_path / "missing"),
        scratch=write_run(tmp_path / "scratch", SCRATCH_RECORDS),
        pretrained=write_run(tmp_path / "pretrained", PRETRAINED_RECORDS),
        noap=write_run(tmp_path / "noap", [{"iteration": 1, "total_loss": 1.0}]),
        noap2=write_run(tmp_path / "noap2", [{"iteration": 1, "total_loss": 1.0}]),
    )
    argv = [a.format(**dirs) for a in argv] + ["--out", str(tmp_path / "x.png")]
    assert plot_curves.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("rethink-d2: error:") and message in err[0]
    assert not (tmp_path / "x.png").exists()


def test_cli_needs_two_runs_and_matching_labels(tmp_path):
    run = write_run(tmp_path / "scratch", SCRATCH_RECORDS)
    with pytest.raises(SystemExit) as e:
        plot_curves.main([run])
    assert e.value.code == 2
    with pytest.raises(SystemExit):
        plot_curves.main([run, run, "--labels", "a"])


# ---- two tiny real runs: from scratch, then "pre-trained" from the first run's weights ----
REAL_OPTS = list(TINY_OPTS) + [
    "SOLVER.MAX_ITER", "6",
    "SOLVER.STEPS", "(4,)",
    "TEST.EVAL_PERIOD", "3",
    "DATASETS.TEST", "('rethink_shapes_val@40',)",
    "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0",  # a 6-iteration model scores low: keep all
]  # fmt: skip


def independent_bbox_curve(run_dir):
    """bbox/AP by iteration straight from metrics.json, without rethink_d2."""
    curve = {}
    with open(os.path.join(run_dir, "metrics.json")) as f:
        for line in f:
            record = json.loads(line)
            ap = record.get("bbox/AP")
            if ap is not None and not math.isnan(ap):
                curve[record["iteration"]] = ap
    return sorted(curve.items())


def test_two_tiny_real_runs(tmp_path, capsys):
    # draw the built-in shapes data into the session cache before its "@40" subset is read
    ensure_shapes_dataset("val")
    scratch_dir, pretrained_dir = str(tmp_path / "scratch"), str(tmp_path / "pretrained")
    proc = run_train_net(
        ["--config", QUICKSTART, *REAL_OPTS, "RETHINK.PLOT_LEARNING_CURVE", "True",
         "OUTPUT_DIR", scratch_dir],
        timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_png(os.path.join(scratch_dir, "learning_curve.png"), (800, 300))  # Trainer's hook
    proc = run_train_net(
        ["--config", QUICKSTART, *REAL_OPTS, "RETHINK.SCRATCH", "False",
         "MODEL.WEIGHTS", os.path.join(scratch_dir, "model_final.pth"),
         "OUTPUT_DIR", pretrained_dir],
        timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]

    out = str(tmp_path / "curves.png")
    argv = [scratch_dir, pretrained_dir, "--labels", "scratch", "pretrained", "--out", out]
    assert plot_curves.main(argv + ["--tolerance", "0"]) == 0
    table = capsys.readouterr().out
    assert_png(out, (1000, 600))  # box and mask AP rows

    # the printed numbers are those of the metrics files
    scratch_curve = independent_bbox_curve(scratch_dir)
    pretrained_curve = independent_bbox_curve(pretrained_dir)
    assert len(scratch_curve) >= 2 and len(pretrained_curve) >= 2  # a curve, not a point
    rows = {}
    for line in table.splitlines():
        cells = re.split(r"\s{2,}", line.strip())
        if cells[0] == "bbox":
            rows[cells[1]] = cells[2:]
    ref_best = max(ap for _, ap in pretrained_curve)
    for label, curve in (("scratch", scratch_curve), ("pretrained", pretrained_curve)):
        best = max(ap for _, ap in curve)
        best_iter = min(it for it, ap in curve if ap == best)
        assert rows[label][0] == f"{best:.2f}" and rows[label][1] == str(best_iter)
    match = next((str(it) for it, ap in scratch_curve if ap >= ref_best), "-")
    assert rows["scratch"][2] == match  # tolerance 0
    assert rows["pretrained"][2] == "(reference)"  # RETHINK.SCRATCH False in its config.yaml
