"""prism_analysis.weights."""
