"""Benchmark suites: the `SUITES` table of prompt sets, each with its proxy and gold rewards."""

from .suites import HF_PREFIX, SUITES, Suite, check_prompt, get_suite, hf_label, load_prompts, parse_hf

__all__ = ["HF_PREFIX", "SUITES", "Suite", "check_prompt", "get_suite", "hf_label", "load_prompts", "parse_hf"]
