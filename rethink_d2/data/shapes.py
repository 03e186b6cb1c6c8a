"""PLACEHOLDER (shapes helper replaces this)."""
