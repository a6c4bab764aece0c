"""prism_analysis.checkpoints."""
