"""Learning-curve pictures: the paper's Figure 1 (runs compared) and one run's loss and AP.

Figures are drawn with matplotlib's object API on an Agg canvas: no pyplot, no global backend
switch, so importing or calling this module never changes the caller's matplotlib state.
"""

import os

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .errors import ConfigError
from .run_metrics import (
    AP_TASKS,
    best_ap,
    comparison_rows,
    first_match_iteration,
    format_rows,
    load_metrics,
    pick_reference,
)

__all__ = [
    "best_ap",
    "comparison_rows",
    "first_match_iteration",
    "format_rows",
    "load_metrics",
    "pick_reference",
    "plot_comparison",
    "plot_single_run",
]

_TASK_TITLES = {"bbox": "box AP", "segm": "mask AP", "keypoints": "keypoint AP"}


def plot_comparison(runs, out_png, tasks=None, colors=None):
    """
    Draw AP against iterations (left) and against images seen (right), one row per task, every
    run in its own colour, its LR drops (``SOLVER.STEPS``) as dotted vertical lines.

    Args:
        runs (list[RunMetrics]): from :func:`load_metrics`.
        out_png (str): where to write the PNG.
        tasks (list[str] or None): subset of ("bbox", "segm", "keypoints"); defaults to every
            task some run evaluated.
        colors (list[str] or None): one matplotlib colour per run (e.g. the same colour for
            the seeds of one recipe); defaults to a colour of its own for every run.

    Returns:
        list[str]: the tasks drawn.

    Raises:
        ConfigError: if no run has any evaluation result.
    """
    if tasks is None:
        tasks = [t for t in AP_TASKS if any(r.ap_curve(t) for r in runs)]
    if not tasks:
        raise ConfigError(
            "none of the runs has evaluation results (bbox/AP, segm/AP or keypoints/AP) in its "
            "metrics.json: train with TEST.EVAL_PERIOD > 0 (or RETHINK.SCHEDULE.EVAL_PERIOD)"
        )
    fig = Figure(figsize=(11, 3.6 * len(tasks)))
    axes = fig.subplots(len(tasks), 2, squeeze=False)
    colors = colors or [f"C{i}" for i in range(len(runs))]
    for row, task in enumerate(tasks):
        ax_it, ax_img = axes[row]
        for run, color in zip(runs, colors):
            curve = run.ap_curve(task)
            if not curve:
                continue
            its = [it for it, _ in curve]
            aps = [ap for _, ap in curve]
            imgs = [run.images_seen(it) for it in its]
            ax_it.plot(its, aps, "-o", color=color, markersize=3, label=run.label)
            ax_img.plot(imgs, aps, "-o", color=color, markersize=3, label=run.label)
            for step in run.steps:
                if run.max_iter is None or step < run.max_iter:
                    ax_it.axvline(step, color=color, linestyle=":", linewidth=1)
                    ax_img.axvline(run.images_seen(step), color=color, linestyle=":", linewidth=1)
        title = _TASK_TITLES.get(task, task)
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
    Draw one run's training loss (left) and evaluation AP (right) against iterations; the AP
    panel is left out when the run never evaluated.

    Args:
        run_dir (str): the run's ``OUTPUT_DIR`` (holding ``metrics.json``).
        out_png (str): where to write the PNG.

    Returns:
        str: ``out_png``.

    Raises:
        ConfigError: if ``metrics.json`` is missing or holds neither a loss nor an AP.
    """
    run = load_metrics(run_dir)
    loss = run.loss_curve("total_loss")
    tasks = run.ap_tasks()
    if not loss and not tasks:
        raise ConfigError(f"{run_dir}/metrics.json holds no total_loss and no AP to draw")
    panels = (1 if loss else 0) + (1 if tasks else 0)
    fig = Figure(figsize=(5.5 * panels, 3.8))
    axes = list(fig.subplots(1, panels, squeeze=False)[0])
    if loss:
        ax = axes.pop(0)
        marker = "o" if len(loss) < 50 else None  # a short run shows its few records as dots
        ax.plot(
            [it for it, _ in loss],
            [v for _, v in loss],
            color="C0",
            marker=marker,
            markersize=3,
            linewidth=1,
        )
        ax.set(xlabel="iterations", ylabel="total_loss", title="training loss")
        _draw_steps(ax, run)
    if tasks:
        ax = axes.pop(0)
        for i, task in enumerate(tasks):
            curve = run.ap_curve(task)
            ax.plot(
                [it for it, _ in curve],
                [ap for _, ap in curve],
                "-o",
                color=f"C{i + 1}",
                markersize=3,
                label=_TASK_TITLES.get(task, task),
            )
        ax.set(xlabel="iterations", ylabel="AP", title="evaluation AP")
        ax.legend(loc="lower right", fontsize="small")
        _draw_steps(ax, run)
    fig.suptitle(run.label, fontsize="medium")
    _save(fig, out_png)
    return out_png


def _draw_steps(ax, run):
    """LR drops of ``run`` as dotted grey vertical lines, plus a light grid."""
    for step in run.steps:
        if run.max_iter is None or step < run.max_iter:
            ax.axvline(step, color="grey", linestyle=":", linewidth=1)
    ax.grid(True, alpha=0.3)


def _save(fig, out_png):
    """Write ``fig`` as PNG with the Agg canvas (independent of the pyplot backend)."""
    fig.tight_layout(rect=(0, 0.02, 1, 1))
    FigureCanvasAgg(fig)
    os.makedirs(os.path.dirname(os.path.abspath(out_png)), exist_ok=True)
    fig.savefig(out_png, format="png", dpi=100)
