"""`dgalign demo`: its statistics and verdict, and one small run on the embedded model."""

import sys

import pytest

from dgalign.cli import main
from dgalign.demo import MethodResult, render, summary_line


def _result(label, rewards_by_prompt, tokens=100):
    index = [p for p, rs in enumerate(rewards_by_prompt) for _ in rs]
    rewards = [r for rs in rewards_by_prompt for r in rs]
    return MethodResult(label, index, [f"answer {i}" for i in range(len(rewards))], rewards, 10.0, tokens, 1.0)


def test_stratified_error_ignores_differences_between_prompts():
    # two prompts with different levels but no spread within: the mean is known exactly
    res = _result("x", [[-0.5, -0.5], [0.0, 0.0]])
    assert res.mean == pytest.approx(-0.25) and res.sem == 0.0
    spread = _result("y", [[-1.0, 0.0], [-1.0, 0.0]])
    assert spread.sem == pytest.approx((2 * 0.5 / 2) ** 0.5 / 2)


def test_verdict_follows_the_interval_of_the_difference():
    plain = _result("plain", [[-0.9, -0.1, -0.5, -0.5]])
    bon = _result("best-of-4", [[0.0] * 4], tokens=400)
    assert summary_line([plain, bon, _result("DGA", [[-0.05, -0.0, -0.02, -0.03]])]).startswith("DGA raised")
    assert "did not resolvably change" in summary_line([plain, bon, _result("DGA", [[-0.8, -0.2, -0.6, -0.4]])])
    lines = render([plain, bon, _result("DGA", [[-0.5] * 4])], ["p"], {"load_s": 1.0}, show=1)
    assert lines[0] == "> p …" and sum(line.startswith("  ") for line in lines) == 3  # one answer per method
    assert "4.00x" in "\n".join(lines)  # best-of-4's LM tokens relative to plain


@pytest.mark.integration
def test_demo_runs_on_the_embedded_model(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["dgalign", "demo", "--samples", "2", "--max-new-tokens", "4",
                                      "--prompt", "You are such a"])
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert all(m in out for m in ("plain", "best-of-4", "DGA")) and "setup (not in tokens/s): load" in out
    assert out.strip().splitlines()[-1].startswith("DGA ")
