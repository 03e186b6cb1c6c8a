def apply_norm_config(cfg, world_size=None):
    """PLACEHOLDER (issue 3 helper replaces this)."""
    return cfg
