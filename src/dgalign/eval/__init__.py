"""Evaluation: exact ground truth on the toy LM, metrics, and the comparison harness."""
