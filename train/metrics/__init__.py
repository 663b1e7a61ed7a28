"""Evaluation metrics: the judge classifier, FID, precision/recall and out-of-distribution scores."""
