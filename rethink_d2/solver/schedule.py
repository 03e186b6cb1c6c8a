def resolve_schedule(cfg):
    """PLACEHOLDER (issue 4 helper replaces this)."""
    return cfg
