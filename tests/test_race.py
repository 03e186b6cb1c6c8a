"""tools/race.py: recipe syntax, images-to-reach, the tables, and a tiny race end to end."""

import csv
import importlib.util
import json
import os
import subprocess
import sys

import pytest

from rethink_d2.utils.errors import ConfigError

from conftest import QUICKSTART, REPO, TINY_OPTS

_spec = importlib.util.spec_from_file_location("race", os.path.join(REPO, "tools", "race.py"))
race = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(race)

# TINY_OPTS as recipe overrides, evaluating on 20 val images (a nested subset of the 150).
TINY_RECIPE = ",".join(f"{k}={v}" for k, v in zip(TINY_OPTS[::2], TINY_OPTS[1::2]))
TINY_RECIPE += ',DATASETS.TEST=("rethink_shapes_val@20",),MODEL.RPN.POST_NMS_TOPK_TEST=16'


def run_race(args, timeout=600):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    return subprocess.run(
        [sys.executable, os.path.join(REPO, "tools", "race.py"), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_parse_recipe_splits_overrides_outside_brackets():
    recipe = race.parse_recipe(f"fast={QUICKSTART}:SOLVER.STEPS=(80,95),SOLVER.BASE_LR=0.08")
    assert recipe.name == "fast"
    assert recipe.config == QUICKSTART
    assert recipe.overrides == ["SOLVER.STEPS", "(80,95)", "SOLVER.BASE_LR", "0.08"]
    assert race.parse_recipe(f"base={QUICKSTART}").overrides == []


@pytest.mark.parametrize(
    "text, message",
    [
        (QUICKSTART, "has no NAME=CONFIG"),
        (f"a/b={QUICKSTART}", "must be letters"),
        ("x=configs/nope.yaml", "does not exist"),
        (f"x={QUICKSTART}:SOLVER.BASE_LR", "is not KEY=VALUE"),
        (f"x={QUICKSTART}:SOLVER.STEPS=(1,2", "unbalanced"),
    ],
)
def test_parse_recipe_rejects_bad_syntax(text, message):
    with pytest.raises(ConfigError, match=message):
        race.parse_recipe(text)


def test_images_to_reach_interpolates_between_points():
    points = [(600, 10.0), (1200, 30.0), (1800, 50.0)]
    assert race.images_to_reach(points, 40.0) == (1500.0, False)
    assert race.images_to_reach(points, 30.0) == (1200.0, False)
    assert race.images_to_reach(points, 5.0) == (600.0, True)
    assert race.images_to_reach(points, 50.1) == (None, False)
    assert race.format_reach(600.0, True) == "<= 600"
    assert race.format_reach(None, False) == "not reached"


def _fake_run(run_dir, aps, batch=4):
    """A finished run directory: eval records at the last iteration of each quarter."""
    os.makedirs(run_dir)
    with open(os.path.join(run_dir, "metrics.json"), "w") as f:
        for k, ap in enumerate(aps, 1):
            it = 10 * k - 1
            f.write(json.dumps({"iteration": it, "data_seen/images": (it + 1) * batch}) + "\n")
            f.write(json.dumps({"iteration": it, "bbox/AP": ap, "segm/AP": ap / 2}) + "\n")
    with open(os.path.join(run_dir, "config.yaml"), "w") as f:
        f.write(f"SOLVER:\n  IMS_PER_BATCH: {batch}\n  STEPS: [30]\n  MAX_ITER: 40\n")


def test_collect_averages_seeds_and_reports_failures(tmp_path):
    recipe = race.Recipe("a", QUICKSTART, [])
    plans = [race.RunPlan(recipe, s, str(tmp_path / f"seed{s}"), 4, 40, 10, []) for s in (0, 1, 2)]
    _fake_run(plans[0].run_dir, [10.0, 20.0, 30.0, 40.0])
    _fake_run(plans[1].run_dir, [20.0, 30.0, 40.0, 50.0])
    outcomes = [{"returncode": 0, "error": "", "seconds": 1.0, "reused": False}] * 2
    outcomes.append({"returncode": 1, "error": "boom", "seconds": 1.0, "reused": False})
    entries, finished = race.collect(plans, outcomes, "bbox", evals=4, images=160)
    assert [r.label for r in finished] == ["a s0", "a s1"]
    (entry,) = entries
    assert entry["mean"] == {40: 15.0, 80: 25.0, 120: 35.0, 160: 45.0}
    assert entry["final_mean"] == {"bbox": 45.0, "segm": 22.5}
    assert [s["status"] for s in entry["seeds"]] == ["ok", "ok", "failed"]
    race.add_reach(entries, 40.0)
    assert entry["reach"] == (140.0, False)  # halfway between 35 AP at 120 and 45 AP at 160
    assert [s["reach"] for s in entry["seeds"][:2]] == [(160.0, False), (120.0, False)]
    args = race.build_parser().parse_args(
        ["--recipe", f"a={QUICKSTART}", "--images", "160", "--seeds", "0", "1", "2"]
    )
    table = race.markdown_table(entries, args, 40.0)
    cells = ["**a**", "mean of 2", "4 x 40", "**15.0**", "**25.0**", "**35.0**", "**45.0**"]
    mean = "| " + " | ".join(cells + ["22.5", "**140**"]) + " |"
    assert mean in table
    assert "failed: boom" in table


@pytest.mark.parametrize(
    "args, message",
    [
        (["--images", "0"], "--images must be > 0"),
        (["--images", "100"], "is not a multiple of --evals 4 x SOLVER.IMS_PER_BATCH 8 = 32"),
        (["--images", "64", "--seeds", "1", "1"], "repeats a seed"),
        (["--images", "64", "--recipe", f"q={QUICKSTART}"], "are not unique"),
        (["--images", "64", "--recipe", f"r={QUICKSTART}:SOLVER.NOPE=1"], "recipe r: "),
        (["--images", "64", "--recipe", f"r={QUICKSTART}:DATASETS.TEST=()"], "TEST is empty"),
        (["--images", "64", "--bogus"], "unrecognized arguments"),
    ],
)
def test_bad_input_is_one_line_exit_2(args, message, capsys):
    argv = ["--recipe", f"q={QUICKSTART}", "--dry-run", *args]
    try:
        code = race.main(argv)
    except SystemExit as e:  # argparse's own errors
        code = e.code
    assert code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rethink-d2: error: "), lines
    assert message in lines[0]


def test_bad_input_from_the_command_line_has_no_traceback():
    proc = run_race(["--recipe", f"q={QUICKSTART}", "--images", "100", "--dry-run"])
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "rethink-d2: error: recipe q: --images 100 is not a multiple of --evals 4 x "
        "SOLVER.IMS_PER_BATCH 8 = 32, so its evaluations cannot fall on the common points: use "
        "e.g. --images 96"
    ]


def test_dry_run_fits_every_recipe_to_the_budget(capsys):
    code = race.main(
        ["--images", "2400", "--evals", "4", "--dry-run", "--recipe", f"base={QUICKSTART}",
         "--recipe", f"b4={QUICKSTART}:SOLVER.IMS_PER_BATCH=4"]
    )  # fmt: skip
    assert code == 0
    base, b4 = capsys.readouterr().out.strip().splitlines()
    # 2400 images: 300 iterations at batch 8, 600 at batch 4; steps keep their 3/4 and 11/12
    assert "TEST.EVAL_PERIOD 75 SOLVER.MAX_ITER 300 SOLVER.STEPS '(225,275)' SEED 0" in base
    assert "TEST.EVAL_PERIOD 150 SOLVER.MAX_ITER 600 SOLVER.STEPS '(450,550)' SEED 0" in b4


def test_dry_run_writes_out_a_schedule_spec_at_the_budget(capsys):
    # configs/scratch_R50_GN_3x.yaml: SPEC "3x" in the paper's tail mode at batch 16; 4.8M images
    # are 300k iterations with the LR dropped at the last 60k and 20k
    config = os.path.join(REPO, "configs", "scratch_R50_GN_3x.yaml")
    assert race.main(["--images", "4800000", "--dry-run", "--recipe", f"r50={config}"]) == 0
    (line,) = capsys.readouterr().out.strip().splitlines()
    assert "TEST.EVAL_PERIOD 75000 RETHINK.SCHEDULE.SPEC '\"\"'" in line
    assert "SOLVER.MAX_ITER 300000 SOLVER.STEPS '(240000,280000)'" in line


@pytest.mark.slow
def test_tiny_race_writes_consistent_table_png_and_reach(tmp_path):
    out = tmp_path / "race"
    proc = run_race(
        ["--images", "16", "--evals", "2", "--seeds", "0", "--output", str(out),
         "--recipe", f"tiny={QUICKSTART}:{TINY_RECIPE}",
         # accepted by the config check, fails when its model is built: reported, race goes on
         "--recipe", f"broken={QUICKSTART}:{TINY_RECIPE},MODEL.ROI_BOX_HEAD.NAME=NoSuchHead"]
    )  # fmt: skip
    assert proc.returncode == 1, proc.stdout + proc.stderr  # one run failed
    for name in ("race.md", "race.csv", "race.json", "race.png"):
        assert (out / name).is_file(), name
    assert (out / "race.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    result = json.loads((out / "race.json").read_text())
    tiny, broken = result["recipes"]
    assert (tiny["name"], broken["name"]) == ("tiny", "broken")
    assert [s["status"] for s in broken["seeds"]] == ["failed"]
    assert "NoSuchHead" in broken["seeds"][0]["error"]
    (seed,) = tiny["seeds"]
    assert seed["status"] == "ok", seed["error"]
    assert (tiny["ims_per_batch"], tiny["max_iter"], tiny["eval_period"]) == (2, 8, 4)
    assert sorted(seed["ap"], key=int) == ["8", "16"]  # evaluated at 8 and 16 images seen
    # no --target-ap: the target is the first recipe's final mean AP, reached by the end at the
    # latest, and the reported images are recomputed from the table's own points
    assert result["target_ap"] == pytest.approx(tiny["mean"]["16"])
    points = sorted((int(k), v) for k, v in tiny["mean"].items())
    reach = race.images_to_reach(points, result["target_ap"])
    assert tuple(tiny["reach"]) == pytest.approx(reach) and reach[0] <= 16
    # each run is a normal tools/train_net.py run: its config.yaml has the fitted schedule
    config = (out / "tiny" / "seed0" / "config.yaml").read_text()
    assert "MAX_ITER: 8" in config and "EVAL_PERIOD: 4" in config
    with open(out / "race.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["recipe"], r["seed"], r["status"]) for r in rows] == [
        ("tiny", "mean", "ok"), ("tiny", "0", "ok"), ("broken", "mean", "failed"),
        ("broken", "0", "failed"),
    ]  # fmt: skip
    assert float(rows[1]["bbox_AP@16"]) == pytest.approx(seed["ap"]["16"], abs=1e-3)
    table = (out / "race.md").read_text()
    assert f"images to reach {result['target_ap']:.1f}" in table
    assert f"**{race.format_reach(*reach)}**" in table and "failed:" in table
    assert table in proc.stdout
