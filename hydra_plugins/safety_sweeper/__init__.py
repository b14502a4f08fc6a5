"""Hydra sweeper for hydra-core 1.3 + Optuna 5 (`hydra/sweeper=safety`); the loop lives in sweeps.study."""
