"""The torch port of the Jigsaw BiLSTM (`toxicity-gold`) against outputs of the original Keras model.

KERAS_PROBS were computed on the texts of tests/data/jigsaw_texts.json with keras 3.15.1, backend
torch, from the package's `model.weights.h5` and its pickled Keras `Tokenizer`, by
tests/data/make_jigsaw_reference.py (run by hand in a throwaway Keras venv; its docstring gives the
exact commands):

    KERAS_BACKEND=torch /tmp/kvenv/bin/python tests/data/make_jigsaw_reference.py
"""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from dgalign.errors import DGAlignError
from dgalign.rewards.jigsaw import LABELS, JigsawToxicity, _load

needs_package = pytest.mark.skipif(
    importlib.util.find_spec("toxic_classifier") is None, reason="toxic-comment-classifier not installed"
)

# The texts, shared with tests/data/make_jigsaw_reference.py; the last has 145 words (> MAXLEN = 100).
TEXTS = json.loads((Path(__file__).parent / "data" / "jigsaw_texts.json").read_text())
CLEAN, TOXIC = [0, 1, 6], [2, 3, 4]

# keras 3.15.1, backend torch, model.weights.h5: sigmoid outputs per text.
KERAS_PROBS = [  # toxic, severe_toxic, obscene, threat, insult, identity_hate
    [0.00229630, 0.00000416, 0.00043391, 0.00000832, 0.00044054, 0.00003793],
    [0.00070174, 0.00000114, 0.00019811, 0.00000123, 0.00010112, 0.00001395],
    [0.99711019, 0.20100278, 0.89414555, 0.01888746, 0.93749315, 0.06035710],
    [0.99729556, 0.42711744, 0.95926464, 0.10018453, 0.89566571, 0.14844027],
    [0.83038753, 0.12745854, 0.54058772, 0.04531186, 0.60946441, 0.02983425],
    [0.06753408, 0.00237295, 0.02938190, 0.00100565, 0.01535531, 0.00400619],
    [0.00626686, 0.00001857, 0.00123676, 0.00003032, 0.00124301, 0.00010315],
    [0.83934814, 0.01271300, 0.43592864, 0.00297975, 0.58107334, 0.01990533],
]
KERAS_N_IDS = [14, 14, 9, 10, 13, 0, 15, 145]  # len(tokenizer.texts_to_sequences(TEXTS)[i])
KERAS_IDS_6 = [59, 360, 29, 126, 125, 78, 134, 14, 199, 296, 1, 109, 326, 320, 237]


@needs_package
def test_tokenizer_matches_keras():
    tokenizer, _ = _load()
    seqs = tokenizer.texts_to_sequences(TEXTS)
    assert [len(s) for s in seqs] == KERAS_N_IDS
    assert seqs[6] == KERAS_IDS_6
    ids = tokenizer(TEXTS)  # (B, 100)
    assert ids.shape == (len(TEXTS), 100)
    assert (ids[5] == 0).all()  # empty text: all padding
    assert ids[0, :-14].eq(0).all() and ids[0, -14:].tolist() == seqs[0]  # padded on the left
    assert ids[7].tolist() == seqs[7][-100:]  # truncated on the left


@needs_package
def test_probabilities_match_keras():
    probs = JigsawToxicity().probabilities(TEXTS)  # (B, 6)
    assert probs.dtype == torch.float32 and probs.shape == (len(TEXTS), len(LABELS))
    torch.testing.assert_close(probs, torch.tensor(KERAS_PROBS), atol=1e-4, rtol=0)


@needs_package
def test_reward_is_minus_p_toxic_and_ranks_toxic_lower():
    reward = JigsawToxicity()(["a prompt"] * len(TEXTS), TEXTS)  # (B,)
    assert reward.dtype == torch.float32 and reward.shape == (len(TEXTS),)
    torch.testing.assert_close(reward, -torch.tensor(KERAS_PROBS)[:, 0], atol=1e-4, rtol=0)
    assert (reward <= 0).all() and (reward >= -1).all()
    assert reward[TOXIC].max() < reward[CLEAN].min()


def test_missing_package_names_the_install_command(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DGAlignError, match="pip install --no-deps toxic-comment-classifier"):
        JigsawToxicity()
