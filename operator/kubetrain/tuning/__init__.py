"""Hyperparameter sweeps: the search space, trial records, the Optuna study rebuilt from them, and status."""
