"""The protocols every layer speaks: `LM`, `Reward`, and the `Samples` a sampler returns.

Tensors inside, text at the edges: an LM speaks token ids, logits, hidden states and
embeddings; only `encode` / `decode` touch text. A reward is any batched callable
`(prompts, completions) -> Tensor[B]`, higher is better.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch

from .config import check_counts, check_range
from .errors import DGAlignError


@runtime_checkable
class Reward(Protocol):
    """A batched reward: `reward(prompts, completions) -> Tensor (B,)` float32, higher is better."""

    def __call__(self, prompts: list[str], completions: list[str]) -> torch.Tensor: ...


@dataclass
class DecodeState:
    """One step of incremental decoding for a batch of B rows.

    `logits` and `hidden` are for the *next* token after everything fed so far; `cache` is the
    backend's KV cache (opaque to samplers); `mask` is the (B, L) attention mask over prompt and
    generated tokens (0 on left padding); `lengths` counts the non-pad tokens of each row.
    """

    logits: torch.Tensor  # (B, V) float32, next-token logits
    hidden: torch.Tensor  # (B, D) last-layer hidden state at the last position
    cache: Any  # backend KV cache
    mask: torch.Tensor  # (B, L) long, 1 on real tokens
    lengths: torch.Tensor  # (B,) long, real tokens per row

    @property
    def batch_size(self) -> int:
        return self.logits.shape[0]


@runtime_checkable
class LM(Protocol):
    """A causal LM seen through the narrow tensor interface every sampler needs."""

    name: str
    vocab_size: int
    eos_token_ids: list[int]  # any of these ends a completion
    pad_token_id: int
    max_context: int  # prompt + completion tokens the model accepts
    forward_tokens: int  # running count of token positions pushed through the model
    device: torch.device  # where its tensors live

    def encode(self, prompts: list[str], *, raw: bool = False) -> list[list[int]]:
        """Token ids of each prompt; the chat template is applied unless `raw` or a base model."""

    def encode_chat(self, messages: list[dict]) -> list[int]:
        """Token ids of a whole conversation through the chat template (contents joined without one)."""

    def decode(self, ids: list[int]) -> str:
        """Text of completion token ids (special tokens dropped)."""

    def embeddings(self) -> torch.Tensor:
        """The input-embedding matrix E, (V, D)."""

    def start(self, prompt_ids: list[list[int]]) -> DecodeState:
        """Prefill left-padded prompts; returns the state for the first new token."""

    def step(self, state: DecodeState, tokens: torch.Tensor) -> DecodeState:
        """Append `tokens` (B, k) to every row, k >= 1; returns the state after the last one."""

    def peek(self, state: DecodeState, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Run `tokens` (B, k) after the state without committing them: logits (B, k, V) float32 and
        last hidden states (B, k, D), where [:, j] is at tokens[:, j] (predicting the token after it).
        The state is left as it was (still usable); the tokens count in `forward_tokens`."""

    def select(self, state: DecodeState, index: torch.Tensor) -> DecodeState:
        """Rows `index` (B',) of the state: repeats, reorders or drops rows (BoN, resampling)."""

    def logits_from_embeddings(self, prompt_ids: list[list[int]], embeds: torch.Tensor) -> torch.Tensor:
        """Differentiable next-token logits (B, T, V) for soft answer embeddings (B, T, D) after each prompt."""

    def sequence_logprobs(self, prompt_ids: list[list[int]], completion_ids: list[list[int]]) -> torch.Tensor:
        """log p(completion | prompt) under the model, (B,) float32, one forward pass per batch."""


@dataclass
class Prompts:
    """A batch of prompts: the text (for rewards) and the token ids (for the LM)."""

    texts: list[str]
    ids: list[list[int]]

    @classmethod
    def encode(cls, lm: LM, texts: list[str], *, raw: bool = False) -> Prompts:
        return cls(list(texts), lm.encode(list(texts), raw=raw))

    def __len__(self) -> int:
        return len(self.texts)


@dataclass
class SamplerConfig:
    """Knobs every sampler shares; each method's config extends this with its own."""

    max_new_tokens: int = 64  # completion length limit (EOS may end it sooner)
    num_samples: int = 1  # completions returned per prompt
    beta: float = 1.0  # target strength: p(y|c)·exp(β·r(c,y))
    temperature: float = 1.0  # base proposal temperature (1 = the model's own distribution)
    top_p: float = 1.0  # nucleus truncation of the proposal (1 = off)
    top_k: int = 0  # top-k truncation of the proposal (0 = off)

    def __post_init__(self) -> None:
        """Concise errors for the shared knobs; each method's config checks its own fields after these."""
        check_counts(self, "max_new_tokens", "num_samples")
        if not math.isfinite(self.beta):
            raise DGAlignError(f"beta must be a finite number, got {self.beta}")
        check_range("temperature", self.temperature, 0, open_low=True)
        check_range("top_p", self.top_p, 0, 1, open_low=True)
        check_range("top_k", self.top_k, 0)


@dataclass
class Cost:
    """Compute spent by one sampler call."""

    lm_forward_tokens: int = 0  # token positions pushed through the LM (prefill + decode)
    reward_calls: int = 0  # completions scored by the reward (one call per text)
    wall_s: float = 0.0  # wall-clock seconds
    peak_rss_mb: float = 0.0  # peak resident memory of the process, MiB
    generated_tokens: int = 0  # tokens in the returned completions
    peak_memory_mb: float = 0.0  # peak memory where the LM runs: the accelerator's allocator peak, else RSS
    memory: str = "rss"  # what peak_memory_mb measured: "rss" or "cuda max_memory_allocated"

    @property
    def tokens_per_s(self) -> float:
        return self.generated_tokens / self.wall_s if self.wall_s > 0 else 0.0

    def as_dict(self) -> dict[str, float]:
        return {
            "wall_s": round(self.wall_s, 4),
            "lm_forward_tokens": self.lm_forward_tokens,
            "reward_calls": self.reward_calls,
            "tokens_per_s": round(self.tokens_per_s, 2),
            "peak_rss_mb": round(self.peak_rss_mb, 1),
            "peak_memory_mb": round(self.peak_memory_mb, 1),
            "memory": self.memory,
        }


@dataclass
class Samples:
    """What every sampler returns: one row per returned completion.

    `prompt_index[i]` says which input prompt row i answers. `base_logprobs` is
    log p_θ(y | c) of the completion under the (untruncated) base model. Samplers that weight
    their draws fill `log_weights`, `ess` and `log_z`; those that know how far their answers drift from
    the base fill `kl_to_base` (an estimate; with `kl_rows`, each row's term of it, so a batch of prompts
still gives each answer its own estimate) or `kl_bound` (an upper bound).
    """

    prompt_index: list[int]
    texts: list[str]
    token_ids: list[list[int]]
    rewards: torch.Tensor  # (N,) float32
    base_logprobs: torch.Tensor  # (N,) float32
    cost: Cost = field(default_factory=Cost)
    log_weights: torch.Tensor | None = None  # (N,) normalised importance log-weights
    ess: float | None = None  # effective sample size of the final weights
    log_z: torch.Tensor | None = None  # (P,) estimate of log Z per prompt
    # KL(q ‖ p_θ) of the sampler's answer law, nats, where the sampler can estimate it (0 for the base itself)
    kl_to_base: float | None = None
    kl_rows: torch.Tensor | None = None  # (N,) each row's term of that estimate (its mean is kl_to_base): per answer
    kl_bound: float | None = None  # an upper bound on that KL where one is known (best-of-n's), else None
    extras: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def num_tokens(self) -> list[int]:
        return [len(t) for t in self.token_ids]


class Sampler(Protocol):
    """What every `sample_<name>` is (samplers/__init__.py's table names them)."""

    def __call__(
        self,
        lm: LM,
        reward: Reward | None,
        prompts: Prompts,
        cfg: SamplerConfig,
        *,
        generator: torch.Generator | None = None,
        callback: Callable[[dict], None] | None = None,
    ) -> Samples: ...
