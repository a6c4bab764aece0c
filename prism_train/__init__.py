"""prism_train: produce checkpoint trajectories to study (tiny models of PRISM's four families)."""
