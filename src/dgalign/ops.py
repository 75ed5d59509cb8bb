"""Shared sampling maths, written once: logit filtering, seeded categorical draws, log-probs.

All functions upcast logits to float32 and take an optional `torch.Generator` so every draw
in the library goes through one seeded path.
"""

from __future__ import annotations

import torch


def filter_logits(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Temperature, then top-k, then nucleus (top-p) truncation; removed entries become -inf."""
    logits = logits.float() / temperature  # (B, V)
    if top_k > 0 and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        # drop a token when the mass strictly before it already reaches top_p (keeps >= 1 token)
        drop_sorted = probs.cumsum(-1) - probs >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def proposal_logprobs(
    logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """(log p_base, log q) over the vocabulary, (B, V) each; q is p itself when nothing is filtered."""
    base = logits.float().log_softmax(-1)
    if temperature == 1.0 and top_k <= 0 and top_p >= 1.0:
        return base, base
    return base, filter_logits(logits, temperature, top_k, top_p).log_softmax(-1)


def sample_logprobs(logprobs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One draw per row from log-probs (B, V) -> (B,) long: one seeded uniform per row, then `inverse_cdf`.

    One uniform per row and a binary search: ~30x cheaper than `torch.multinomial` over a 49k
    vocabulary on CPU.
    """
    return inverse_cdf(logprobs, rand((logprobs.shape[0],), logprobs, generator))


def rand(shape: tuple[int, ...], like: torch.Tensor, generator: torch.Generator | None = None,
         dtype: torch.dtype | None = None) -> torch.Tensor:
    """U[0, 1) draws of `shape` on `like`'s device, in `dtype` (default `like`'s), drawn on the generator's own
    device (a CPU generator seeds GPU work the same way as a GPU one would; the draws are moved, not re-seeded)."""
    device = generator.device if generator is not None else like.device
    return torch.rand(shape, generator=generator, device=device, dtype=dtype or like.dtype).to(like.device)


def randn(shape: tuple[int, ...], like: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """N(0, 1) draws of `shape` on `like`'s device and dtype, drawn on the generator's own device (as `rand`)."""
    device = generator.device if generator is not None else like.device
    return torch.randn(shape, generator=generator, device=device, dtype=like.dtype).to(like.device)


def inverse_cdf(logprobs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """The draw that uniforms u ∈ [0, 1) (B,) select from log-probs (B, V) -> (B,) long: the first v with
    CDF(v) > u·CDF(V) (callers that reuse u, as refine's frozen Jacobi uniforms, use this directly).
    Zero-probability entries have zero width and are never drawn."""
    cdf = logprobs.exp().cumsum(-1)  # (B, V)
    return torch.searchsorted(cdf, u[:, None] * cdf[:, -1:], right=True).clamp(max=cdf.shape[-1] - 1).squeeze(-1)


def gather(values: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """values[b, tokens[b]] per row: (B, V), (B,) -> (B,)."""
    return values.gather(-1, tokens[:, None]).squeeze(-1)


def make_generator(seed: int | None, device: torch.device | str = "cpu") -> torch.Generator:
    """A seeded generator (fresh entropy when `seed` is None)."""
    gen = torch.Generator(device=device)
    if seed is None:
        gen.seed()
    else:
        gen.manual_seed(seed)
    return gen
