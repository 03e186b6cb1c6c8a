"""Read a training run's ``metrics.json`` and ``config.yaml`` into AP curves, and compare runs.

The numbers behind the paper's Figure 1: AP against iterations and against images seen, each
run's best AP, and the first iteration at which one run (from scratch) matches another run's
(pre-trained) best AP.
"""

import json
import os
from dataclasses import dataclass, field

import yaml

from .errors import ConfigError

METRICS_FILE = "metrics.json"
CONFIG_FILE = "config.yaml"
# metrics.json key of the cumulative number of training images (rethink_d2.engine.data_seen)
IMAGES_SEEN_KEY = "data_seen/images"
# Detectron2 evaluation tasks whose "<task>/AP" is plotted, in display order.
AP_TASKS = ("bbox", "segm", "keypoints")


@dataclass
class RunMetrics:
    """
    What one run's output directory says about its training.

    Attributes:
        run_dir (str): the run's ``OUTPUT_DIR``.
        label (str): name used in legends and tables.
        records (dict[int, dict]): iteration -> every scalar logged at that iteration.
        ims_per_batch (int or None): ``SOLVER.IMS_PER_BATCH`` from ``config.yaml``.
        steps (tuple[int]): ``SOLVER.STEPS`` (LR drops) from ``config.yaml``.
        max_iter (int or None): ``SOLVER.MAX_ITER`` from ``config.yaml``.
        scratch (bool or None): ``RETHINK.SCRATCH`` from ``config.yaml``.
    """

    run_dir: str
    label: str
    records: dict = field(default_factory=dict)
    ims_per_batch: int = None
    steps: tuple = ()
    max_iter: int = None
    scratch: bool = None

    def ap_tasks(self):
        """
        Returns:
            list[str]: the tasks of :data:`AP_TASKS` that have at least one AP in this run.
        """
        return [t for t in AP_TASKS if self.ap_curve(t)]

    def ap_curve(self, task):
        """
        Args:
            task (str): "bbox", "segm" or "keypoints".

        Returns:
            list[tuple[int, float]]: (iteration, AP) sorted by iteration; AP in percent as
            Detectron2's evaluators report it. Empty if the run never evaluated ``task``.
        """
        curve = []
        for it in sorted(self.records):
            ap = _task_ap(self.records[it], task)
            if ap is not None:
                curve.append((it, ap))
        return curve

    def loss_curve(self, key="total_loss"):
        """
        Args:
            key (str): a scalar logged by the trainer.

        Returns:
            list[tuple[int, float]]: (iteration, value) for every record holding ``key``.
        """
        return [(it, float(r[key])) for it, r in sorted(self.records.items()) if key in r]

    def images_seen(self, iteration):
        """
        Images the run had trained on after ``iteration`` (Detectron2's iterations count from 0).

        Uses the logged ``data_seen/images`` when present (interpolating between records),
        else ``(iteration + 1) * SOLVER.IMS_PER_BATCH``.

        Args:
            iteration (int): an iteration of the run.

        Returns:
            float: images seen.

        Raises:
            ConfigError: when neither ``data_seen/images`` nor ``config.yaml`` is available.
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


def load_metrics(run_dir, label=None):
    """
    Read ``run_dir/metrics.json`` (JSON lines, as Detectron2's ``JSONWriter`` writes it) and
    ``run_dir/config.yaml`` (optional: schedule and batch size).

    Records of one iteration are merged (Detectron2 writes evaluation results in a record of
    their own, not always in iteration order); when a key appears twice for one iteration, as
    after resuming from a checkpoint, the later value wins.

    Args:
        run_dir (str): a run's ``OUTPUT_DIR``.
        label (str or None): display name; defaults to the directory's base name.

    Returns:
        RunMetrics

    Raises:
        ConfigError: when ``run_dir`` has no ``metrics.json`` or a line of it is not JSON.
    """
    path = os.path.join(run_dir, METRICS_FILE)
    if not os.path.isfile(path):
        raise ConfigError(
            f"{run_dir!r} has no {METRICS_FILE}: pass the OUTPUT_DIR of a training run"
        )
    records = {}
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ConfigError(f"{path}:{lineno} is not JSON ({e.msg}); is it a metrics.json?")
            if isinstance(record, dict) and "iteration" in record:
                records.setdefault(int(record["iteration"]), {}).update(record)
    run = RunMetrics(run_dir=run_dir, label=label or os.path.basename(os.path.normpath(run_dir)))
    run.records = records
    _read_config(run)
    return run


def best_ap(curve):
    """
    Args:
        curve (list[tuple[int, float]]): (iteration, AP), e.g. from ``RunMetrics.ap_curve``.

    Returns:
        tuple[float, int] or None: the highest AP and the first iteration reaching it;
        None for an empty curve.
    """
    if not curve:
        return None
    ap, neg_it = max((ap, -it) for it, ap in curve)
    return ap, -neg_it


def first_match_iteration(curve, target, tolerance=0.5):
    """
    Args:
        curve (list[tuple[int, float]]): (iteration, AP) of the run that catches up.
        target (float): AP to match (e.g. the pre-trained run's best).
        tolerance (float): AP points the curve may stay below ``target``.

    Returns:
        int or None: the first iteration with ``AP >= target - tolerance``; None if never.
    """
    for it, ap in sorted(curve):
        if ap >= target - tolerance:
            return it
    return None


def comparison_rows(runs, reference, tolerance=0.5, tasks=None):
    """
    One row per (task, run): best AP, where it was reached, and when the run first matched the
    reference run's best AP within ``tolerance``.

    Args:
        runs (list[RunMetrics]): the runs to compare (the reference among them).
        reference (RunMetrics): usually the pre-trained run.
        tolerance (float): AP points.
        tasks (list[str] or None): defaults to every task some run evaluated.

    Returns:
        list[dict]: keys ``task, label, best_ap, best_iter, match_iter`` (``match_iter`` is
        None for the reference itself and for runs that never match; ``best_ap`` None if the
        run never evaluated the task).
    """
    if tasks is None:
        tasks = [t for t in AP_TASKS if any(r.ap_curve(t) for r in runs)]
    rows = []
    for task in tasks:
        ref_best = best_ap(reference.ap_curve(task))
        for run in runs:
            curve = run.ap_curve(task)
            best = best_ap(curve)
            match = None
            if run is not reference and ref_best is not None:
                match = first_match_iteration(curve, ref_best[0], tolerance)
            rows.append(
                {
                    "task": task,
                    "label": run.label,
                    "best_ap": None if best is None else best[0],
                    "best_iter": None if best is None else best[1],
                    "match_iter": match,
                }
            )
    return rows


def format_rows(rows, reference_label, tolerance):
    """
    Args:
        rows (list[dict]): from :func:`comparison_rows`.
        reference_label (str): label of the reference run (named in the header).
        tolerance (float): the tolerance the rows were computed with.

    Returns:
        str: a fixed-width text table (AP with 2 decimals, "-" for missing values).
    """
    match_header = f"matches {reference_label} best-{tolerance:g} at iter"
    header = ("task", "run", "best AP", "best at iter", match_header)
    lines = [header]
    for r in rows:
        lines.append(
            (
                r["task"],
                r["label"],
                "-" if r["best_ap"] is None else f"{r['best_ap']:.2f}",
                "-" if r["best_iter"] is None else str(r["best_iter"]),
                "(reference)" if r["label"] == reference_label else _dash(r["match_iter"]),
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in lines
    )


def pick_reference(runs, label=None):
    """
    Args:
        runs (list[RunMetrics]): the runs to compare.
        label (str or None): the reference's label; None picks the first pre-trained run
            (``RETHINK.SCRATCH False`` in its config.yaml), else the first run.

    Returns:
        RunMetrics

    Raises:
        ConfigError: if ``label`` names none of the runs.
    """
    if label is not None:
        for run in runs:
            if run.label == label:
                return run
        raise ConfigError(
            f"--reference {label!r} is not one of the run labels {[r.label for r in runs]}"
        )
    return next((r for r in runs if r.scratch is False), runs[0])


def _task_ap(record, task):
    """AP of ``task`` in one metrics record ("bbox/AP" or "<dataset>/bbox/AP"), else None."""
    for key, value in record.items():
        parts = key.split("/")
        if len(parts) >= 2 and parts[-1] == "AP" and parts[-2] == task:
            try:
                value = float(value)
            except (TypeError, ValueError):
                return None
            return value if value == value else None  # NaN: task had no detections
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


def _read_config(run):
    """Fill the schedule fields of ``run`` from its config.yaml, if there is one."""
    path = os.path.join(run.run_dir, CONFIG_FILE)
    if not os.path.isfile(path):
        return
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


def _dash(value):
    return "-" if value is None else str(value)
