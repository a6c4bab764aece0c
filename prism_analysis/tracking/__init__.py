"""prism_analysis.tracking."""
