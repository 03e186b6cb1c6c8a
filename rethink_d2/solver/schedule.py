"""Training schedules as one key: ``RETHINK.SCHEDULE.SPEC`` -> Detectron2's ``SOLVER`` keys.

Spec grammar (case-insensitive; ``k`` = 1e3, ``M`` = 1e6):

==============  ==============================================================================
``""``          leave ``SOLVER`` (and ``TEST.EVAL_PERIOD``) exactly as written
``"<m>x"``      ``m`` times ``BASE_ITER`` iterations at ``REFERENCE_BATCH``: ``"6x"``, ``"4.5x"``
``"<n>it"``     ``n`` iterations at ``REFERENCE_BATCH``: ``"220kit"``, ``"60000it"``
``"<n>ep"``     ``n`` epochs: ``"24ep"``. Images per epoch: ``DATASET_IMAGES``, else the counts
                of the subset names in ``DATASETS.TRAIN`` (``"coco_2017_train@10k"``, ``@3.5k``,
                ``@1000``) or of ``RETHINK.DATA.SAMPLER_SUBSET``; fractions (``@0.1``) need
                ``DATASET_IMAGES``
``"<n>img"``    ``n`` images seen: ``"3.52Mimg"``
==============  ==============================================================================

Every spec is a length ``L`` in *reference iterations* (iterations at ``REFERENCE_BATCH`` = 16
images). With ``B = SOLVER.IMS_PER_BATCH`` and ``s = REFERENCE_BATCH / B`` (linear scaling
rule, Goyal et al.), every length scales by ``s`` and the learning rate by ``1 / s``:

* ``MAX_ITER = round(L * s)``
* ``MODE "tail"`` (the paper): ``STEPS = round((L - T) * s)`` for ``T`` in ``TAILS`` -- the LR is
  multiplied by ``GAMMA`` (0.1) at the last 60k and the last 20k iterations whatever the length;
  ``MODE "proportional"`` (Detectron2's 1x, LSJ baselines): ``STEPS = round(L * f * s)`` for
  ``f`` in ``FRACTIONS``
* ``BASE_LR = RETHINK.SCHEDULE.BASE_LR / s``, ``GAMMA = RETHINK.SCHEDULE.GAMMA``
* ``WARMUP_ITERS = round(RETHINK.SCHEDULE.WARMUP_ITERS * s)`` when that key is > 0, else
  ``SOLVER.WARMUP_ITERS`` is kept as written: Detectron2's 9x batch-64 config keeps 1000
* ``TEST.EVAL_PERIOD`` / ``SOLVER.CHECKPOINT_PERIOD = max(1, round(P * s))`` for the
  ``RETHINK.SCHEDULE`` periods that are > 0; the others are kept as written.

``round`` rounds halves up. E.g. 9x at batch 64: 202,500 iterations, steps (187,500, 197,500),
LR 0.08, exactly Detectron2's ``scratch_mask_rcnn_R_50_FPN_9x_gn.yaml``. Detectron2's
``DefaultTrainer.auto_scale_workers`` (``SOLVER.REFERENCE_WORLD_SIZE``) applied afterwards
rescales the resolved keys once more, from the resolved ``IMS_PER_BATCH``: resolving at batch 16
and auto-scaling 8 -> 32 workers gives the same MAX_ITER, STEPS and BASE_LR as resolving at 64
(only the kept WARMUP_ITERS differ, because Detectron2 scales warm-up and the rule above does
not).

Who owns which key: a non-empty ``SPEC`` owns ``SOLVER.MAX_ITER``, ``STEPS``, ``GAMMA``,
``BASE_LR`` (and ``WARMUP_ITERS`` and the periods when their ``RETHINK.SCHEDULE`` keys are > 0):
:func:`resolve_schedule` writes them and logs every value it replaced. To write those ``SOLVER``
keys yourself, set ``RETHINK.SCHEDULE.SPEC ""``. The shipped configs state the values of their
spec literally, so that plain Detectron2 (``merge_from_file`` without ``resolve_config``) trains
the same schedule; ``tools/train_net.py`` refuses a command line that sets an owned key while a
spec is in force.

``python -m rethink_d2.solver`` prints the docs/schedules.md table (:mod:`rethink_d2.solver.table`).
"""

import logging
import math
import re
from dataclasses import dataclass
from fractions import Fraction

from ..data.subset_spec import is_subset_name, parse_subset_name, parse_subset_spec
from ..utils.errors import ConfigError

__all__ = [
    "Schedule",
    "parse_schedule_spec",
    "count_training_images",
    "compute_schedule",
    "resolve_schedule",
    "schedule_owned_values",
]

logger = logging.getLogger(__name__)

_MODES = ("tail", "proportional")
_SUFFIX = {"": 1, "k": 1000, "m": 1000000}
_SPEC_RE = re.compile(r"^([+-]?(?:\d+\.?\d*|\.\d+))([km]?)(x|it|ep|img)$", re.IGNORECASE)
_SPEC_HELP = (
    "use '<m>x' (e.g. '6x', '4.5x'), '<n>it' ('220kit'), '<n>ep' ('24ep'), '<n>img' "
    "('3.52Mimg'), or '' to keep SOLVER as written"
)


@dataclass(frozen=True)
class Schedule:
    """
    A resolved schedule, in the units Detectron2 trains with.

    Attributes:
        spec (str): the ``RETHINK.SCHEDULE.SPEC`` it was resolved from.
        mode (str): ``"tail"`` or ``"proportional"``.
        batch (int): images per iteration (``SOLVER.IMS_PER_BATCH``).
        max_iter (int): ``SOLVER.MAX_ITER``.
        steps (tuple[int]): ``SOLVER.STEPS``.
        gamma (float): ``SOLVER.GAMMA``.
        base_lr (float): ``SOLVER.BASE_LR``.
        warmup_iters (int): ``SOLVER.WARMUP_ITERS``.
        eval_period (int or None): ``TEST.EVAL_PERIOD``; ``None`` keeps the config's value.
        checkpoint_period (int or None): ``SOLVER.CHECKPOINT_PERIOD``; ``None`` keeps it.
    """

    spec: str
    mode: str
    batch: int
    max_iter: int
    steps: tuple
    gamma: float
    base_lr: float
    warmup_iters: int
    eval_period: object = None
    checkpoint_period: object = None

    @property
    def images_seen(self):
        """int: images the run trains on, ``max_iter * batch``."""
        return self.max_iter * self.batch

    def describe(self):
        """
        Returns:
            str: the one-line summary that :func:`resolve_schedule` logs.
        """
        return (
            f"schedule {self.spec!r} ({self.mode}) at {self.batch} images/iteration: "
            f"{self.max_iter} iterations, LR steps {self.steps} x{self.gamma:g}, "
            f"base LR {self.base_lr:g}, warm-up {self.warmup_iters} iterations, "
            f"{self.images_seen} images seen"
        )


def parse_schedule_spec(spec):
    """
    Split a schedule spec into its number and unit.

    Args:
        spec (str): e.g. ``"6x"``, ``"4.5x"``, ``"220kit"``, ``"24ep"``, ``"3.52Mimg"``.

    Returns:
        tuple[Fraction, str]: the exact value (``k``/``M`` applied) and the unit, one of
        ``"x"``, ``"it"``, ``"ep"``, ``"img"``.

    Raises:
        ConfigError: unparseable spec, a ``k``/``M`` suffix on ``x``/``ep``, or a value <= 0.
    """
    text = str(spec).strip()
    match = _SPEC_RE.match(text)
    if match is None:
        raise ConfigError(f"RETHINK.SCHEDULE.SPEC={spec!r} is not a schedule: {_SPEC_HELP}")
    number, suffix, unit = match.groups()
    unit, suffix = unit.lower(), suffix.lower()
    if suffix and unit in ("x", "ep"):
        raise ConfigError(
            f"RETHINK.SCHEDULE.SPEC={spec!r}: k/M suffixes apply to 'it' and 'img' only; "
            f"write e.g. '{number}{unit}'"
        )
    value = Fraction(number) * _SUFFIX[suffix]
    if value <= 0:
        raise ConfigError(
            f"RETHINK.SCHEDULE.SPEC={spec!r}: the schedule length must be > 0 (e.g. '1x')"
        )
    return value, unit


def count_training_images(cfg):
    """
    Images per epoch for ``"<n>ep"`` specs, without reading any data.

    Args:
        cfg (CfgNode): a config with the ``RETHINK`` node.

    Returns:
        int: ``RETHINK.SCHEDULE.DATASET_IMAGES`` if > 0; else the count of
        ``RETHINK.DATA.SAMPLER_SUBSET`` (``"10k"``); else the sum of the ``@<count>`` suffixes of
        the names in ``DATASETS.TRAIN``.

    Raises:
        ConfigError: when the count cannot be known from the config alone (a dataset without a
            count in its name, or a fraction such as ``@0.1``).
        DatasetError: a malformed subset size (``rethink_d2.data.subset_spec``'s grammar).
    """
    given = int(cfg.RETHINK.SCHEDULE.DATASET_IMAGES)
    if given < 0:
        raise ConfigError(
            f"RETHINK.SCHEDULE.DATASET_IMAGES={given} must be >= 0 (0: infer from the dataset "
            f"names)"
        )
    if given > 0:
        return given
    how = (
        "set RETHINK.SCHEDULE.DATASET_IMAGES to the number of training images for an '<n>ep' "
        "spec, or give the length as '<m>x', '<n>it' or '<n>img'"
    )
    sampler_subset = str(cfg.RETHINK.get("DATA", {}).get("SAMPLER_SUBSET", "") or "")
    if sampler_subset:
        spec = parse_subset_spec(sampler_subset, where="RETHINK.DATA.SAMPLER_SUBSET")
        if spec.count is None:
            raise ConfigError(
                f"RETHINK.DATA.SAMPLER_SUBSET={sampler_subset!r} is a fraction, so the images "
                f"per epoch are unknown until the data is read: {how}"
            )
        return spec.count
    names = tuple(cfg.DATASETS.TRAIN)
    if not names:
        raise ConfigError(f"DATASETS.TRAIN is empty, so an epoch has no length: {how}")
    total = 0
    for name in names:
        count = parse_subset_name(name).spec.count if is_subset_name(name) else None
        if count is None:
            raise ConfigError(
                f"the size of training dataset {name!r} is not a count in its name (as in "
                f"'coco_2017_train@10k'; fractions such as '@0.1' are not): {how}"
            )
        total += count
    return total


def _round(x):
    """Round half up (exact on Fractions)."""
    return math.floor(x + Fraction(1, 2))


def _fraction(x):
    """Exact Fraction of a config number (via its repr, so 0.02 is 1/50, not a binary float)."""
    return Fraction(repr(x)) if isinstance(x, float) else Fraction(x)


def compute_schedule(cfg, spec=None, batch=None, schedule_keys=None):
    """
    Resolve a schedule spec into Detectron2's solver values; pure (``cfg`` is not modified).

    Args:
        cfg (CfgNode): a config with the ``RETHINK`` node.
        spec (str or None): spec to resolve; ``None`` reads ``RETHINK.SCHEDULE.SPEC``.
        batch (int or None): images per iteration; ``None`` reads ``SOLVER.IMS_PER_BATCH``.
        schedule_keys (CfgNode or None): a ``RETHINK.SCHEDULE``-like node to use instead of
            ``cfg.RETHINK.SCHEDULE`` (e.g. its defaults).

    Returns:
        Schedule

    Raises:
        ConfigError: an impossible schedule (length <= 0, shorter than its tails, steps not
            increasing, warm-up longer than the first step, ...), naming the key to change.
    """
    keys = cfg.RETHINK.SCHEDULE if schedule_keys is None else schedule_keys
    spec = keys.SPEC if spec is None else spec
    batch = cfg.SOLVER.IMS_PER_BATCH if batch is None else batch
    value, unit = parse_schedule_spec(spec)
    mode = keys.MODE
    if mode not in _MODES:
        raise ConfigError(f"RETHINK.SCHEDULE.MODE={mode!r} must be one of {_MODES}")
    ref_batch = int(keys.REFERENCE_BATCH)
    _require_positive("RETHINK.SCHEDULE.REFERENCE_BATCH", ref_batch)
    _require_positive("SOLVER.IMS_PER_BATCH", batch)
    _require_positive("RETHINK.SCHEDULE.BASE_ITER", keys.BASE_ITER)
    _require_positive("RETHINK.SCHEDULE.BASE_LR", keys.BASE_LR)
    if not 0 < keys.GAMMA <= 1:
        raise ConfigError(
            f"RETHINK.SCHEDULE.GAMMA={keys.GAMMA} must be in (0, 1] (the LR is multiplied by it "
            f"at each step; the paper uses 0.1)"
        )

    max_iter, steps = _iterations_and_steps(cfg, keys, spec, value, unit, mode, batch)
    scale = Fraction(ref_batch, int(batch))
    if keys.get("WARMUP_ITERS", 0) < 0:
        raise ConfigError(f"RETHINK.SCHEDULE.WARMUP_ITERS={keys.WARMUP_ITERS} must be >= 0")
    if keys.get("WARMUP_ITERS", 0) > 0:
        warmup, warmup_key = _round(_fraction(keys.WARMUP_ITERS) * scale), "RETHINK.SCHEDULE"
    else:
        warmup, warmup_key = int(cfg.SOLVER.WARMUP_ITERS), "SOLVER"
    first_drop = steps[0] if steps else max_iter
    if warmup > first_drop:
        raise ConfigError(
            f"a warm-up of {warmup} iterations is longer than the "
            f"{'first LR step' if steps else 'run'} ({first_drop}) of "
            f"{_where(spec, batch, ref_batch)}: set {warmup_key}.WARMUP_ITERS to at most "
            f"{first_drop}"
        )

    return Schedule(
        spec=str(spec),
        mode=mode,
        batch=int(batch),
        max_iter=max_iter,
        steps=steps,
        gamma=float(keys.GAMMA),
        base_lr=float(_fraction(keys.BASE_LR) / scale),
        warmup_iters=warmup,
        eval_period=_scaled_period("EVAL_PERIOD", keys, scale),
        checkpoint_period=_scaled_period("CHECKPOINT_PERIOD", keys, scale),
    )


def _iterations_and_steps(cfg, keys, spec, value, unit, mode, batch):
    """MAX_ITER and STEPS of a parsed spec at ``batch`` images/iteration, validated."""
    ref_batch = int(keys.REFERENCE_BATCH)
    # length in reference iterations, exact
    if unit == "x":
        length = value * _fraction(keys.BASE_ITER)
    elif unit == "it":
        length = value
    elif unit == "img":
        length = value / ref_batch
    else:
        length = value * count_training_images(cfg) / ref_batch
    if mode == "tail":
        ref_steps = _tail_steps(spec, keys.TAILS, length)
    else:
        ref_steps = _proportional_steps(keys.FRACTIONS, length)
    scale = Fraction(ref_batch, int(batch))
    max_iter = _round(length * scale)
    steps = tuple(_round(s * scale) for s in ref_steps)
    where = _where(spec, batch, ref_batch)
    if max_iter < 1:
        raise ConfigError(f"{where} resolves to {max_iter} iterations: lengthen the spec")
    if any(b <= a for a, b in zip((0,) + steps, steps + (max_iter,))):
        raise ConfigError(
            f"{where} resolves to LR steps {steps} of {max_iter} iterations, which are not "
            f"strictly increasing inside (0, MAX_ITER) after scaling: lengthen the spec or "
            f"spread RETHINK.SCHEDULE.{'TAILS' if mode == 'tail' else 'FRACTIONS'}"
        )
    return max_iter, steps


def _where(spec, batch, ref_batch):
    return (
        f"RETHINK.SCHEDULE.SPEC={spec!r} at SOLVER.IMS_PER_BATCH={batch} "
        f"(REFERENCE_BATCH {ref_batch})"
    )


def _require_positive(key, value):
    if not value > 0:
        raise ConfigError(f"{key}={value} must be > 0")


def _tail_steps(spec, tails, length):
    tails = tuple(_fraction(t) for t in tails)
    if any(t <= 0 for t in tails):
        raise ConfigError(f"RETHINK.SCHEDULE.TAILS={_show(tails)} must all be > 0")
    if any(b >= a for a, b in zip(tails, tails[1:])):
        raise ConfigError(
            f"RETHINK.SCHEDULE.TAILS={_show(tails)} must be strictly decreasing (last 60k, then "
            f"last 20k iterations), otherwise the LR steps are not increasing"
        )
    if tails and length <= tails[0]:
        raise ConfigError(
            f"RETHINK.SCHEDULE.SPEC={spec!r} is {_show(length)} reference iterations, not longer "
            f"than its first LR tail of {_show(tails[0])} (RETHINK.SCHEDULE.TAILS="
            f"{_show(tails)}): lengthen the spec, shorten TAILS, or use MODE 'proportional'"
        )
    return tuple(length - t for t in tails)


def _proportional_steps(fractions, length):
    fractions = tuple(_fraction(f) for f in fractions)
    if any(not 0 < f < 1 for f in fractions) or any(
        b <= a for a, b in zip(fractions, fractions[1:])
    ):
        raise ConfigError(
            f"RETHINK.SCHEDULE.FRACTIONS={tuple(float(f) for f in fractions)} must be strictly "
            f"increasing and inside (0, 1), e.g. (0.667, 0.889)"
        )
    return tuple(length * f for f in fractions)


def _scaled_period(name, keys, scale):
    period = keys.get(name, 0)
    if period < 0:
        raise ConfigError(f"RETHINK.SCHEDULE.{name}={period} must be >= 0 (0: keep as written)")
    return max(1, _round(_fraction(period) * scale)) if period > 0 else None


def _show(x):
    """A Fraction or tuple of them as plain numbers for messages."""
    if isinstance(x, tuple):
        return "(" + ", ".join(_show(v) for v in x) + ")"
    return str(int(x)) if x.denominator == 1 else f"{float(x):g}"


def resolve_schedule(cfg):
    """
    Write the schedule of ``RETHINK.SCHEDULE.SPEC`` into Detectron2's keys (no-op for ``""``).

    Sets ``SOLVER.MAX_ITER``, ``STEPS``, ``GAMMA``, ``BASE_LR``, ``WARMUP_ITERS`` and, when the
    ``RETHINK.SCHEDULE`` periods are > 0, ``TEST.EVAL_PERIOD`` and ``SOLVER.CHECKPOINT_PERIOD``;
    logs the result in one INFO line. See the module docstring for the rules.

    Args:
        cfg (CfgNode): an unfrozen config with the ``RETHINK`` node (``resolve_config`` passes a
            defrosted clone).

    Returns:
        CfgNode: ``cfg`` itself, modified.

    Raises:
        ConfigError: an impossible schedule, or ``SOLVER.LR_SCHEDULER_NAME`` other than
            ``WarmupMultiStepLR``.
    """
    if not str(cfg.RETHINK.SCHEDULE.SPEC).strip():
        return cfg
    sched = compute_schedule(cfg)
    if cfg.SOLVER.LR_SCHEDULER_NAME != "WarmupMultiStepLR":
        raise ConfigError(
            f"RETHINK.SCHEDULE.SPEC={sched.spec!r} sets a multi-step schedule, but "
            f"SOLVER.LR_SCHEDULER_NAME is {cfg.SOLVER.LR_SCHEDULER_NAME!r}: set it to "
            f"'WarmupMultiStepLR', or set RETHINK.SCHEDULE.SPEC '' and write SOLVER yourself"
        )
    replaced = []
    for key, value in schedule_owned_values(sched).items():
        node, leaf = key.split(".")
        old = cfg[node][leaf]
        if old != value:
            replaced.append(f"{key} {old} -> {value}")
            cfg[node][leaf] = value
    logger.info("Resolved %s", sched.describe())
    if replaced:
        logger.info("RETHINK.SCHEDULE.SPEC %r replaced %s", sched.spec, "; ".join(replaced))
    return cfg


def schedule_owned_values(sched):
    """
    Args:
        sched (Schedule): a resolved schedule.

    Returns:
        dict[str, object]: the Detectron2 keys (``"SOLVER.MAX_ITER"``, ...) that a spec owns,
        with the values it gives them. Periods appear only when their ``RETHINK.SCHEDULE`` key
        is > 0, the warm-up always (``compute_schedule`` keeps the written one when its key is 0).
    """
    owned = {
        "SOLVER.MAX_ITER": sched.max_iter,
        "SOLVER.STEPS": tuple(sched.steps),
        "SOLVER.GAMMA": sched.gamma,
        "SOLVER.BASE_LR": sched.base_lr,
        "SOLVER.WARMUP_ITERS": sched.warmup_iters,
    }
    if sched.eval_period is not None:
        owned["TEST.EVAL_PERIOD"] = sched.eval_period
    if sched.checkpoint_period is not None:
        owned["SOLVER.CHECKPOINT_PERIOD"] = sched.checkpoint_period
    return owned
