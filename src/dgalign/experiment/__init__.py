"""Experiments: one YAML each (`experiments/NAME.yaml`), run end to end by `dgalign experiment NAME` (resumable)."""

from .config import Experiment, RunSpec, experiment_names, load_experiment

__all__ = ["Experiment", "RunSpec", "experiment_names", "load_experiment"]
