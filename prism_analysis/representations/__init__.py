"""prism_analysis.representations."""
