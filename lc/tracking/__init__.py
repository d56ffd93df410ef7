"""Tracked runs: training in MLflow, Optuna studies, refits and the model registry."""
