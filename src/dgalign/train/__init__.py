"""Trainers, one file each (`dga.py`, `reward_model.py`, `dpo.py`); imported by module, never eagerly."""
