#!/usr/bin/env python
"""
Race training recipes for the same budget in images seen (the paper's Figure 1 as a tool).

    python tools/race.py --images 2400 --evals 4 --seeds 0 1 --output output/race_lr \\
        --recipe base=configs/quickstart/scratch_R18_GN_shapes.yaml \\
        --recipe lr08=configs/quickstart/scratch_R18_GN_shapes.yaml:SOLVER.BASE_LR=0.08 \\
        --target-ap 60

A recipe is NAME=CONFIG[:KEY=VALUE,KEY=VALUE,...]: a config file plus Detectron2/rethink-d2
overrides (commas inside brackets belong to the value: SOLVER.STEPS=(80,95)). Every recipe and
seed is a normal run of tools/train_net.py in a subprocess, with OUTPUT_DIR
OUTPUT/NAME/seed<S>, trained for exactly --images images:

* SOLVER.MAX_ITER = images / SOLVER.IMS_PER_BATCH of the recipe;
* SOLVER.STEPS keep their fractions of the recipe's own MAX_ITER (e.g. the quickstart's
  (450, 550) of 600 become (225, 275) of 300); SOLVER.WARMUP_ITERS is kept as written;
  a recipe with RETHINK.SCHEDULE.SPEC gets SPEC "<images>img" instead (its own rule);
* TEST.EVAL_PERIOD = MAX_ITER / evals: every recipe is evaluated on DATASETS.TEST at the same
  images-seen points, the last one at the end of training.

Writes OUTPUT/race.md, race.csv, race.json (AP at every point, mean and each seed, images seen to
reach --target-ap by linear interpolation between points) and race.png (AP against iterations
and images seen). A run that fails is reported as failed and the race goes on; a run that
already finished with the same command (OUTPUT/NAME/seed<S>/race_run.json) is reused.
"""

import warnings

# Detectron2's imports print deprecation warnings that say nothing about the race.
warnings.filterwarnings("ignore", category=FutureWarning)
warnings.filterwarnings("ignore", message="pkg_resources is deprecated")

import argparse  # noqa: E402
import csv
import json
import logging
import os
import re
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field

from detectron2.engine import DefaultTrainer

from rethink_d2.engine import build_config
from rethink_d2.utils.curves import IMAGES_SEEN_KEY, TASK_TITLES, load_metrics, plot_comparison
from rethink_d2.utils.errors import ConfigError, RethinkError, report_user_error

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_NET = os.path.join(REPO, "tools", "train_net.py")
RUN_RECORD = "race_run.json"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are the one line ``rethink-d2: error: ...`` (exit code 2)."""

    def error(self, message):
        self.exit(report_user_error(f"{message} (see tools/race.py --help)"))


@dataclass
class Recipe:
    """A contestant: its name (also its directory), config file and ``KEY VALUE`` overrides."""

    name: str
    config: str
    overrides: list = field(default_factory=list)


@dataclass
class RunPlan:
    """One training run of the race: a recipe at one seed, fitted to the budget."""

    recipe: Recipe
    seed: int
    run_dir: str
    ims_per_batch: int
    max_iter: int
    eval_period: int
    command: list  # the full tools/train_net.py command line


def split_top_level(text, sep=","):
    """Split ``text`` at ``sep`` outside (), [], {} and quotes."""
    pieces, depth, quote, start = [], 0, None, 0
    for i, ch in enumerate(text):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
            if depth < 0:
                break
        elif ch == sep and depth == 0:
            pieces.append(text[start:i])
            start = i + 1
    if depth != 0 or quote:
        raise ConfigError(f"unbalanced brackets or quotes in {text!r}")
    pieces.append(text[start:])
    return pieces


def parse_recipe(text):
    """Parse one ``--recipe NAME=CONFIG[:KEY=VALUE,KEY=VALUE,...]`` into a :class:`Recipe`."""
    syntax = (
        "write --recipe NAME=CONFIG[:KEY=VALUE,...], e.g. lr08=configs/x.yaml:SOLVER.BASE_LR=0.08"
    )
    name, eq, rest = text.partition("=")
    if not eq or not rest:
        raise ConfigError(f"--recipe {text!r} has no NAME=CONFIG: {syntax}")
    if not _NAME_RE.match(name):
        raise ConfigError(
            f"--recipe name {name!r} must be letters, digits, '_', '.' or '-' (it names the "
            f"run directory): {syntax}"
        )
    config, _, opts = rest.partition(":")
    if not os.path.isfile(config):
        raise ConfigError(
            f"--recipe {name}: config file {config!r} does not exist (check the path)"
        )
    overrides = []
    for item in split_top_level(opts) if opts else []:
        key, eq, value = item.partition("=")
        if not eq or not key.strip() or not value.strip():
            raise ConfigError(f"--recipe {name}: override {item!r} is not KEY=VALUE: {syntax}")
        overrides += [key.strip(), value.strip()]
    return Recipe(name, config, overrides)


def images_to_reach(points, target):
    """
    Images seen when the curve ``points`` ((images, AP), sorted) first reaches ``target`` AP,
    interpolated linearly between the two points around the crossing.

    Returns:
        tuple[float or None, bool]: (images, reached at the first point: images is an upper
        bound); ``(None, False)`` if never reached.
    """
    previous = None
    for images, ap in points:
        if ap >= target:
            if previous is None:
                return float(images), True
            (x0, y0), (x1, y1) = previous, (images, ap)
            return x0 + (x1 - x0) * (target - y0) / (y1 - y0), False
        previous = (images, ap)
    return None, False


def format_reach(images, at_first):
    """``"1234"``, ``"<= 600"`` (reached at the first point) or ``"not reached"``."""
    if images is None:
        return "not reached"
    return f"<= {images:.0f}" if at_first else f"{images:.0f}"


def build_parser():
    """The command line of this tool."""
    parser = _Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--recipe",
        action="append",
        required=True,
        metavar="NAME=CONFIG[:KEY=VALUE,...]",
        help="a contestant; repeat for each (at least one)",
    )
    parser.add_argument(
        "--images", type=int, required=True, metavar="N", help="training budget in images seen"
    )
    parser.add_argument(
        "--evals",
        type=int,
        default=4,
        metavar="K",
        help="evaluations per run, at images N/K, 2N/K, ..., N (default: %(default)s)",
    )
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=[0], metavar="S", help="SEED of each run per "
        "recipe; the table shows the mean and each seed (default: 0)"
    )  # fmt: skip
    parser.add_argument(
        "--output", default="output/race", help="directory of the runs and tables (default: "
        "%(default)s)"
    )  # fmt: skip
    parser.add_argument(
        "--target-ap",
        type=float,
        metavar="X",
        help="report the images seen to reach X AP (default: the first recipe's final mean AP)",
    )
    parser.add_argument(
        "--task",
        default="bbox",
        choices=sorted(TASK_TITLES),
        help="AP that ranks the recipes (default: %(default)s)",
    )
    parser.add_argument(
        "--dataset",
        nargs=3,
        action="append",
        default=[],
        metavar=("NAME", "JSON", "IMAGE_ROOT"),
        help="a COCO-format dataset of your own, passed to tools/train_net.py; use NAME in the "
        "recipes' DATASETS.TRAIN / DATASETS.TEST overrides (repeatable)",
    )
    parser.add_argument(
        "--num-gpus", type=int, default=1, help="processes per run (default: %(default)s)"
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="runs trained at the same time (default: %(default)s, one after the other)",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="check the recipes, print the commands, train nothing",
    )
    return parser


def check_args(args):
    """Raise :class:`ConfigError` for option values out of range."""
    if args.images <= 0:
        raise ConfigError(f"--images must be > 0, got {args.images}")
    if args.evals <= 0:
        raise ConfigError(f"--evals must be >= 1, got {args.evals}")
    if len(set(args.seeds)) != len(args.seeds):
        raise ConfigError(f"--seeds {args.seeds} repeats a seed: give distinct seeds")
    if args.jobs < 1:
        raise ConfigError(f"--jobs must be >= 1, got {args.jobs}")
    if args.num_gpus < 1:
        raise ConfigError(f"--num-gpus must be >= 1, got {args.num_gpus}")
    for name, json_file, image_root in args.dataset:
        if not os.path.isfile(json_file):
            raise ConfigError(f"--dataset {name}: annotation file {json_file!r} does not exist")
        if not os.path.isdir(image_root):
            raise ConfigError(f"--dataset {name}: image directory {image_root!r} does not exist")


def _resolve(recipe, opts, args, context):
    """The frozen config ``tools/train_net.py`` would train, with its effective batch size."""
    # The runs log what resolving says (e.g. "No GPU is visible"); checking here stays quiet.
    package_logger = logging.getLogger("rethink_d2")
    level = package_logger.level
    package_logger.setLevel(logging.ERROR)
    try:
        cfg = build_config(recipe.config, opts, world_size=args.num_gpus, datasets=args.dataset)
        return DefaultTrainer.auto_scale_workers(cfg, args.num_gpus)
    except RethinkError as e:
        raise ConfigError(f"recipe {recipe.name}{context}: {e}") from None
    finally:
        package_logger.setLevel(level)


def _points(images, evals):
    """The images-seen points every recipe is evaluated at."""
    return [images * (k + 1) // evals for k in range(evals)]


def plan_runs(recipes, args):
    """Fit every recipe to the budget; return one :class:`RunPlan` per recipe and seed."""
    plans = []
    for recipe in recipes:
        cfg = _resolve(recipe, recipe.overrides, args, "")
        batch = cfg.SOLVER.IMS_PER_BATCH
        if not cfg.DATASETS.TEST:
            raise ConfigError(
                f"recipe {recipe.name}: DATASETS.TEST is empty, nothing to evaluate: add "
                f'DATASETS.TEST=("NAME",) to the recipe'
            )
        if args.images % (batch * args.evals):
            unit = batch * args.evals
            near = max(unit, round(args.images / unit) * unit)
            raise ConfigError(
                f"recipe {recipe.name}: --images {args.images} is not a multiple of --evals "
                f"{args.evals} x SOLVER.IMS_PER_BATCH {batch} = {unit}, so its evaluations "
                f"cannot fall on the common points: use e.g. --images {near}"
            )
        max_iter = args.images // batch
        eval_period = max_iter // args.evals
        if cfg.RETHINK.SCHEDULE.SPEC:
            # The spec's own rule at the budget, written out: a spec owns TEST.EVAL_PERIOD.
            spec = ["RETHINK.SCHEDULE.SPEC", f"{args.images}img"]
            context = f" at --images {args.images}"
            fitted = _resolve(recipe, recipe.overrides + spec, args, context).SOLVER
            fit = ["TEST.EVAL_PERIOD", str(eval_period), "RETHINK.SCHEDULE.SPEC", '""']
            fit += ["SOLVER.BASE_LR", str(fitted.BASE_LR), "SOLVER.GAMMA", str(fitted.GAMMA)]
            fit += ["SOLVER.WARMUP_ITERS", str(fitted.WARMUP_ITERS)]
            steps = list(fitted.STEPS)
        else:
            old = cfg.SOLVER.MAX_ITER
            steps = sorted({round(s * max_iter / old) for s in cfg.SOLVER.STEPS if s < old})
            fit = ["TEST.EVAL_PERIOD", str(eval_period)]
        steps = [str(s) for s in steps if 0 < s < max_iter]
        steps = "(" + ",".join(steps) + ("," if len(steps) == 1 else "") + ")"
        fit += ["SOLVER.MAX_ITER", str(max_iter), "SOLVER.STEPS", steps]
        final = _resolve(recipe, recipe.overrides + fit, args, f" fitted to --images {args.images}")
        if final.SOLVER.MAX_ITER * final.SOLVER.IMS_PER_BATCH != args.images:
            raise ConfigError(
                f"recipe {recipe.name}: resolves to {final.SOLVER.MAX_ITER} iterations x "
                f"{final.SOLVER.IMS_PER_BATCH} images, not --images {args.images} (is "
                f"SOLVER.REFERENCE_WORLD_SIZE rescaling it? set it to 0)"
            )
        for seed in args.seeds:
            run_dir = os.path.join(args.output, recipe.name, f"seed{seed}")
            command = [sys.executable, TRAIN_NET, "--config", recipe.config]
            if args.num_gpus != 1:
                command += ["--num-gpus", str(args.num_gpus)]
            for name, json_file, image_root in args.dataset:
                command += ["--dataset", name, json_file, image_root]
            command += recipe.overrides + fit + ["SEED", str(seed), "OUTPUT_DIR", run_dir]
            plans.append(RunPlan(recipe, seed, run_dir, batch, max_iter, eval_period, command))
    return plans


def shell_command(plan):
    """The run's command after ``python``, quoted for a POSIX shell."""
    return shlex.join([os.path.relpath(TRAIN_NET)] + plan.command[2:])


def execute(plan):
    """
    Train one run, or reuse it when it already finished with the same command.

    Returns:
        dict: ``returncode``, ``seconds``, ``reused`` and ``error`` (the last error line of a
        failed run's log, else "").
    """
    record_path = os.path.join(plan.run_dir, RUN_RECORD)
    shown = shell_command(plan)
    if os.path.isfile(record_path):
        with open(record_path) as f:
            record = json.load(f)
        if record.get("returncode") == 0 and record.get("command") == shown:
            return dict(record, reused=True)
    os.makedirs(plan.run_dir, exist_ok=True)
    log_path = os.path.join(plan.run_dir, "race_stdout.log")
    start = time.time()
    with open(log_path, "w") as log:
        proc = subprocess.run(plan.command, stdout=log, stderr=subprocess.STDOUT)
    seconds = time.time() - start
    error = ""
    if proc.returncode != 0:
        with open(log_path, errors="replace") as f:
            lines = [line.strip() for line in f if line.strip()]
        user_errors = [line for line in lines if "error:" in line.lower()]
        error = (user_errors or lines or ["no output"])[-1][:300]
    record = {
        "returncode": proc.returncode,
        "seconds": round(seconds, 1),
        "command": shown,
        "error": error,
    }
    with open(record_path, "w") as f:
        json.dump(record, f, indent=1)
    return dict(record, reused=False)


def collect(plans, outcomes, task, evals, images):
    """
    Read every run's metrics and average the seeds of each recipe.

    Returns:
        tuple[list[dict], list[RunMetrics]]: one dict per recipe (its plan, ``seeds``: one dict
        per seed, ``mean``: {images: AP} and ``final_mean``: {task: AP} over the finished seeds)
        and the finished runs' metrics, labelled ``NAME s<seed>``.
    """
    points = _points(images, evals)
    recipes, finished = {}, []
    for plan, outcome in zip(plans, outcomes):
        entry = recipes.setdefault(
            plan.recipe.name,
            {
                "name": plan.recipe.name,
                "config": plan.recipe.config,
                "overrides": plan.recipe.overrides,
                "ims_per_batch": plan.ims_per_batch,
                "max_iter": plan.max_iter,
                "eval_period": plan.eval_period,
                "seeds": [],
            },
        )
        seed = {
            "seed": plan.seed,
            "run_dir": plan.run_dir,
            "status": "ok" if outcome["returncode"] == 0 else "failed",
            "error": outcome["error"],
            "seconds": outcome["seconds"],
            "reused": outcome["reused"],
            "ap": {},
            "final": {},
        }
        entry["seeds"].append(seed)
        if outcome["returncode"] != 0:
            continue
        try:
            run = load_metrics(plan.run_dir, label=f"{plan.recipe.name} s{plan.seed}")
        except Exception as e:  # a finished run without readable metrics is a failed run
            seed.update(status="failed", error=f"metrics.json unreadable: {e}")
            continue
        # A race run feeds exactly IMS_PER_BATCH images per iteration, so images seen are
        # (iteration + 1) x batch; the logged data_seen/images can lag behind that after a run
        # was preempted and resumed between two of its summations.
        for record in run.records.values():
            record.pop(IMAGES_SEEN_KEY, None)
        # A NaN AP (the model detected nothing) counts as 0, so every point stays in the race.
        curves = {t: run.ap_curve(t, nan=0.0) for t in TASK_TITLES}
        curve = {round(run.images_seen(it)): ap for it, ap in curves[task]}
        seed["ap"] = {p: curve[p] for p in points if p in curve}
        seed["final"] = {t: c[-1][1] for t, c in curves.items() if c}
        if len(seed["ap"]) != len(points):
            seed.update(
                status="failed",
                error=f"{task} AP at {sorted(seed['ap'])} images, expected {points}",
            )
        else:
            finished.append(run)
    for entry in recipes.values():
        ok = [s for s in entry["seeds"] if s["status"] == "ok"]
        entry["mean"] = {p: sum(s["ap"][p] for s in ok) / len(ok) for p in points} if ok else {}
        entry["final_mean"] = {
            t: sum(s["final"][t] for s in ok) / len(ok)
            for t in (ok[0]["final"] if ok else {})
            if all(t in s["final"] for s in ok)
        }
    return list(recipes.values()), finished


def add_reach(entries, target):
    """Add ``reach`` (:func:`images_to_reach` of ``target``) to each recipe's mean and seed."""
    for entry in entries:
        entry["reach"] = images_to_reach(sorted(entry["mean"].items()), target)
        for seed in entry["seeds"]:
            seed["reach"] = images_to_reach(sorted(seed["ap"].items()), target)


def _ap(value):
    return "-" if value is None else f"{value:.1f}"


def markdown_table(entries, args, target):
    """The race as a markdown table (mean of the seeds, then each seed) and its recipes."""
    points = _points(args.images, args.evals)
    title = TASK_TITLES[args.task]
    other = "segm" if args.task != "segm" else "bbox"
    header = (
        ["recipe", "seed", "batch x iters"]
        + [f"{title} @ {p} img" for p in points]
        + [f"final {TASK_TITLES[other]}", f"images to reach {target:.1f}", "minutes"]
    )
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for entry in entries:
        shape = f"{entry['ims_per_batch']} x {entry['max_iter']}"
        ok = [s for s in entry["seeds"] if s["status"] == "ok"]
        minutes = sum(s["seconds"] for s in entry["seeds"]) / 60
        if ok:
            cells = [f"**{entry['name']}**", f"mean of {len(ok)}", shape]
            cells += [f"**{_ap(entry['mean'][p])}**" for p in points]
            cells += [_ap(entry["final_mean"].get(other)), f"**{format_reach(*entry['reach'])}**"]
        else:
            cells = [f"**{entry['name']}**", "all failed", shape] + ["-"] * len(points)
            cells += ["-", "failed"]
        lines.append("| " + " | ".join(cells + [f"{minutes:.1f}"]) + " |")
        for seed in entry["seeds"]:
            cells = ["", str(seed["seed"]), shape]
            if seed["status"] == "ok":
                cells += [_ap(seed["ap"][p]) for p in points]
                cells += [_ap(seed["final"].get(other)), format_reach(*seed["reach"])]
            else:
                cells += ["failed"] + ["-"] * (len(points) - 1) + ["-", f"failed: {seed['error']}"]
            lines.append("| " + " | ".join(c.replace("|", "/") for c in cells)
                         + f" | {seed['seconds'] / 60:.1f} |")  # fmt: skip
    lines.append("")
    lines.append(f"Budget {args.images} images, {args.evals} evaluations, seeds {args.seeds}. "
                 f"Recipes:")  # fmt: skip
    for entry in entries:
        overrides = " ".join(entry["overrides"]) or "(none)"
        lines.append(f"- `{entry['name']}`: `{entry['config']}` {overrides}")
    return "\n".join(lines) + "\n"


def write_csv(entries, args, path):
    """One row per recipe mean and per seed."""
    points = _points(args.images, args.evals)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            ["recipe", "seed", "status", "ims_per_batch", "max_iter"]
            + [f"{args.task}_AP@{p}" for p in points]
            + ["images_to_target", "reached_at_first_eval", "seconds", "run_dir", "error"]
        )
        for entry in entries:
            rows = [("mean", entry["mean"], entry["reach"], "ok" if entry["mean"] else "failed",
                     sum(s["seconds"] for s in entry["seeds"]), "", "")]  # fmt: skip
            rows += [
                (
                    s["seed"],
                    s["ap"],
                    s["reach"],
                    s["status"],
                    s["seconds"],
                    s["run_dir"],
                    s["error"],
                )
                for s in entry["seeds"]
            ]
            for seed, ap, reach, status, seconds, run_dir, error in rows:
                writer.writerow(
                    [entry["name"], seed, status, entry["ims_per_batch"], entry["max_iter"]]
                    + [f"{ap[p]:.3f}" if p in ap else "" for p in points]
                    + ["" if reach[0] is None else f"{reach[0]:.1f}", reach[1], f"{seconds:.1f}"]
                    + [run_dir, error]
                )


def main(argv=None):
    """Return 0 when every run finished, 1 when some run failed, 2 on a bad input."""
    args = build_parser().parse_args(argv)
    try:
        check_args(args)
        recipes = [parse_recipe(text) for text in args.recipe]
        names = [r.name for r in recipes]
        if len(set(names)) != len(names):
            raise ConfigError(
                f"recipe names {names} are not unique: name each --recipe differently"
            )
        plans = plan_runs(recipes, args)
    except RethinkError as e:
        return report_user_error(e)
    for plan in plans:
        print(f"[{plan.recipe.name} seed {plan.seed}] python {shell_command(plan)}", flush=True)
    if args.dry_run:
        return 0
    os.makedirs(args.output, exist_ok=True)
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = {pool.submit(execute, plan): plan for plan in plans}
        for done, future in enumerate(as_completed(futures), 1):
            plan, outcome = futures[future], future.result()
            how = "reused" if outcome["reused"] else f"{outcome['seconds'] / 60:.1f} min"
            status = "ok" if outcome["returncode"] == 0 else f"FAILED: {outcome['error']}"
            print(f"[{done}/{len(plans)}] {plan.recipe.name} seed {plan.seed}: {status} ({how})",
                  flush=True)  # fmt: skip
    outcomes = [future.result() for future in futures]
    entries, finished = collect(plans, outcomes, args.task, args.evals, args.images)
    target = args.target_ap
    if target is None:
        first = next((e for e in entries if e["mean"]), None)
        target = first["mean"][args.images] if first else float("nan")
    add_reach(entries, target)
    table = markdown_table(entries, args, target)
    with open(os.path.join(args.output, "race.md"), "w") as f:
        f.write(table)
    write_csv(entries, args, os.path.join(args.output, "race.csv"))
    with open(os.path.join(args.output, "race.json"), "w") as f:
        json.dump(
            {"images": args.images, "evals": args.evals, "seeds": args.seeds, "task": args.task,
             "target_ap": target, "recipes": entries},
            f, indent=1,
        )  # fmt: skip
    written = ["race.md", "race.csv", "race.json"]
    if finished:
        # every seed of a recipe in the recipe's colour
        color_of = {e["name"]: f"C{i % 10}" for i, e in enumerate(entries)}
        colors = [color_of[run.label.rsplit(" s", 1)[0]] for run in finished]
        plot_comparison(finished, os.path.join(args.output, "race.png"), [args.task], colors)
        written.append("race.png")
    print(table)
    print(f"wrote {', '.join(os.path.join(args.output, w) for w in written)}")
    return 0 if all(o["returncode"] == 0 for o in outcomes) and len(finished) == len(plans) else 1


if __name__ == "__main__":
    sys.exit(main())
