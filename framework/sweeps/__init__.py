"""Sweeps: hyperparameter search on Optuna (`recoup sweep`), its spaces, workers and reports."""
