"""The scratch guard: refuse configs that silently defeat training from random initialization.

The classic pitfall (detectron2#348, Detectron#665): blanking ``MODEL.WEIGHTS`` in a standard
config keeps ``FREEZE_AT 2`` and FrozenBN, i.e. layers frozen at random values. The paper's first
scratch runs lost ~3 AP that way.
"""

from ..utils.errors import ConfigError


def _frozen_bn_keys(cfg, prefix=""):
    """Every dotted key of ``cfg`` whose name ends in ``NORM`` and whose value is "FrozenBN"."""
    found = []
    for name, value in cfg.items():
        if isinstance(value, dict):
            found += _frozen_bn_keys(value, prefix=f"{prefix}{name}.")
        elif name.endswith("NORM") and value == "FrozenBN":
            found.append(f"{prefix}{name}")
    return found


def check_scratch_config(cfg):
    """
    With ``RETHINK.SCRATCH`` and ``RETHINK.SCRATCH_GUARD``, refuse a non-empty ``MODEL.WEIGHTS``,
    ``MODEL.BACKBONE.FREEZE_AT > 0`` and any ``*.NORM`` key set to "FrozenBN", in one
    ConfigError that lists every offending key and the ways out.
    """
    if not cfg.RETHINK.SCRATCH or not cfg.RETHINK.SCRATCH_GUARD:
        return
    problems = []
    if cfg.MODEL.WEIGHTS:
        problems.append(f"MODEL.WEIGHTS={cfg.MODEL.WEIGHTS!r} loads weights (set it to '')")
    freeze_at = cfg.MODEL.BACKBONE.FREEZE_AT
    if freeze_at > 0:
        problems.append(
            f"MODEL.BACKBONE.FREEZE_AT={freeze_at} freezes the first {freeze_at} backbone "
            "stage(s) at their random values (set it to 0)"
        )
    for key in _frozen_bn_keys(cfg):
        problems.append(
            f"{key}='FrozenBN' never updates its random statistics and affine parameters "
            "(set RETHINK.NORM to 'GN' or 'SyncBN' and call rethink_d2.resolve_config, "
            f"or set {key} yourself)"
        )
    if problems:
        raise ConfigError(
            "RETHINK.SCRATCH is True (train from random initialization), but "
            + "; ".join(problems)
            + ". Fix this, or set RETHINK.SCRATCH False for a pre-trained run, or "
            "RETHINK.SCRATCH_GUARD False to train like this anyway."
        )
