def register_subset_datasets(cfg):
    """PLACEHOLDER (issue 5 helper replaces this)."""
