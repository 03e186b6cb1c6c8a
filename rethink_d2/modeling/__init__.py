"""Scratch backbones, whole-detector normalization, init and the scratch guard."""
