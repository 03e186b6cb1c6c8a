"""Training schedules as one key: ``RETHINK.SCHEDULE.SPEC`` -> Detectron2's ``SOLVER`` keys.

A spec is a length ``L`` in reference iterations (at ``REFERENCE_BATCH`` images): ``"<m>x"``
(``m * BASE_ITER``), ``"<n>it"``, ``"<n>ep"`` (epochs of ``DATASET_IMAGES``, else of the
``@<count>`` subset names) or ``"<n>img"`` (images seen); ``k``/``M`` suffixes on ``it``/``img``.
With ``s = REFERENCE_BATCH / SOLVER.IMS_PER_BATCH`` (linear scaling rule): ``MAX_ITER = L*s``;
``STEPS = (L - T)*s`` for ``T`` in ``TAILS`` (``MODE "tail"``, the paper: the LR drops in the last
60k and 20k iterations whatever the length) or ``L*f*s`` for ``f`` in ``FRACTIONS``
(``"proportional"``, Detectron2's 1x); ``BASE_LR = RETHINK.SCHEDULE.BASE_LR / s``; warm-up and
periods > 0 scale by ``s`` (0 keeps the written value). Halves round up. A non-empty spec owns
the keys of :func:`schedule_owned_values`. Rules and table: docs/schedules.md.
"""

import logging
import math
import re
from dataclasses import dataclass
from fractions import Fraction

from ..data.subsets import is_subset_name, parse_subset_name, parse_subset_spec
from ..utils.errors import ConfigError

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
    """A resolved schedule in Detectron2's units (periods None: keep the config's values)."""

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


def parse_schedule_spec(spec):
    """
    Split a spec such as ``"6x"``, ``"220kit"``, ``"24ep"``, ``"3.52Mimg"`` into its exact value
    (a Fraction, ``k``/``M`` applied) and its unit: ``"x"``, ``"it"``, ``"ep"`` or ``"img"``.
    """
    match = _SPEC_RE.match(str(spec).strip())
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
    Images per epoch for ``"<n>ep"`` specs, without reading any data:
    ``RETHINK.SCHEDULE.DATASET_IMAGES`` if > 0, else the count of
    ``RETHINK.DATA.SAMPLER_SUBSET``, else the sum of the ``@<count>`` suffixes in
    ``DATASETS.TRAIN``. A ConfigError when the config does not tell.
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
    sampler_subset = str(cfg.RETHINK.DATA.SAMPLER_SUBSET or "")
    if sampler_subset:
        spec = parse_subset_spec(sampler_subset, where="RETHINK.DATA.SAMPLER_SUBSET")
        if spec.count is None:
            raise ConfigError(
                f"RETHINK.DATA.SAMPLER_SUBSET={sampler_subset!r} is a fraction, so the images "
                f"per epoch are unknown until the data is read: {how}"
            )
        return spec.count
    if not cfg.DATASETS.TRAIN:
        raise ConfigError(f"DATASETS.TRAIN is empty, so an epoch has no length: {how}")
    total = 0
    for name in cfg.DATASETS.TRAIN:
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


def _show(x):
    """A Fraction or tuple of them as plain numbers for messages."""
    if isinstance(x, tuple):
        return "(" + ", ".join(_show(v) for v in x) + ")"
    return str(int(x)) if x.denominator == 1 else f"{float(x):g}"


def compute_schedule(cfg, spec=None, batch=None):
    """
    Resolve a schedule spec into Detectron2's solver values (``cfg`` is not modified).

    Args:
        cfg (CfgNode): a config with the ``RETHINK`` node.
        spec (str or None): the spec; None reads ``RETHINK.SCHEDULE.SPEC``.
        batch (int or None): images per iteration; None reads ``SOLVER.IMS_PER_BATCH``.

    Returns:
        Schedule; a ConfigError naming the key to change for an impossible one.
    """
    keys = cfg.RETHINK.SCHEDULE
    spec = keys.SPEC if spec is None else spec
    batch = cfg.SOLVER.IMS_PER_BATCH if batch is None else batch
    value, unit = parse_schedule_spec(spec)
    mode = keys.MODE
    if mode not in _MODES:
        raise ConfigError(f"RETHINK.SCHEDULE.MODE={mode!r} must be one of {_MODES}")
    ref_batch = int(keys.REFERENCE_BATCH)
    for key, number in (
        ("RETHINK.SCHEDULE.REFERENCE_BATCH", ref_batch),
        ("SOLVER.IMS_PER_BATCH", batch),
        ("RETHINK.SCHEDULE.BASE_ITER", keys.BASE_ITER),
        ("RETHINK.SCHEDULE.BASE_LR", keys.BASE_LR),
    ):
        if not number > 0:
            raise ConfigError(f"{key}={number} must be > 0")
    if not 0 < keys.GAMMA <= 1:
        raise ConfigError(
            f"RETHINK.SCHEDULE.GAMMA={keys.GAMMA} must be in (0, 1] (the LR is multiplied by it "
            f"at each step; the paper uses 0.1)"
        )

    # the length in reference iterations, exact
    if unit == "x":
        length = value * _fraction(keys.BASE_ITER)
    elif unit == "it":
        length = value
    else:
        length = (value if unit == "img" else value * count_training_images(cfg)) / ref_batch
    if mode == "tail":
        tails = tuple(_fraction(t) for t in keys.TAILS)
        if any(t <= 0 for t in tails):
            raise ConfigError(f"RETHINK.SCHEDULE.TAILS={_show(tails)} must all be > 0")
        if any(b >= a for a, b in zip(tails, tails[1:])):
            raise ConfigError(
                f"RETHINK.SCHEDULE.TAILS={_show(tails)} must be strictly decreasing (last 60k, "
                f"then last 20k iterations), otherwise the LR steps are not increasing"
            )
        if tails and length <= tails[0]:
            raise ConfigError(
                f"RETHINK.SCHEDULE.SPEC={spec!r} is {_show(length)} reference iterations, not "
                f"longer than its first LR tail of {_show(tails[0])} (RETHINK.SCHEDULE.TAILS="
                f"{_show(tails)}): lengthen the spec, shorten TAILS, or use MODE 'proportional'"
            )
        ref_steps = [length - t for t in tails]
    else:
        fractions = tuple(_fraction(f) for f in keys.FRACTIONS)
        if any(not 0 < f < 1 for f in fractions) or any(
            b <= a for a, b in zip(fractions, fractions[1:])
        ):
            raise ConfigError(
                f"RETHINK.SCHEDULE.FRACTIONS={tuple(float(f) for f in fractions)} must be "
                f"strictly increasing and inside (0, 1), e.g. (0.667, 0.889)"
            )
        ref_steps = [length * f for f in fractions]

    scale = Fraction(ref_batch, int(batch))
    max_iter = _round(length * scale)
    steps = tuple(_round(s * scale) for s in ref_steps)
    where = (
        f"RETHINK.SCHEDULE.SPEC={spec!r} at SOLVER.IMS_PER_BATCH={batch} "
        f"(REFERENCE_BATCH {ref_batch})"
    )
    if max_iter < 1:
        raise ConfigError(f"{where} resolves to {max_iter} iterations: lengthen the spec")
    if any(b <= a for a, b in zip((0,) + steps, steps + (max_iter,))):
        raise ConfigError(
            f"{where} resolves to LR steps {steps} of {max_iter} iterations, which are not "
            f"strictly increasing inside (0, MAX_ITER) after scaling: lengthen the spec or "
            f"spread RETHINK.SCHEDULE.{'TAILS' if mode == 'tail' else 'FRACTIONS'}"
        )

    if keys.WARMUP_ITERS < 0:
        raise ConfigError(f"RETHINK.SCHEDULE.WARMUP_ITERS={keys.WARMUP_ITERS} must be >= 0")
    if keys.WARMUP_ITERS > 0:
        warmup, warmup_key = _round(_fraction(keys.WARMUP_ITERS) * scale), "RETHINK.SCHEDULE"
    else:
        warmup, warmup_key = int(cfg.SOLVER.WARMUP_ITERS), "SOLVER"
    first_drop = steps[0] if steps else max_iter
    if warmup > first_drop:
        raise ConfigError(
            f"a warm-up of {warmup} iterations is longer than the "
            f"{'first LR step' if steps else 'run'} ({first_drop}) of {where}: set "
            f"{warmup_key}.WARMUP_ITERS to at most {first_drop}"
        )
    periods = {}
    for name in ("EVAL_PERIOD", "CHECKPOINT_PERIOD"):
        period = keys[name]
        if period < 0:
            raise ConfigError(f"RETHINK.SCHEDULE.{name}={period} must be >= 0 (0: keep as written)")
        periods[name] = max(1, _round(_fraction(period) * scale)) if period > 0 else None

    return Schedule(
        spec=str(spec),
        mode=mode,
        batch=int(batch),
        max_iter=max_iter,
        steps=steps,
        gamma=float(keys.GAMMA),
        base_lr=float(_fraction(keys.BASE_LR) / scale),
        warmup_iters=warmup,
        eval_period=periods["EVAL_PERIOD"],
        checkpoint_period=periods["CHECKPOINT_PERIOD"],
    )


def resolve_schedule(cfg):
    """
    Write the schedule of ``RETHINK.SCHEDULE.SPEC`` into ``cfg`` (unfrozen; no-op for ``""``),
    log it in one INFO line (and one for the values it replaced) and return ``cfg``.
    """
    if not str(cfg.RETHINK.SCHEDULE.SPEC).strip():
        return cfg
    s = compute_schedule(cfg)
    if cfg.SOLVER.LR_SCHEDULER_NAME != "WarmupMultiStepLR":
        raise ConfigError(
            f"RETHINK.SCHEDULE.SPEC={s.spec!r} sets a multi-step schedule, but "
            f"SOLVER.LR_SCHEDULER_NAME is {cfg.SOLVER.LR_SCHEDULER_NAME!r}: set it to "
            f"'WarmupMultiStepLR', or set RETHINK.SCHEDULE.SPEC '' and write SOLVER yourself"
        )
    replaced = []
    for key, value in schedule_owned_values(s).items():
        node, leaf = key.split(".")
        old = cfg[node][leaf]
        if old != value:
            replaced.append(f"{key} {old} -> {value}")
            cfg[node][leaf] = value
    logger.info(
        f"Resolved schedule {s.spec!r} ({s.mode}) at {s.batch} images/iteration: "
        f"{s.max_iter} iterations, LR steps {s.steps} x{s.gamma:g}, base LR {s.base_lr:g}, "
        f"warm-up {s.warmup_iters} iterations, {s.images_seen} images seen"
    )
    if replaced:
        logger.info("RETHINK.SCHEDULE.SPEC %r replaced %s", s.spec, "; ".join(replaced))
    return cfg


def schedule_owned_values(sched):
    """
    ``{"SOLVER.MAX_ITER": value, ...}``: the keys a spec owns, with the values of ``sched``.
    Periods appear only when their ``RETHINK.SCHEDULE`` key is > 0, the warm-up always.
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
