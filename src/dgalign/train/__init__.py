"""Training: the DPO baseline (`dpo.py`); imported by module, never eagerly (heavy optional deps)."""
