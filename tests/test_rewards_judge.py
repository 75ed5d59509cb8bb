"""The LM judge prefers a correct answer to a wrong one (integration: loads the judge model, 2 items)."""

import pytest
import torch

from dgalign.rewards import get_reward
from dgalign.rewards.judge import DEFAULT_JUDGE, JUDGE_TEMPLATE, Judge


def test_judge_template_names_both_fields():
    assert "{prompt}" in JUDGE_TEMPLATE and "{completion}" in JUDGE_TEMPLATE and "Yes or No" in JUDGE_TEMPLATE
    assert Judge().model == DEFAULT_JUDGE and Judge(model="qwen2.5-0.5b-instruct").model == "qwen2.5-0.5b-instruct"


@pytest.mark.integration
def test_judge_ranks_the_correct_answer_higher():
    reward = get_reward("judge")
    q = "What is the capital of France?"
    r = reward([q, q], ["The capital of France is Paris.", "The capital of France is Berlin."])
    assert r.shape == (2,) and r.dtype == torch.float32 and torch.isfinite(r).all()
    assert r[0] > r[1]
