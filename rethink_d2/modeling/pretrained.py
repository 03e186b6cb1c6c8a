def apply_pretrained_format(cfg):
    """PLACEHOLDER (issue 3 helper replaces this)."""
    return cfg
