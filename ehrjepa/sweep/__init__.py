"""`ehrjepa sweep`: hyperparameter search over run configs with Optuna (space, objective, study, CLI).

Imports stay in the submodules (optuna, torch on first use), so `ehrjepa --help` stays fast.
"""
