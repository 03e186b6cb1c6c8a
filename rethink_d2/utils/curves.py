"""Learning curves: read runs' ``metrics.json`` and ``config.yaml``, compare runs, draw them.

The numbers and pictures of the paper's Figure 1. Figures are drawn with matplotlib's object API
on an Agg canvas (no pyplot), so this module never changes the caller's matplotlib state.
"""

import json
import os
from dataclasses import dataclass, field

import yaml
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .errors import ConfigError

METRICS_FILE = "metrics.json"
CONFIG_FILE = "config.yaml"
# metrics.json key of the cumulative number of training images (rethink_d2.engine.data_seen)
IMAGES_SEEN_KEY = "data_seen/images"
# Detectron2 evaluation tasks whose "<task>/AP" is read, in display order, with their titles.
TASK_TITLES = {"bbox": "box AP", "segm": "mask AP", "keypoints": "keypoint AP"}


@dataclass
class RunMetrics:
    """
    One run's ``OUTPUT_DIR``: ``records`` maps iteration -> every scalar logged at it; the
    schedule fields come from its ``config.yaml`` (None or () without one).
    """

    run_dir: str
    label: str
    records: dict = field(default_factory=dict)
    ims_per_batch: int = None  # SOLVER.IMS_PER_BATCH
    steps: tuple = ()  # SOLVER.STEPS
    max_iter: int = None  # SOLVER.MAX_ITER
    scratch: bool = None  # RETHINK.SCRATCH

    def ap_tasks(self):
        """The tasks of :data:`TASK_TITLES` with at least one AP in this run."""
        return _evaluated_tasks([self])

    def ap_curve(self, task, nan=None):
        """
        (iteration, AP in percent) of ``task`` ("bbox", "segm" or "keypoints"), by iteration.
        A NaN AP (the model detected nothing) becomes ``nan``; None leaves the point out.
        """
        curve = []
        for it, record in sorted(self.records.items()):
            ap = _task_ap(record, task)
            if ap is not None and ap != ap:
                ap = nan
            if ap is not None:
                curve.append((it, ap))
        return curve

    def loss_curve(self, key="total_loss"):
        """(iteration, value) of every record holding the scalar ``key``."""
        return [(it, float(r[key])) for it, r in sorted(self.records.items()) if key in r]

    def images_seen(self, iteration):
        """
        Images trained on after ``iteration`` (counted from 0): the logged ``data_seen/images``
        (interpolated between records) if any, else ``(iteration + 1) * SOLVER.IMS_PER_BATCH``.
        """
        if self.max_iter:
            # Detectron2 logs the final evaluation at iteration MAX_ITER: after MAX_ITER - 1
            iteration = min(iteration, self.max_iter - 1)
        logged = [
            (it, float(r[IMAGES_SEEN_KEY]))
            for it, r in sorted(self.records.items())
            if IMAGES_SEEN_KEY in r
        ]
        if logged:
            return _interpolate(logged, iteration)
        if not self.ims_per_batch:
            raise ConfigError(
                f"{self.run_dir}: metrics.json has no {IMAGES_SEEN_KEY!r} and there is no "
                f"{CONFIG_FILE} with SOLVER.IMS_PER_BATCH; pass a complete OUTPUT_DIR"
            )
        return float((iteration + 1) * self.ims_per_batch)

    def lr_drops(self):
        """The ``SOLVER.STEPS`` before ``MAX_ITER``."""
        return [s for s in self.steps if self.max_iter is None or s < self.max_iter]


def load_metrics(run_dir, label=None):
    """
    Read ``run_dir/metrics.json`` (Detectron2's JSON lines) and, if present, its config.yaml.

    Records of one iteration are merged (Detectron2 writes evaluation results in records of their
    own, not always in iteration order); a key logged twice for one iteration, as after resuming
    from a checkpoint, keeps the later value. ``label`` defaults to the directory's base name.

    Returns:
        RunMetrics
    """
    path = os.path.join(run_dir, METRICS_FILE)
    if not os.path.isfile(path):
        raise ConfigError(
            f"{run_dir!r} has no {METRICS_FILE}: pass the OUTPUT_DIR of a training run"
        )
    run = RunMetrics(run_dir=run_dir, label=label or os.path.basename(os.path.normpath(run_dir)))
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ConfigError(f"{path}:{lineno} is not JSON ({e.msg}); is it a metrics.json?")
            if isinstance(record, dict) and "iteration" in record:
                run.records.setdefault(int(record["iteration"]), {}).update(record)
    path = os.path.join(run_dir, CONFIG_FILE)
    if os.path.isfile(path):
        with open(path) as f:
            try:
                cfg = yaml.safe_load(f) or {}
            except yaml.YAMLError as e:
                raise ConfigError(f"{path} is not valid YAML ({e}); is it a run's config.yaml?")
        solver = cfg.get("SOLVER") or {}
        run.ims_per_batch = solver.get("IMS_PER_BATCH")
        run.steps = tuple(int(s) for s in solver.get("STEPS") or ())
        run.max_iter = solver.get("MAX_ITER")
        scratch = (cfg.get("RETHINK") or {}).get("SCRATCH")
        run.scratch = None if scratch is None else bool(scratch)
    return run


def best_ap(curve):
    """(best AP, first iteration reaching it) of an (iteration, AP) curve; None if empty."""
    if not curve:
        return None
    ap, neg_it = max((ap, -it) for it, ap in curve)
    return ap, -neg_it


def first_match_iteration(curve, target, tolerance=0.5):
    """The first iteration of ``curve`` with ``AP >= target - tolerance``; None if never."""
    for it, ap in sorted(curve):
        if ap >= target - tolerance:
            return it
    return None


def plot_comparison(runs, out_png, tasks=None, colors=None):
    """
    Draw AP against iterations (left) and images seen (right) into ``out_png``, one row per task
    (default: every task some run evaluated), LR drops (``SOLVER.STEPS``) as dotted lines; return
    the tasks drawn. ``colors``: one matplotlib colour per run (default: one each).
    """
    if tasks is None:
        tasks = _evaluated_tasks(runs)
    if not tasks:
        raise ConfigError(
            "none of the runs has evaluation results (bbox/AP, segm/AP or keypoints/AP) in its "
            "metrics.json: train with TEST.EVAL_PERIOD > 0 (or RETHINK.SCHEDULE.EVAL_PERIOD)"
        )
    fig = Figure(figsize=(11, 3.6 * len(tasks)))
    axes = fig.subplots(len(tasks), 2, squeeze=False)
    colors = colors or [f"C{i}" for i in range(len(runs))]
    for (ax_it, ax_img), task in zip(axes, tasks):
        for run, color in zip(runs, colors):
            curve = run.ap_curve(task)
            if not curve:
                continue
            its, aps = zip(*curve)
            imgs = [run.images_seen(it) for it in its]
            ax_it.plot(its, aps, "-o", color=color, markersize=3, label=run.label)
            ax_img.plot(imgs, aps, "-o", color=color, markersize=3, label=run.label)
            for step in run.lr_drops():
                ax_it.axvline(step, color=color, linestyle=":", linewidth=1)
                ax_img.axvline(run.images_seen(step), color=color, linestyle=":", linewidth=1)
        title = TASK_TITLES.get(task, task)
        ax_it.set(xlabel="iterations", ylabel=title, title=f"{title} vs iterations")
        ax_img.set(xlabel="images seen", ylabel=title, title=f"{title} vs images seen")
        for ax in (ax_it, ax_img):
            ax.grid(True, alpha=0.3)
            ax.legend(loc="lower right", fontsize="small")
    fig.text(0.01, 0.005, "dotted lines: LR drops (SOLVER.STEPS)", fontsize="small")
    _save(fig, out_png)
    return tasks


def plot_single_run(run_dir, out_png):
    """
    Draw one run's training loss (left) and evaluation AP (right, left out if the run never
    evaluated) against iterations into ``out_png``; return ``out_png``.
    """
    run = load_metrics(run_dir)
    loss = run.loss_curve("total_loss")
    tasks = run.ap_tasks()
    if not loss and not tasks:
        raise ConfigError(f"{run_dir}/metrics.json holds no total_loss and no AP to draw")
    panels = bool(loss) + bool(tasks)
    fig = Figure(figsize=(5.5 * panels, 3.8))
    axes = list(fig.subplots(1, panels, squeeze=False)[0])
    if loss:
        ax = axes.pop(0)
        marker = "o" if len(loss) < 50 else None  # a short run shows its few records as dots
        ax.plot(*zip(*loss), color="C0", marker=marker, markersize=3, linewidth=1)
        ax.set(xlabel="iterations", ylabel="total_loss", title="training loss")
    if tasks:
        ax = axes.pop(0)
        for i, task in enumerate(tasks):
            label = TASK_TITLES.get(task, task)
            ax.plot(*zip(*run.ap_curve(task)), "-o", color=f"C{i + 1}", markersize=3, label=label)
        ax.set(xlabel="iterations", ylabel="AP", title="evaluation AP")
        ax.legend(loc="lower right", fontsize="small")
    for ax in fig.axes:
        for step in run.lr_drops():
            ax.axvline(step, color="grey", linestyle=":", linewidth=1)
        ax.grid(True, alpha=0.3)
    fig.suptitle(run.label, fontsize="medium")
    _save(fig, out_png)
    return out_png


def _evaluated_tasks(runs):
    return [t for t in TASK_TITLES if any(r.ap_curve(t) for r in runs)]


def _task_ap(record, task):
    """AP of ``task`` in one metrics record ("bbox/AP" or "<dataset>/bbox/AP"), else None."""
    for key, value in record.items():
        if key == f"{task}/AP" or key.endswith(f"/{task}/AP"):
            try:
                return float(value)
            except (TypeError, ValueError):
                return None
    return None


def _interpolate(points, x):
    """Piecewise-linear in the logged points; proportional to iterations outside them."""
    first_it, first_v = points[0]
    if x <= first_it:
        return first_v * (x + 1) / (first_it + 1)
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if x <= x1:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    last_it, last_v = points[-1]
    return last_v * (x + 1) / (last_it + 1)


def _save(fig, out_png):
    """Write ``fig`` as PNG with the Agg canvas (independent of the pyplot backend)."""
    fig.tight_layout(rect=(0, 0.02, 1, 1))
    FigureCanvasAgg(fig)
    os.makedirs(os.path.dirname(os.path.abspath(out_png)), exist_ok=True)
    fig.savefig(out_png, format="png", dpi=100)
