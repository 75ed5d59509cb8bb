"""Benchmark suites: the `SUITES` table of prompt sets, each with its proxy and gold rewards."""

from .suites import SUITES, Suite, check_prompt, get_suite, load_prompts

__all__ = ["SUITES", "Suite", "check_prompt", "get_suite", "load_prompts"]
