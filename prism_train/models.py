"""Tiny configurations of the paper's four model families: :mod:`prism_analysis.tiny`, which the
analysis tests use without this package; re-exported here for the training code."""

from prism_analysis.tiny import DEFAULT_FAMILY, FAMILIES, build_model, tiny_config

__all__ = ["DEFAULT_FAMILY", "FAMILIES", "build_model", "tiny_config"]
