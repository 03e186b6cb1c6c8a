def check_scratch_config(cfg):
    """PLACEHOLDER (issue 3 helper replaces this)."""
