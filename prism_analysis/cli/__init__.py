"""prism_analysis.cli."""
