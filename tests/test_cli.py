"""The CLI: listings, JSON shape, and every bad-input case gives one line and exit code 2."""

import json
import sys

import pytest

from dgalign.cli import main


def run(monkeypatch, capsys, *args):
    monkeypatch.setattr(sys, "argv", ["dgalign", *args])
    try:
        main()
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_listings_json(monkeypatch, capsys):
    code, out, _ = run(monkeypatch, capsys, "methods", "--json")
    assert code == 0
    methods = {m["name"]: m for m in json.loads(out)}
    assert {"base", "bon"} <= set(methods)
    assert methods["bon"]["config"]["n"] == 4
    code, out, _ = run(monkeypatch, capsys, "rewards", "--json")
    assert {"toxicity", "toxicity-gold", "sentiment", "sentiment-gold", "readability", "length", "format"} <= {
        r["name"] for r in json.loads(out)
    }
    code, out, _ = run(monkeypatch, capsys, "models", "--json")
    assert "smollm2-135m-instruct" in {m["name"] for m in json.loads(out)}


def test_generate_json_on_toy(monkeypatch, capsys):
    code, out, _ = run(
        monkeypatch, capsys, "generate", "ab", "ca", "--model", "toy", "--method", "bon", "--set", "n=3",
        "--reward", "dgalign.eval.exact:toy_reward", "--max-new-tokens", "3", "--num-samples", "2", "--json",
    )
    assert code == 0
    obj = json.loads(out)
    assert obj["model"] == "toy" and obj["method"] == "bon"
    assert [r["prompt"] for r in obj["results"]] == ["ab", "ab", "ca", "ca"]
    assert set(obj["results"][0]) == {"prompt", "completion", "reward", "num_tokens"}
    assert set(obj["cost"]) == {"wall_s", "lm_forward_tokens", "reward_calls", "tokens_per_s", "peak_rss_mb",
                                "peak_memory_mb", "memory", "setup"}
    assert set(obj["cost"]["setup"]) == {"load_s", "reward_load_s", "warmup_s"}
    assert obj["cost"]["reward_calls"] == 12  # 2 prompts x 2 samples x n=3 (the setup's reward call is not counted)


SLOW_REWARD = """
import time

import torch


class SlowToLoad:
    '''A reward whose first call takes {delay} s, as a lazily loaded reward model does.'''

    def __init__(self):
        self.loaded = False

    def __call__(self, prompts, completions):
        if not self.loaded:
            time.sleep({delay})
            self.loaded = True
        return torch.zeros(len(completions))
"""


def test_generate_times_setup_apart_from_generation(monkeypatch, capsys, tmp_path):
    """The reward's first load, the LM load and the warm-up are reported as setup; wall_s is generation only."""
    (tmp_path / "slow_reward.py").write_text(SLOW_REWARD.format(delay=0.5))
    monkeypatch.syspath_prepend(str(tmp_path))
    args = ["generate", "ab", "--model", "toy", "--reward", "slow_reward:SlowToLoad", "--max-new-tokens", "3"]
    code, out, _ = run(monkeypatch, capsys, *args, "--json")
    assert code == 0
    cost = json.loads(out)["cost"]
    assert cost["setup"]["reward_load_s"] >= 0.5
    assert cost["wall_s"] < 0.25 and cost["tokens_per_s"] > 0  # the 0.5 s load is not generation time
    assert cost["setup"]["load_s"] >= 0 and cost["setup"]["warmup_s"] >= 0
    code, out, _ = run(monkeypatch, capsys, *args)
    assert code == 0 and "setup: load " in out and "· reward load 0.5 s · warm-up " in out


def test_prepare_times_each_part(toy):
    import time

    from dgalign.cost import format_setup, prepare, timed
    from dgalign.types import Prompts

    calls = []
    lm, load_s = timed(lambda: time.sleep(0.05) or toy)
    assert lm is toy and load_s >= 0.05
    tokens = toy.forward_tokens
    setup = prepare(lm, lambda p, c: calls.append((p, c)) or [0.0] * len(c), prompts=Prompts.encode(toy, ["ab"]),
                    load_s=load_s)
    assert set(setup) == {"load_s", "reward_load_s", "warmup_s"} and setup["load_s"] == round(load_s, 4)
    assert calls == [(["ab"], ["warm-up"])]  # each reward once, on the first prompt
    assert toy.forward_tokens == tokens + 3  # the warm-up: a 2-token prefill and one decode step
    line = format_setup({"load_s": 2.34, "reward_load_s": 1.06, "warmup_s": 0.41})
    assert line == "setup: load 2.3 s · reward load 1.1 s · warm-up 0.4 s"


def test_generate_human_output(monkeypatch, capsys):
    code, out, _ = run(monkeypatch, capsys, "generate", "ab", "--model", "toy", "--reward",
                       "dgalign.eval.exact:toy_reward", "--max-new-tokens", "3")
    assert code == 0
    assert "> ab" in out and "reward" in out and "tokens/s" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--method", "nope"], "unknown method 'nope'; valid: args, base, bon"),
        (["--reward", "nope"], "unknown reward 'nope'; valid:"),
        (["--model", "nope"], "unknown model 'nope'; valid:"),
        (["--reward", "toxicity:,"], "bad reward"),
        (["--reward", "toxicity:abc"], "reward"),
        (["--max-new-tokens", "0"], "--max-new-tokens must be at least 1"),
        (["--num-samples", "0"], "--num-samples must be at least 1"),
        (["--set", "bogus=1"], "unknown setting 'bogus'"),
        (["--set", "n=many", "--method", "bon"], "--set n=many: expected int"),
        (["--set", "n=0", "--method", "bon"], "n must be at least 1"),
        (["--set", "top_p=1.5"], "top_p must be in (0, 1]"),
        (["--model", "toy", "--max-new-tokens", "100"], "exceeds toy's context of 64 tokens"),
    ],
)
def test_generate_errors(monkeypatch, capsys, args, message):
    code, out, err = run(monkeypatch, capsys, "generate", "ab", *args)
    assert code == 2
    assert message in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_empty_prompt(monkeypatch, capsys):
    code, _, err = run(monkeypatch, capsys, "generate", "  ", "--model", "toy")
    assert code == 2 and "empty prompt" in err


def test_missing_model_package_names_pip(monkeypatch, capsys, tmp_path):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if "gemma3" in name else real(name, *a))
    monkeypatch.setenv("DGALIGN_CACHE", str(tmp_path))
    code, _, err = run(monkeypatch, capsys, "generate", "hi", "--model", "gemma3-270m")
    assert code == 2
    assert "pip install 'dgalign[gemma]'" in err


def test_exact_command_json(monkeypatch, capsys):
    code, out, _ = run(monkeypatch, capsys, "exact", "--method", "base", "--beta", "0", "--samples", "5000", "--json")
    assert code == 0
    res = json.loads(out)
    assert {"tv", "tv_floor", "kl", "reward", "exact_reward", "log_z", "exact_log_z", "samples"} <= set(res)
    assert res["tv"] <= res["tv_floor"] + 0.03  # with beta = 0 the target is the base law itself
    assert res["exact_log_z"] == 0.0 and res["log_z"] is None
    code, out, _ = run(monkeypatch, capsys, "exact", "--method", "base", "--beta", "4", "--json")
    assert json.loads(out)["tv"] > 0.3  # and plain sampling is far from a strongly tilted target
