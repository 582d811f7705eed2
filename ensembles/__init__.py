"""Ensembles of stopping-point checkpoints (the ensembles issue): weight averages, output
ensembles, and selection under training-token and inference-cost budgets."""
