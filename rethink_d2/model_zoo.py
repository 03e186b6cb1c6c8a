"""Paths of the configs shipped with rethink-d2, mirroring ``detectron2.model_zoo``."""

import os

from .utils.errors import ConfigError

_PACKAGE_CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")


def get_config_dir():
    """
    Returns:
        str: the directory of the shipped configs (the repository's ``configs/``, linked as
        ``rethink_d2/configs`` in an editable install, copied in a wheel).
    """
    return _PACKAGE_CONFIGS


def list_configs():
    """
    Returns:
        list[str]: every shipped config, relative to :func:`get_config_dir` (``Base-*`` included).
    """
    root = get_config_dir()
    return sorted(
        os.path.relpath(os.path.join(dirpath, name), root)
        for dirpath, _, filenames in os.walk(root, followlinks=True)
        for name in filenames
        if name.endswith(".yaml")
    )


def get_config_file(config_path):
    """
    Absolute path of a shipped config given relative to ``configs/``, e.g.
    ``"quickstart/scratch_R18_GN_shapes.yaml"`` (ConfigError if there is none).
    """
    path = os.path.join(get_config_dir(), config_path)
    if not os.path.isfile(path):
        raise ConfigError(
            f"rethink-d2 ships no config named {config_path!r}; "
            f"see rethink_d2.model_zoo.list_configs() for the available ones"
        )
    return path
