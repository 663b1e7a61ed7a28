"""Offline jobs: training (python -m train) and evaluation (python -m train.evaluate)."""
