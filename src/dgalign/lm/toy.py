"""An enumerable toy LM: a tiny seeded random RNN over a few letters plus EOS.

With 3 letters and at most 3 new tokens there are 1 + 3 + 9 + 27 = 40 complete sequences, so
the exact target p(y)·exp(β r(y)) / Z is computed by enumeration and every sampler can be held
to it. It has real embedding and hidden-state tensors (an Elman RNN), so the diffusion sampler
runs on it unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..types import DecodeState


@dataclass
class ToyConfig:
    letters: str = "abc"  # the non-EOS tokens; the vocabulary is these plus "<eos>"
    max_new_tokens: int = 3  # default completion length: 1 + 3 + 9 + 27 = 40 sequences
    dim: int = 8  # embedding and hidden size
    sharpness: float = 0.5  # logit scale: larger makes the base distribution peakier
    eos_bias: float = -1.0  # added to the EOS logit, so longer sequences get their share of mass
    seed: int = 0  # seeds every weight


class ToyLM:
    """`LM` protocol over an Elman RNN h_t = tanh(W E[y_t] + U h_{t-1} + b), logits = s·(O h_t + c)."""

    def __init__(self, cfg: ToyConfig | None = None):
        self.cfg = cfg = cfg or ToyConfig()
        gen = torch.Generator(device="cpu").manual_seed(cfg.seed)
        cpu = {"generator": gen, "device": "cpu"}  # the toy's weights live on the CPU, whatever the default
        vocab, dim = len(cfg.letters) + 1, cfg.dim
        self.name = "toy"
        self.vocab_size = vocab
        self.eos_token_ids = [vocab - 1]
        self.pad_token_id = vocab - 1
        self.max_context = 64
        self.max_new_tokens = cfg.max_new_tokens
        self.forward_tokens = 0
        self.device = torch.device("cpu")
        self.embed = torch.randn(vocab, dim, **cpu)  # E (V, D)
        self.w_in = torch.randn(dim, dim, **cpu) / dim**0.5
        self.w_rec = torch.randn(dim, dim, **cpu) / dim**0.5
        self.bias = torch.randn(dim, **cpu) * 0.5
        self.h0 = torch.randn(dim, **cpu) * 0.5
        self.w_out = torch.randn(vocab, dim, **cpu)
        self.b_out = torch.randn(vocab, **cpu) * 0.5
        self.b_out[-1] += cfg.eos_bias / cfg.sharpness

    def encode(self, prompts: list[str], *, raw: bool = False) -> list[list[int]]:
        return [[self.cfg.letters.index(ch) for ch in p if ch in self.cfg.letters] for p in prompts]

    def encode_chat(self, messages: list[dict]) -> list[int]:
        """A conversation is its contents joined (the toy has no chat template)."""
        return self.encode(["".join(m["content"] for m in messages)])[0]

    def decode(self, ids: list[int]) -> str:
        return "".join(self.cfg.letters[i] for i in ids if i not in self.eos_token_ids)

    def embeddings(self) -> torch.Tensor:
        return self.embed

    def _cell(self, h: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.embed[tokens] @ self.w_in.T + h @ self.w_rec.T + self.bias)  # (B, D)

    def _state(self, h: torch.Tensor, lengths: torch.Tensor) -> DecodeState:
        logits = self.cfg.sharpness * (h @ self.w_out.T + self.b_out)  # (B, V)
        return DecodeState(logits, h, None, torch.ones_like(lengths)[:, None], lengths)

    def start(self, prompt_ids: list[list[int]]) -> DecodeState:
        h = self.h0.expand(len(prompt_ids), -1)
        width = max((len(p) for p in prompt_ids), default=0)
        for t in range(width):  # prompts of one batch may differ in length: rows update only while t < len
            active = torch.tensor([t < len(p) for p in prompt_ids], device=self.device)
            tok = torch.tensor([p[t] if t < len(p) else 0 for p in prompt_ids], device=self.device)
            h = torch.where(active[:, None], self._cell(h, tok), h)
        self.forward_tokens += sum(len(p) for p in prompt_ids)
        return self._state(h, torch.tensor([len(p) for p in prompt_ids], device=self.device))

    def step(self, state: DecodeState, tokens: torch.Tensor) -> DecodeState:
        h = state.hidden
        for j in range(tokens.shape[1]):
            h = self._cell(h, tokens[:, j])
        self.forward_tokens += tokens.numel()
        return self._state(h, state.lengths + tokens.shape[1])

    def peek(self, state: DecodeState, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h, hs = state.hidden, []
        for j in range(tokens.shape[1]):
            h = self._cell(h, tokens[:, j])
            hs.append(h)
        self.forward_tokens += tokens.numel()
        hidden = torch.stack(hs, 1)  # (B, k, D)
        return self.cfg.sharpness * (hidden @ self.w_out.T + self.b_out), hidden

    def select(self, state: DecodeState, index: torch.Tensor) -> DecodeState:
        return self._state(state.hidden[index], state.lengths[index])

    def logits_from_embeddings(self, prompt_ids: list[list[int]], embeds: torch.Tensor) -> torch.Tensor:
        """Next-token logits at T completion positions fed as embeddings (B, T, D) -> (B, T, V); differentiable."""
        h = self.start(prompt_ids).hidden  # (B, D)
        logits = []
        for t in range(embeds.shape[1]):
            logits.append(self.cfg.sharpness * (h @ self.w_out.T + self.b_out))  # predicts position t
            h = torch.tanh(embeds[:, t] @ self.w_in.T + h @ self.w_rec.T + self.bias)
        self.forward_tokens += embeds.shape[0] * embeds.shape[1]
        return torch.stack(logits, dim=1)

    def sequence_logprobs(self, prompt_ids: list[list[int]], completion_ids: list[list[int]]) -> torch.Tensor:
        out = torch.zeros(len(prompt_ids), device=self.device)
        for i, (p, c) in enumerate(zip(prompt_ids, completion_ids, strict=True)):
            state = self.start([p])
            for tok in c:
                out[i] += state.logits[0].log_softmax(-1)[tok]
                state = self.step(state, torch.tensor([[tok]], device=self.device))
        return out
